"""The transport-independent layer shared by ``Client`` and ``AsyncClient``.

Every client operation is written once, as a generator (an "operation"): it yields ``Call``
(an HTTP request to make) or ``Sleep`` (a pause), receives the ``httpx.Response`` for each
``Call``, and returns its result. An error response is thrown into the generator as a
``LambdahatError``, so an operation can catch ``NotFound`` and try something else.
``Client`` drives operations with blocking I/O, ``AsyncClient`` with ``await``; neither contains
any request-building or response-parsing code of its own.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from lambdahat.errors import ConnectionFailed, LambdahatError, ServerError, error_class_for, format_detail

DEFAULT_URL = "http://127.0.0.1:8000"
API_KEY_FILE_NAME = "api_key"

T = TypeVar("T")


@dataclass
class Call:
    """One HTTP request. ``files`` values are ``(filename, bytes or binary file, content type)``."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    data: dict[str, str] | None = None
    files: dict[str, tuple[str, Any, str]] | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Sleep:
    seconds: float


Operation = Generator[Call | Sleep, httpx.Response | None, T]


def data_dir() -> Path:
    """The local data directory, resolved exactly as the server resolves it (without importing it)."""
    explicit = os.environ.get("LAMBDAHAT_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "lambdahat"


def resolve_api_key(explicit: str | None) -> tuple[str | None, str]:
    """The key to use and where it came from: argument, env LAMBDAHAT_API_KEY, then the local key file."""
    if explicit:
        return explicit.strip(), "argument"
    from_env = os.environ.get("LAMBDAHAT_API_KEY")
    if from_env and from_env.strip():
        return from_env.strip(), "LAMBDAHAT_API_KEY"
    key_file = data_dir() / API_KEY_FILE_NAME
    try:
        text = key_file.read_text().strip()
    except OSError:
        return None, "none"
    return (text, str(key_file)) if text else (None, "none")


def resolve_url(explicit: str | None) -> str:
    url = explicit or os.environ.get("LAMBDAHAT_URL") or DEFAULT_URL
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


def build_request(http: httpx.Client | httpx.AsyncClient, call: Call) -> httpx.Request:
    params = {k: v for k, v in (call.params or {}).items() if v is not None}
    return http.build_request(
        call.method,
        call.path,
        params=params or None,
        json=call.json,
        data=call.data,
        files=call.files,
        headers=call.headers or None,
    )


def check_response(response: httpx.Response, *, key_source: str) -> httpx.Response:
    """Return a successful response; raise the matching ``LambdahatError`` for an error response."""
    if response.status_code < 400:
        return response
    detail: Any
    try:
        body = response.json()
        detail = body.get("detail", body) if isinstance(body, dict) else body
    except ValueError:
        detail = response.text.strip() or response.reason_phrase
    message = format_detail(detail)
    if response.status_code == 401 and key_source == "none":
        message += (
            " -- no API key was found: pass api_key= (CLI: --api-key), set LAMBDAHAT_API_KEY, "
            f"or run the server locally so it writes {data_dir() / API_KEY_FILE_NAME}"
        )
    raise error_class_for(response.status_code)(message, status_code=response.status_code, detail=detail)


def transport_error(exc: httpx.HTTPError, url: str) -> LambdahatError:
    """A readable error for a request that got no response."""
    if isinstance(exc, httpx.TimeoutException):
        return ConnectionFailed(f"the server at {url} did not answer in time ({type(exc).__name__})")
    return ConnectionFailed(f"cannot reach the lambdahat server at {url}: {exc}")


def json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise ServerError(
            f"expected JSON from {response.request.method} {response.request.url.path}, "
            f"got {response.headers.get('content-type', 'no content type')}",
            status_code=response.status_code,
        ) from exc

