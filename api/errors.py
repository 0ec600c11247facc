"""Domain errors: what services raise when a request cannot be done, mapped to HTTP in one place.

Services and repositories raise these with a message that names the problem and says what to do;
:func:`install` turns each into its status code and the JSON body every error of this API has,
``{"detail": "..."}``; a database outage becomes a retryable 503. Authentication (401) belongs to
the HTTP layer (``api/deps.py``).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

log = logging.getLogger("lambdahat.api")


class ServiceError(Exception):
    """A request that cannot be done as asked; ``detail`` is the message the caller sees."""

    status_code = status.HTTP_400_BAD_REQUEST

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(ServiceError):
    status_code = status.HTTP_400_BAD_REQUEST


class Forbidden(ServiceError):
    """The caller's key lacks a scope the request needs."""

    status_code = status.HTTP_403_FORBIDDEN


class NotFound(ServiceError):
    """No such object among the caller's (another owner's objects are not found either)."""

    status_code = status.HTTP_404_NOT_FOUND


class Conflict(ServiceError):
    """The request contradicts the stored state (an object in use, a reused idempotency key, ...)."""

    status_code = status.HTTP_409_CONFLICT


class PayloadTooLarge(ServiceError):
    status_code = status.HTTP_413_CONTENT_TOO_LARGE


class UnsupportedMediaType(ServiceError):
    status_code = status.HTTP_415_UNSUPPORTED_MEDIA_TYPE


class Unprocessable(ServiceError):
    """Well-formed but invalid content: a bad config, an invalid file, an unknown field value."""

    status_code = status.HTTP_422_UNPROCESSABLE_CONTENT


class TooManyRequests(ServiceError):
    """A per-owner cap is reached."""

    status_code = status.HTTP_429_TOO_MANY_REQUESTS


class InsufficientStorage(ServiceError):
    status_code = status.HTTP_507_INSUFFICIENT_STORAGE


def install(app: FastAPI) -> None:
    """Answer every :class:`ServiceError` with its status code and ``{"detail": message}``, and a
    database outage with a retryable 503."""

    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    async def database_unavailable(request: Request, exc: OperationalError) -> JSONResponse:
        # The database is down or the connection dropped mid-request (the transaction was rolled back):
        # a retryable 503 with a message, not a 500 traceback.
        log.warning("%s %s: database unavailable: %s", request.method, request.url.path, str(exc).splitlines()[0])
        return JSONResponse({"detail": "the database is unavailable; retry shortly"}, status_code=503,
                            headers={"Retry-After": "5"})

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(OperationalError, database_unavailable)
