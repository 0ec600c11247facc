"""The FastAPI application. ``create_app(settings)`` builds one; ``lambdahat serve`` runs it.

Nothing imported here pulls in torch: uploads are inspected with pure-Python header parsing (or in
a subprocess), and jobs run in worker processes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import errors, health
from api.batches.endpoints import router as batches_router
from api.batches.plots import router as plots_router
from api.checkpoints.endpoints import router as checkpoints_router
from api.dashboard import install_dashboard
from api.datasets.endpoints import router as datasets_router
from api.jobs.endpoints import router as jobs_router
from api.metrics import install_metrics
from api.observability.status import router as status_router
from backend.db import session_factory
from backend.migrate import prepare_embedded_database
from backend.settings import Settings, get_settings


def create_app(settings: Settings | None = None, *, run_dispatcher: bool | None = None) -> FastAPI:
    """Build the app. ``run_dispatcher`` (default: embedded mode) starts the local job dispatcher.

    In distributed mode the default instead runs the reaper (re-queues jobs of dead workers, re-sends
    jobs a broker lost); ``run_dispatcher=False`` runs neither.
    """
    settings = settings or get_settings()
    run_reaper = run_dispatcher is None and not settings.embedded
    if run_dispatcher is None:
        run_dispatcher = settings.embedded

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        dispatcher = None
        if settings.log_format == "json":
            from backend.logs import route_library_loggers_to_root

            route_library_loggers_to_root()  # uvicorn configured its own handlers before this app started
        prepare_embedded_database(settings)
        if run_dispatcher:
            from backend.dispatcher import EmbeddedDispatcher

            dispatcher = EmbeddedDispatcher(settings)
            dispatcher.start()
        elif run_reaper:
            from backend.reaper import start_reaper

            dispatcher = start_reaper(settings)
        app.state.dispatcher = dispatcher  # /v1/status reports the embedded dispatcher
        try:
            yield
        finally:
            if dispatcher is not None:
                dispatcher.stop()

    app = FastAPI(
        title="lambdahat",
        version="0.1.0",
        description="Local learning coefficient (LLC) estimation as a service.",
        lifespan=lifespan,
    )
    app.state.settings = settings

    errors.install(app)  # domain errors and database outages as JSON answers
    app.state.session_factory = session_factory(settings)
    app.include_router(health.router)
    app.include_router(datasets_router)
    app.include_router(checkpoints_router)
    app.include_router(jobs_router)
    app.include_router(batches_router)
    app.include_router(plots_router)
    app.include_router(status_router)
    install_metrics(app, settings)  # /metrics and per-request counters
    install_dashboard(app)  # the web UI at / (assets under /ui); after the API routes, shadows none
    _document_message_errors(app)
    if settings.is_sqlite:
        from api.admission import SQLiteAdmission

        app.add_middleware(SQLiteAdmission)  # one writer at a time: see api/admission.py
    return app


def _document_message_errors(app: FastAPI) -> None:
    """Make the OpenAPI schema say what 422 bodies really hold.

    FastAPI documents 422 as ``{"detail": [<validation error>, ...]}``, but checks made in the handlers
    (cursors, Idempotency-Key, artifact contents) answer ``{"detail": "<message>"}``: the schema allows
    both, so clients generated from it (and schemathesis) accept every 422 the API sends.
    """
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            error = schema.get("components", {}).get("schemas", {}).get("HTTPValidationError")
            if error is not None:
                listed = error["properties"]["detail"]
                error["properties"]["detail"] = {"anyOf": [listed, {"type": "string"}], "title": "Detail"}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
