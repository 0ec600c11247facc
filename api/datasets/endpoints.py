"""HTTP endpoints for datasets: upload (streamed multipart), list, get, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from api.datasets import service
from api.datasets.schemas import DatasetList, DatasetPublic
from api.deps import CurrentPrincipal, SessionDep, SessionFactoryDep, SettingsDep
from api.pagination import DEFAULT_LIMIT, MAX_LIMIT
from api.uploads import UploadPrincipal, multipart_openapi, receive_and_create

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

_UPLOAD_FORM = multipart_openapi(
    {
        "file": {
            "type": "string",
            "format": "binary",
            "description": "safetensors or npz holding tensors 'x' (inputs) and 'y' (targets), same first dimension; "
            "or a token dataset: 'input_ids' (integer [N, T]) with optional 'attention_mask' ([N, T], 0/1) and "
            "'labels' ([N, T], -100 = not a target, or [N] classes)",
        },
        "name": {"type": "string", "maxLength": 300, "description": "A label (default: the file name)"},
    },
    required=["file"],
)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetPublic,
    openapi_extra=_UPLOAD_FORM,
    responses={
        413: {"description": "The file is larger than LAMBDAHAT_MAX_UPLOAD_BYTES"},
        415: {"description": "The body is not multipart/form-data"},
        422: {"description": "Not a valid dataset (the message says why)"},
    },
)
async def upload_dataset(request: Request, principal: UploadPrincipal, settings: SettingsDep,
                         session_factory: SessionFactoryDep) -> DatasetPublic:
    """Upload a dataset (multipart field `file`, optional `name`). The format is detected from the content."""
    row = await receive_and_create(
        request, settings, service.TEXT_FIELDS,
        lambda store, form: service.create_dataset(session_factory, principal, store, form),
    )
    return DatasetPublic.model_validate(row)


@router.get("", response_model=DatasetList)
def list_datasets(
    session: SessionDep,
    principal: CurrentPrincipal,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(description="next_cursor from the previous page")] = None,
) -> DatasetList:
    """Your datasets, newest first."""
    rows, next_cursor = service.list_datasets(session, principal, limit, cursor)
    return DatasetList(items=[DatasetPublic.model_validate(r) for r in rows], next_cursor=next_cursor)


@router.get("/{dataset_id}", response_model=DatasetPublic, responses={404: {"description": "No such dataset"}})
def get_dataset(dataset_id: str, session: SessionDep, principal: CurrentPrincipal) -> DatasetPublic:
    return DatasetPublic.model_validate(service.get_dataset(session, principal, dataset_id))


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"description": "No such dataset"}, 409: {"description": "Jobs use this dataset"}},
)
def delete_dataset(
    dataset_id: str, session: SessionDep, session_factory: SessionFactoryDep, principal: CurrentPrincipal,
    settings: SettingsDep,
) -> Response:
    """Delete a dataset and (unless identical content is stored for another row) its file. 409 if jobs use it."""
    service.delete_dataset(session, session_factory, principal, settings, dataset_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
