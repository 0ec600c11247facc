"""``GET /v1/status``: the cluster at a glance (``lambdahat status`` prints it).

Any valid key may ask. Counts (jobs by status, queue depth) and workers are cluster-wide aggregates
with no owner data; the list of running jobs holds the caller's own jobs, or every owner's for a key
with the ``admin`` scope (then with their owners). ``ping=true`` also asks every Celery worker to
answer a broadcast ping (waits up to ``ping_timeout`` seconds).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from api.deps import CurrentPrincipal, SessionDep, SettingsDep
from backend.status import cluster_status

router = APIRouter(prefix="/v1", tags=["status"])


@router.get("/status")
def get_status(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: CurrentPrincipal,
    ping: Annotated[bool, Query(description="Also ping every Celery worker (distributed mode).")] = False,
    ping_timeout: Annotated[float, Query(gt=0, le=10, description="Seconds to wait for ping replies.")] = 1.0,
) -> dict[str, Any]:
    """Jobs by status, queue depth, workers (alive from recent heartbeats), running jobs with progress."""
    return cluster_status(
        session, settings, owner=None if principal.can("admin") else principal.owner,
        dispatcher=getattr(request.app.state, "dispatcher", None), ping=ping, ping_timeout=ping_timeout,
    )
