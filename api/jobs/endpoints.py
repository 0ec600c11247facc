"""HTTP endpoints for LLC jobs: submit, inspect, list, cancel, download traces."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Response, status
from fastapi.responses import StreamingResponse

from api.deps import CurrentPrincipal, SessionDep, SettingsDep
from api.jobs.schemas import JobCreate, JobList, JobPublic
from api.jobs.service import JobService, traces_csv_lines, traces_json, traces_npz
from api.pagination import DEFAULT_LIMIT, MAX_LIMIT

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def get_job_service(session: SessionDep, settings: SettingsDep, principal: CurrentPrincipal) -> JobService:
    return JobService(session, settings, principal)


JobServiceDep = Annotated[JobService, Depends(get_job_service)]
JobId = Annotated[str, Path(min_length=1, max_length=64, description="The job's id.")]

_ERRORS = {401: {"description": "Missing or invalid API key"}, 404: {"description": "No such job for this key"}}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    responses={
        200: {"description": "Replay: a job with this Idempotency-Key and the same request already exists",
              "model": JobPublic},
        401: _ERRORS[401],
        403: {"description": "A .pt2 checkpoint needs a key with the run-code scope"},
        404: {"description": "Checkpoint or dataset not found"},
        409: {"description": "Idempotency-Key reused with a different request"},
        429: {"description": "Too many unfinished jobs for this owner"},
    },
)
def submit_job(
    body: JobCreate,
    service: JobServiceDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(
        max_length=200, description="Client-chosen key: resubmitting the same request with it returns the same job.",
    )] = None,
) -> JobPublic:
    """Queue an LLC estimation of a checkpoint on a dataset. Poll ``GET /v1/jobs/{id}`` for progress."""
    job, created = service.submit(body, idempotency_key)
    if not created:
        response.status_code = status.HTTP_200_OK
    return JobPublic.from_row(job)


@router.get("", response_model=JobList, responses={401: _ERRORS[401]})
def list_jobs(
    service: JobServiceDep,
    status_filter: Annotated[Literal["queued", "running", "succeeded", "failed", "cancelled"] | None,
                             Query(alias="status")] = None,
    checkpoint_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=500, description="next_cursor of the previous page")] = None,
) -> JobList:
    """Your jobs, newest first."""
    jobs, next_cursor = service.list(limit=limit, status_filter=status_filter, checkpoint_id=checkpoint_id,
                                     cursor=cursor)
    return JobList(items=[JobPublic.from_row(job) for job in jobs], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobPublic, responses=_ERRORS)
def get_job(job_id: JobId, service: JobServiceDep) -> JobPublic:
    """Status, progress, attempts, worker, timings, error, and the result once it has succeeded."""
    return JobPublic.from_row(service.get(job_id))


@router.post(
    "/{job_id}/cancel",
    response_model=JobPublic,
    responses={**_ERRORS, 409: {"description": "The job has already finished"}},
)
def cancel_job(job_id: JobId, service: JobServiceDep) -> JobPublic:
    """A queued job is cancelled at once; a running one stops within seconds (``cancel_requested`` until then)."""
    return JobPublic.from_row(service.cancel(job_id))


@router.get(
    "/{job_id}/traces",
    responses={
        **_ERRORS,
        200: {
            "description": "json: {num_chains, num_draws, init_loss, loss: [[...]], llc: [[...]]} (null for "
                           "non-finite values); csv: chain,draw,loss,llc; npz: arrays loss, llc "
                           "(chains x draws, float32) and init_loss",
            "content": {"application/json": {}, "text/csv": {}, "application/octet-stream": {}},
        },
        409: {"description": "The job has not succeeded (yet): no traces"},
    },
)
def get_traces(
    job_id: JobId,
    service: JobServiceDep,
    format: Annotated[Literal["json", "csv", "npz"], Query(description="json, csv or npz")] = "json",
) -> Response:
    """Per-draw loss and running LLC estimate of every chain."""
    traces = service.traces(job_id)
    if format == "csv":
        return StreamingResponse(
            traces_csv_lines(traces), media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{job_id}-traces.csv"'})
    if format == "npz":
        return Response(
            traces_npz(traces), media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{job_id}-traces.npz"'})
    return Response(traces_json(traces), media_type="application/json")
