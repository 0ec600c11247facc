"""Streaming multipart uploads: the size cap applies while bytes arrive, not after they are spooled.

Starlette's form parser spools a whole file before the endpoint runs and has no per-file cap, so the
upload endpoints declare no form parameters (FastAPI then never touches the body) and parse
``request.stream()`` here with python-multipart's streaming parser. The file part goes straight to a
staging file in the artifact directory, hashed as it is written; small text fields are kept in memory
(capped). Any failure removes the staging file.

Authentication for uploads uses a session that is closed before the body is read: a session held
open across a long upload would, on SQLite, hold the write lock (``BEGIN IMMEDIATE``) for its whole
duration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from api.deps import Principal, get_principal
from api.errors import (
    Conflict,
    InsufficientStorage,
    PayloadTooLarge,
    Unprocessable,
    UnsupportedMediaType,
)
from api.repository import ArtifactRepository
from backend.settings import Settings
from backend.storage import ArtifactStore, StagedFile, UploadTooLarge

T = TypeVar("T")

MAX_TEXT_FIELD_BYTES = 64 * 1024
MAX_PARTS = 16
FORM_OVERHEAD_BYTES = 1024 * 1024  # allowance for text fields and multipart framing over the file cap


def get_upload_principal(request: Request) -> Principal:
    """Authenticate in a short transaction that is over before the upload body is read."""
    session = request.app.state.session_factory()
    try:
        principal = get_principal(request, session)
        session.commit()
        return principal
    finally:
        session.close()


UploadPrincipal = Annotated[Principal, Depends(get_upload_principal)]


@dataclass
class UploadForm:
    fields: dict[str, str] = field(default_factory=dict)
    file: StagedFile | None = None
    filename: str | None = None

    def discard(self) -> None:
        if self.file is not None:
            self.file.discard()


def multipart_openapi(fields: dict[str, dict[str, Any]], required: list[str]) -> dict[str, Any]:
    """``openapi_extra`` documenting the multipart form an endpoint parses by hand."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": fields, "required": required},
                }
            },
        }
    }


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"upload too large: the limit is {limit} bytes (LAMBDAHAT_MAX_UPLOAD_BYTES)",
    )



async def receive_and_create(request: Request, settings: Settings, text_fields: set[str],
                             create: Callable[[ArtifactStore, UploadForm], T]) -> T:
    """Receive an upload, then run ``create(store, form)`` (the service: validate, store, insert a
    row) in the threadpool. The staged file is discarded whatever happens (a no-op once placed)."""
    store = ArtifactStore(settings)
    form = await receive_upload(request, store, max_bytes=settings.max_upload_bytes, text_fields=text_fields)
    try:
        return await run_in_threadpool(create, store, form)
    finally:
        form.discard()


