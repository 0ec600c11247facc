"""HTTP endpoints for batches: create, inspect, list, results, cancel."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Response, status

from api.batches.schemas import BatchCreate, BatchList, BatchPublic
from api.batches.service import BatchService, results_csv, results_json
from api.deps import CurrentPrincipal, SessionDep, SettingsDep
from api.pagination import DEFAULT_LIMIT, MAX_LIMIT

router = APIRouter(prefix="/v1/batches", tags=["batches"])


def get_batch_service(session: SessionDep, settings: SettingsDep, principal: CurrentPrincipal) -> BatchService:
    return BatchService(session, settings, principal)


BatchServiceDep = Annotated[BatchService, Depends(get_batch_service)]
BatchId = Annotated[str, Path(min_length=1, max_length=64, description="The batch's id.")]

_ERRORS = {401: {"description": "Missing or invalid API key"}, 404: {"description": "No such batch for this key"}}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BatchPublic,
    responses={
        200: {"description": "Replay: a batch with this Idempotency-Key and the same request already exists",
              "model": BatchPublic},
        401: _ERRORS[401],
        403: {"description": "A .pt2 checkpoint needs a key with the run-code scope"},
        404: {"description": "Dataset or checkpoint(s) not found"},
        409: {"description": "Idempotency-Key reused with a different request"},
        422: {"description": "Bad body, or a collection without checkpoints"},
        429: {"description": "The batch would exceed the per-owner limit of unfinished jobs"},
    },
)
def create_batch(
    body: BatchCreate,
    service: BatchServiceDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(
        max_length=200, description="Client-chosen key: resubmitting the same request with it returns the same batch.",
    )] = None,
) -> BatchPublic:
    """One LLC job per checkpoint of ``collection`` (or of ``checkpoint_ids``). Identical work that already
    succeeded is reused (``reused_from`` on the job) unless ``force`` is true."""
    batch, created = service.create(body, idempotency_key)
    if not created:
        response.status_code = status.HTTP_200_OK
    return service.public([batch])[0]


@router.get("", response_model=BatchList, responses={401: _ERRORS[401]})
def list_batches(
    service: BatchServiceDep,
    collection: Annotated[str | None, Query(max_length=300, description="Only batches of this collection")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=500, description="next_cursor of the previous page")] = None,
) -> BatchList:
    """Your batches, newest first."""
    batches, next_cursor = service.list(limit=limit, collection=collection, cursor=cursor)
    return BatchList(items=service.public(batches), next_cursor=next_cursor)


@router.get("/{batch_id}", response_model=BatchPublic, responses=_ERRORS)
def get_batch(batch_id: BatchId, service: BatchServiceDep) -> BatchPublic:
    """Job counts by status, overall progress, and the batch's status."""
    return service.public([service.get(batch_id)])[0]


@router.get(
    "/{batch_id}/results",
    responses={
        **_ERRORS,
        200: {"description": "json: a list of rows {step, checkpoint_id, name, job_id, status, llc_mean, llc_std, "
                             "warnings, reused_from, error}; csv: the same columns (warnings as 'code: message' "
                             "joined by ' | ')",
              "content": {"application/json": {}, "text/csv": {}}},
    },
)
def get_results(
    batch_id: BatchId,
    service: BatchServiceDep,
    format: Annotated[Literal["json", "csv"], Query(description="json or csv")] = "json",
) -> Response:
    """One row per checkpoint, ordered by training step (then name); unfinished jobs have null λ̂."""
    rows = service.results(batch_id)
    if format == "csv":
        return Response(results_csv(rows), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{batch_id}-results.csv"'})
    return Response(results_json(rows), media_type="application/json")


@router.post("/{batch_id}/cancel", response_model=BatchPublic,
             responses={**_ERRORS, 409: {"description": "Every job of the batch has already finished"}})
def cancel_batch(batch_id: BatchId, service: BatchServiceDep) -> BatchPublic:
    """Queued jobs are cancelled at once; running ones stop within seconds."""
    return service.public([service.cancel(batch_id)])[0]
