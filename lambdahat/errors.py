"""Exceptions raised by the client. Every one carries the server's own message.

``LambdahatError`` is the base; HTTP failures map to a subclass by status code, so callers can
``except NotFound`` without looking at numbers. ``status_code`` is None when no response arrived.
"""

from __future__ import annotations

from typing import Any


class LambdahatError(Exception):
    """Base class. ``detail`` is the server's ``detail`` field as sent (a string or a list of problems)."""

    def __init__(self, message: str, *, status_code: int | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.detail = detail if detail is not None else message

    def __str__(self) -> str:
        if self.status_code is None:
            return self.message
        return f"{self.message} (HTTP {self.status_code})"


class ConnectionFailed(LambdahatError):
    """The server could not be reached (refused, DNS, TLS, or the connection dropped)."""


class ValidationFailed(LambdahatError):
    """The server rejected the request's content (HTTP 400 or 422)."""


class Unauthorized(LambdahatError):
    """Missing, invalid or revoked API key (HTTP 401)."""


class Forbidden(LambdahatError):
    """The key lacks a scope the request needs (HTTP 403)."""


class NotFound(LambdahatError):
    """No such object, or it belongs to another owner (HTTP 404)."""


class Conflict(LambdahatError):
    """The request conflicts with the object's state, e.g. deleting a dataset a job uses (HTTP 409)."""


class PayloadTooLarge(LambdahatError):
    """The upload exceeds the server's size limit (HTTP 413)."""


class RateLimited(LambdahatError):
    """Too many requests or too many queued jobs (HTTP 429)."""


class ServerError(LambdahatError):
    """The server failed (HTTP 5xx) or answered something the client cannot read."""


class WaitTimeout(LambdahatError, TimeoutError):
    """``wait(..., timeout=...)`` ran out before the job or batch finished. ``last`` is its last state."""

    def __init__(self, message: str, *, last: Any = None) -> None:
        super().__init__(message)
        self.last = last


class JobFailed(LambdahatError):
    """``estimate`` ran a job that did not succeed. ``job`` is the final job, ``job.error`` the reason."""

    def __init__(self, message: str, *, job: Any = None) -> None:
        super().__init__(message)
        self.job = job


_BY_STATUS: dict[int, type[LambdahatError]] = {
    400: ValidationFailed,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: ValidationFailed,
    429: RateLimited,
}


def error_class_for(status_code: int) -> type[LambdahatError]:
    if status_code in _BY_STATUS:
        return _BY_STATUS[status_code]
    if status_code >= 500:
        return ServerError
    return LambdahatError


def format_detail(detail: Any) -> str:
    """A one-paragraph message from a ``detail`` field.

    FastAPI's request-validation errors are a list of ``{"loc": [...], "msg": ...}``: each becomes
    ``loc.path: msg`` so the user sees which field is wrong.
    """
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict) and "msg" in item:
                loc = [str(p) for p in item.get("loc", []) if p not in ("body", "query", "path", "header")]
                parts.append(f"{'.'.join(loc)}: {item['msg']}" if loc else str(item["msg"]))
            else:
                parts.append(str(item))
        return "; ".join(parts) if parts else "invalid request"
    if isinstance(detail, dict):
        if "message" in detail:
            return str(detail["message"])
        return "; ".join(f"{k}: {v}" for k, v in detail.items())
    return str(detail)