async def receive_upload(
    request: Request,
    store: ArtifactStore,
    *,
    max_bytes: int,
    text_fields: set[str],
    file_field: str = "file",
) -> UploadForm:
    """Read a multipart body: the ``file_field`` part to a staging file, the ``text_fields`` as strings.

    Raises ServiceError: 415 not multipart, 413 over ``max_bytes``, 422 malformed body, a missing
    file, or an unexpected/duplicate/oversized field. On any error nothing is left on disk.
    """
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise UnsupportedMediaType(f"send multipart/form-data with the upload in a '{file_field}' field "
            f"(e.g. curl -F {file_field}=@model.safetensors)",
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + FORM_OVERHEAD_BYTES:
        raise _too_large(max_bytes)  # refuse before reading a byte

    form = UploadForm()
    parser = _FormReceiver(form, store, max_bytes, text_fields, file_field)
    try:
        try:
            multipart = MultipartParser(boundary, parser.callbacks())
            async for chunk in request.stream():
                multipart.write(chunk)
                parser.raise_pending()
            multipart.finalize()
        except MultipartParseError as exc:
            raise Unprocessable(f"malformed multipart body: {exc}") from None
        except UploadTooLarge:
            raise _too_large(max_bytes) from None
        if not parser.ended:
            raise Unprocessable("the multipart body ended before its closing boundary (interrupted upload?)")
        if form.file is None:
            raise Unprocessable(f"form field '{file_field}' (the file to upload) is missing")
        form.file.finish()
        return form
    except BaseException:  # includes ClientDisconnect and cancellation
        form.discard()
        raise


class _FormReceiver:
    """python-multipart callbacks: route each part to the staging file or to a text field."""

    def __init__(self, form: UploadForm, store: ArtifactStore, max_bytes: int, text_fields: set[str], file_field: str):
        self.form = form
        self.store = store
        self.max_bytes = max_bytes
        self.text_fields = text_fields
        self.file_field = file_field
        self.ended = False
        self.parts = 0
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._target: str | None = None  # the field the current part belongs to
        self._text = bytearray()
        # Callbacks cannot await or usefully raise through the parser; errors are held and raised
        # after each write().
        self._error: Exception | None = None

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def raise_pending(self) -> None:
        if self._error is not None:
            raise self._error

    def _fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            self._fail(Unprocessable(f"too many form fields (more than {MAX_PARTS})"))
        self._headers = {}
        self._target = None
        self._text = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = b""
        self._header_value = b""

    def on_headers_finished(self) -> None:
        if self._error is not None:
            return
        _, options = parse_options_header(self._headers.get(b"content-disposition", b"").decode("latin-1"))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        accepted = sorted({self.file_field, *self.text_fields})
        if name == self.file_field:
            if self.form.file is not None:
                self._fail(Unprocessable(f"form field '{name}' was sent twice; upload one file per request"))
                return
            filename = options.get(b"filename")
            self.form.filename = filename.decode("utf-8", "replace").replace("\x00", "") if filename else None
            self.form.file = self.store.stage(self.max_bytes)
        elif name in self.text_fields:
            if name in self.form.fields:
                self._fail(Unprocessable(f"form field '{name}' was sent twice"))
                return
        else:
            self._fail(Unprocessable(f"unexpected form field '{name}'; this endpoint accepts: {', '.join(accepted)}"))
            return
        self._target = name

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._error is not None or self._target is None:
            return
        if self._target == self.file_field:
            assert self.form.file is not None
            try:
                self.form.file.write(data[start:end])
            except UploadTooLarge as exc:
                self._fail(exc)
            except OSError as exc:
                self._fail(InsufficientStorage(f"could not store the upload: {exc}"))
            return
        self._text += data[start:end]
        if len(self._text) > MAX_TEXT_FIELD_BYTES:
            self._fail(Unprocessable(f"form field '{self._target}' is longer than {MAX_TEXT_FIELD_BYTES} bytes"))

    def on_part_end(self) -> None:
        if self._error is not None or self._target is None or self._target == self.file_field:
            return
        try:
            value = self._text.decode("utf-8")
        except UnicodeDecodeError:
            self._fail(Unprocessable(f"form field '{self._target}' is not valid UTF-8"))
            return
        if "\x00" in value:  # PostgreSQL text cannot hold NUL
            self._fail(Unprocessable(f"form field '{self._target}' contains a NUL character"))
            return
        self.form.fields[self._target] = value

    def on_end(self) -> None:
        self.ended = True


def store_upload(store: ArtifactStore, session_factory: Any, staged: StagedFile, kind: str, row: Any) -> Any:
    """Move a validated upload to its content-addressed key and commit ``row`` pointing at it.

    Placing and committing happen under the store's lock (always taken before any database write
    lock, here and in deletes), so a concurrent delete of the same content cannot remove the file
    between the two. If the commit fails, a file this call placed is removed again.
    """
    with store.lock():
        key, newly_placed = store.place(staged, kind)
        row.storage_key = key
        session = session_factory()
        try:
            session.add(row)
            session.commit()
        except BaseException:
            session.rollback()
            if newly_placed:  # it did not exist before and the lock is held: nothing else refers to it
                store.remove(key)
            raise
        finally:
            session.close()
    return row


def delete_upload(session: Any, store: ArtifactStore, session_factory: Any, repository: ArtifactRepository, row: Any,
                  what: str) -> None:
    """Delete an uploaded checkpoint or dataset row that no job uses, then its file unless another
    row shares it. ``repository`` is the caller's repository of that table; ``what`` names the row
    in errors ("checkpoint ck_...")."""
    jobs = repository.count_jobs_using(row.id)
    if jobs:
        raise _in_use(what, jobs)
    storage_key = row.storage_key
    repository.delete(row)
    try:
        session.commit()
    except IntegrityError:  # a job referencing it was committed in between
        session.rollback()
        raise _in_use(what, None) from None
    release_artifact(store, session_factory, storage_key, type(repository).storage_key_in_use)


def _in_use(what: str, jobs: int | None) -> Conflict:
    count = f"{jobs} job(s)" if jobs else "jobs"
    return Conflict(f"{what} is used by {count}; it is kept so that their results stay reproducible",
    )


def release_artifact(store: ArtifactStore, session_factory: Any, storage_key: str, in_use: Any) -> bool:
    """After a row was deleted (and committed): remove its file unless another row still uses it.

    ``in_use(session, storage_key) -> bool``. Returns whether the file was removed.
    """
    with store.lock():
        session = session_factory()
        try:
            used = in_use(session, storage_key)
            session.commit()
        finally:
            session.close()
        if not used:
            store.remove(storage_key)
        return not used
