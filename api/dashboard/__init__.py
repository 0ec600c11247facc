"""The web dashboard: static HTML/CSS/JS shipped in the package, served at ``/`` (no build step).

The page is a single-page app that talks to the same ``/v1`` API as every other client, with the
API key the user types in (kept in the browser's sessionStorage and sent as a Bearer token). The
server side is therefore only file serving: ``/`` answers ``index.html`` and ``/ui/...`` the
assets. Nothing here shadows ``/docs``, ``/openapi.json``, ``/healthz``, ``/readyz``, ``/metrics``
or ``/v1/*``: the only paths taken are exactly ``/``, ``/ui`` and below.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"
ASSET_PREFIX = "/ui"

router = APIRouter(include_in_schema=False)


@router.get("/")
def dashboard_index() -> FileResponse:
    # no-cache: after an upgrade the browser revalidates the page (and so picks up new asset names).
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


@router.get("/dashboard")
def dashboard_alias() -> RedirectResponse:
    return RedirectResponse("/", status_code=307)


def install_dashboard(app: FastAPI) -> None:
    """Serve the dashboard at ``/`` and its assets at ``/ui/``."""
    if not (STATIC_DIR / "index.html").is_file():  # a broken install should fail at start, not with a 500 later
        raise RuntimeError(f"the dashboard files are missing from {STATIC_DIR}; reinstall lambdahat")
    app.include_router(router)
    app.mount(ASSET_PREFIX, StaticFiles(directory=STATIC_DIR), name="dashboard-assets")


__all__ = ["ASSET_PREFIX", "STATIC_DIR", "install_dashboard", "router"]
