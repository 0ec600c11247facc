"""PNG plot endpoints, drawn with ``client.plots`` (the one implementation the client and CLI use too).

The endpoints are plain ``def``: FastAPI runs them in its threadpool, so rendering (CPU work) never
blocks the event loop. matplotlib's object API on the Agg canvas is thread-safe per figure.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from api.batches.endpoints import BatchServiceDep
from api.errors import NotFound, Unprocessable
from api.jobs.endpoints import JobServiceDep
from backend.models import Batch

router = APIRouter(prefix="/v1", tags=["plots"])

MAX_SERIES = 10
_PNG = {"content": {"image/png": {}}, "description": "A PNG image"}
Id = Annotated[str, Path(min_length=1, max_length=64)]


def _png(data: bytes) -> Response:
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.get("/jobs/{job_id}/plot.png", response_class=Response,
            responses={200: _PNG, 404: {"description": "No such job"}, 409: {"description": "No traces (yet)"}})
def job_plot(job_id: Id, service: JobServiceDep) -> Response:
    """Loss traces per chain with the L_n(w*) line, running λ̂ per chain, diagnostics and warnings."""
    from estimator.plots import plot_job_traces

    traces = service.traces(job_id)
    result = service.get(job_id).result or {}
    return _png(plot_job_traces(traces.loss, traces.llc, traces.init_loss, diagnostics=result.get("diagnostics"),
                                warnings=result.get("warnings"), title=f"job {job_id[:8]}"))


def _series_name(batch: Batch) -> str:
    return batch.collection or f"batch {batch.id[:8]}"


@router.get("/batches/{batch_id}/plot.png", response_class=Response,
            responses={200: _PNG, 404: {"description": "No such batch"}})
def batch_plot(batch_id: Id, service: BatchServiceDep) -> Response:
    """λ̂ ± std (over chains) against training step, one point per checkpoint with a result."""
    from estimator.plots import plot_llc_over_training, series_from_rows

    batch = service.get(batch_id)
    rows = [row.model_dump() for row in service.results(batch_id)]
    return _png(plot_llc_over_training({_series_name(batch): series_from_rows(rows)}))


@router.get("/plots/llc.png", response_class=Response,
            responses={200: _PNG, 404: {"description": "A batch or collection not found"},
                       422: {"description": "No series asked for, or too many"}})
def compare_plot(
    service: BatchServiceDep,
    batch_id: Annotated[list[str] | None, Query(description="A batch to draw (repeatable)")] = None,
    collection: Annotated[list[str] | None, Query(
        description="A collection to draw: its most recent batch (repeatable)")] = None,
) -> Response:
    """Several batches (or collections: each one's newest batch) as λ̂-over-training lines on one axis."""
    from estimator.plots import plot_llc_over_training, series_from_rows

    batch_ids, collections = list(batch_id or []), list(collection or [])
    if not batch_ids and not collections:
        raise Unprocessable("give at least one ?batch_id= or ?collection= to plot")
    if len(batch_ids) + len(collections) > MAX_SERIES:
        raise Unprocessable(f"at most {MAX_SERIES} series per plot")
    batches = [service.get(b) for b in batch_ids]
    for name in collections:
        newest = service.repo.latest_of_collection(name)
        if newest is None:
            raise NotFound(f"no batch of collection '{name}' found")
        batches.append(newest)
    series: dict[str, list] = {}
    for batch in batches:
        name = _series_name(batch)
        if name in series:
            name = f"{name} ({batch.id[:8]})"
        series[name] = series_from_rows([row.model_dump() for row in service.results(batch.id)])
    return _png(plot_llc_over_training(series))
