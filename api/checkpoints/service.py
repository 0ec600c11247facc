"""Checkpoint logic: validate an upload against its architecture, store it, list, delete.

- safetensors: the header is read in pure Python; weights are checked against the architecture's
  expected state_dict and for NaN/inf (read in bounded chunks).
- ``.pt``: inspected by ``python -m worker.inspect`` in a short-lived subprocess (``torch.load`` with
  ``weights_only=True``), so this process never imports torch or runs an unpickler.
- ``.pt2``: code. Only keys with the ``run-code`` scope may upload one; only its JSON weight config is
  read here (for the parameter count); it is loaded only inside a job process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request, status
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.checkpoints import repository
from api.deps import Principal
from api.pagination import page
from api.types import is_valid_id
from api.uploads import UploadForm, delete_upload, receive_upload, store_upload, unprocessable
from backend.formats import FormatError, count_non_finite, detect_format, read_pt2, read_safetensors
from backend.models import Checkpoint
from backend.settings import Settings
from backend.storage import ArtifactStore
from estimator import architectures

TEXT_FIELDS = {"architecture", "collection", "step", "name"}
INSPECT_TIMEOUT_S = 300.0
PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent


async def upload_checkpoint(request: Request, principal: Principal, settings: Settings) -> Checkpoint:
    store = ArtifactStore(settings)
    form = await receive_upload(request, store, max_bytes=settings.max_upload_bytes, text_fields=TEXT_FIELDS)
    try:
        return await run_in_threadpool(_validate_and_store, request.app.state.session_factory, store, form, principal)
    finally:
        form.discard()  # a no-op once the file has been placed


def _validate_and_store(session_factory: Any, store: ArtifactStore, form: UploadForm, principal: Principal) -> Checkpoint:
    assert form.file is not None and form.file.sha256 is not None
    fields = _metadata_fields(form)
    path = form.file.path
    try:
        fmt = detect_format(path)
    except FormatError as exc:
        raise unprocessable(f"invalid checkpoint: {exc}") from None
    raw_architecture = form.fields.get("architecture")
    if fmt == "npz":
        raise unprocessable("invalid checkpoint: npz is a dataset format; upload a checkpoint as safetensors, .pt or .pt2")
    if fmt == "pt2":
        if not principal.can("run-code"):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail="torch.export (.pt2) archives contain code and need an API key with the 'run-code' scope "
                "(lambdahat keys create --scope run-code); or upload a safetensors state_dict with an architecture",
            )
        if raw_architecture:
            raise unprocessable("'architecture' does not apply to .pt2 archives (they carry their own graph); omit it")
        try:
            num_params = read_pt2(path).num_params
        except FormatError as exc:
            raise unprocessable(f"invalid checkpoint: {exc}") from None
        architecture = None
    else:
        architecture = _parse_architecture(raw_architecture, fmt)
        _check_weights(path, fmt, architecture)
        num_params = architectures.num_params(architecture)
    row = Checkpoint(
        owner=principal.owner,
        sha256=form.file.sha256,
        size_bytes=form.file.size,
        format=fmt,
        architecture=architecture,
        num_params=num_params,
        **fields,
    )
    return store_upload(store, session_factory, form.file, "checkpoints", row)


def _metadata_fields(form: UploadForm) -> dict[str, Any]:
    name = form.fields.get("name")
    collection = form.fields.get("collection") or None
    for label, value in (("name", name), ("collection", collection)):
        if value is not None and len(value) > 300:
            raise unprocessable(f"'{label}' must be at most 300 characters")
    name = name or (form.filename[:300] if form.filename else None)
    step: int | None = None
    raw_step = form.fields.get("step")
    if raw_step not in (None, ""):
        try:
            step = int(raw_step.strip())
        except ValueError:
            raise unprocessable(f"'step' must be a non-negative integer, got {raw_step!r}") from None
        if not 0 <= step < 2**31:
            raise unprocessable(f"'step' must be between 0 and {2**31 - 1}, got {step}")
    return {"name": name, "collection": collection, "step": step}


def _parse_architecture(raw: str | None, fmt: str) -> dict[str, Any]:
    example = '{"kind": "mlp", "in_features": 16, "hidden": [32], "out_features": 3}'
    if not raw:
        raise unprocessable(
            f"form field 'architecture' is required for {fmt} checkpoints: a JSON object such as {example} "
            "(kinds: " + ", ".join(architectures.KINDS) + "; see docs/api.md)"
        )
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise unprocessable(f"'architecture' is not valid JSON ({exc}); expected an object such as {example}") from None
    try:
        return architectures.normalize(config)
    except architectures.ArchitectureError as exc:
        raise unprocessable(f"invalid architecture: {exc}") from None


def _check_weights(path: Path, fmt: str, architecture: dict[str, Any]) -> None:
    if fmt == "safetensors":
        try:
            infos = read_safetensors(path)
        except FormatError as exc:
            raise unprocessable(f"invalid checkpoint: {exc}") from None
        tensors = {k: (t.shape, t.dtype) for k, t in infos.items()}
    else:
        inspected = inspect_torch_file(path)
        tensors = {k: (tuple(v["shape"]), v["dtype"]) for k, v in inspected.items()}
    problems = architectures.check_weights(architecture, tensors)
    if problems:
        raise unprocessable(f"the weights do not match the {architecture['kind']} architecture: " + "; ".join(problems))
    if fmt == "safetensors":
        non_finite = {k: count_non_finite(path, t) for k, t in infos.items()}
    else:
        non_finite = {k: int(v["non_finite"]) for k, v in inspected.items()}
    bad = {k: n for k, n in non_finite.items() if n}
    if bad:
        listing = ", ".join(f"{k} ({n})" for k, n in list(bad.items())[:20])
        raise unprocessable(f"the weights contain non-finite values (NaN or inf): {listing}")


def inspect_torch_file(path: Path) -> dict[str, Any]:
    """Key -> {shape, dtype, non_finite} of a torch.save state_dict, read by a weights-only load in a
    subprocess (a fresh interpreter in an empty working directory, killed after INSPECT_TIMEOUT_S)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    with tempfile.TemporaryDirectory(prefix="lambdahat-inspect-") as cwd:
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "worker.inspect", str(path)],
                cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=INSPECT_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            raise unprocessable(f"invalid checkpoint: inspecting the .pt file took longer than {INSPECT_TIMEOUT_S:.0f} s") from None
    try:
        result = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    except (IndexError, ValueError, UnicodeDecodeError):
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise unprocessable(
            f"invalid checkpoint: the .pt file could not be inspected (inspector exit status {proc.returncode}: {tail[0][:300]})"
        ) from None
    if not result.get("ok"):
        raise unprocessable(f"invalid checkpoint: {result.get('error')}")
    return result["tensors"]


def get_checkpoint(session: Session, principal: Principal, checkpoint_id: str) -> Checkpoint:
    row = repository.get(session, principal.owner, checkpoint_id) if is_valid_id(checkpoint_id) else None
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"checkpoint {checkpoint_id} not found")
    return row


def list_checkpoints(
    session: Session, principal: Principal, limit: int, cursor: str | None, collection: str | None
) -> tuple[list[Checkpoint], str | None]:
    if collection is not None and "\x00" in collection:
        raise unprocessable("'collection' must not contain NUL characters")
    return page(repository.list_page(session, principal.owner, limit, cursor, collection), limit)


def delete_checkpoint(session: Session, request: Request, principal: Principal, settings: Settings, checkpoint_id: str) -> None:
    row = get_checkpoint(session, principal, checkpoint_id)
    delete_upload(session, ArtifactStore(settings), request.app.state.session_factory, principal, row, repository,
                  f"checkpoint {checkpoint_id}")  # fmt: skip
