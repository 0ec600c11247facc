"""HTTP endpoints for checkpoints: upload (streamed multipart), list, get, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from api.checkpoints import service
from api.checkpoints.schemas import CheckpointList, CheckpointPublic
from api.deps import CurrentPrincipal, SessionDep, SessionFactoryDep, SettingsDep
from api.pagination import DEFAULT_LIMIT, MAX_LIMIT
from api.uploads import UploadPrincipal, multipart_openapi, receive_and_create

router = APIRouter(prefix="/v1/checkpoints", tags=["checkpoints"])

_UPLOAD_FORM = multipart_openapi(
    {
        "file": {
            "type": "string",
            "format": "binary",
            "description": "A safetensors or torch.save (.pt) state_dict, a torch.export (.pt2) archive "
            "(run-code scope), or a zip/tar/tar.gz of a save_pretrained directory (config.json + model.safetensors "
            "or a sharded index); the format is detected from the content",
        },
        "architecture": {
            "type": "string",
            "description": 'JSON config of a built-in architecture, e.g. {"kind": "mlp", "in_features": 16, '
            '"hidden": [32], "out_features": 3}; required for safetensors and .pt, omitted for .pt2',
        },
        "task": {"type": "string", "enum": ["causal_lm", "sequence_classification", "masked_lm"],
                 "description": "save_pretrained archives only: the head to build (default: from config.json's "
                 "architectures, else causal_lm)"},
        "collection": {"type": "string", "maxLength": 300, "description": "Group label, e.g. a training run"},
        "step": {"type": "integer", "minimum": 0, "description": "Training step"},
        "name": {"type": "string", "maxLength": 300, "description": "A label (default: the file name)"},
    },
    required=["file"],
)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=CheckpointPublic,
    openapi_extra=_UPLOAD_FORM,
    responses={
        403: {"description": ".pt2 upload without the run-code scope"},
        413: {"description": "The file is larger than LAMBDAHAT_MAX_UPLOAD_BYTES"},
        415: {"description": "The body is not multipart/form-data"},
        422: {"description": "Invalid file, architecture, or weights that do not fit it (the message says which)"},
    },
)
async def upload_checkpoint(request: Request, principal: UploadPrincipal, settings: SettingsDep,
                            session_factory: SessionFactoryDep) -> CheckpointPublic:
    """Upload a checkpoint (multipart `file`, `architecture`, optional `collection`, `step`, `name`)."""
    row = await receive_and_create(
        request, settings, service.TEXT_FIELDS,
        lambda store, form: service.create_checkpoint(session_factory, principal, store, form, settings),
    )
    return CheckpointPublic.model_validate(row)


@router.get("", response_model=CheckpointList)
def list_checkpoints(
    session: SessionDep,
    principal: CurrentPrincipal,
    collection: Annotated[str | None, Query(description="Only this collection")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(description="next_cursor from the previous page")] = None,
) -> CheckpointList:
    """Your checkpoints, newest first."""
    rows, next_cursor = service.list_checkpoints(session, principal, limit, cursor, collection)
    return CheckpointList(items=[CheckpointPublic.model_validate(r) for r in rows], next_cursor=next_cursor)


@router.get("/{checkpoint_id}", response_model=CheckpointPublic, responses={404: {"description": "No such checkpoint"}})
def get_checkpoint(checkpoint_id: str, session: SessionDep, principal: CurrentPrincipal) -> CheckpointPublic:
    return CheckpointPublic.model_validate(service.get_checkpoint(session, principal, checkpoint_id))


@router.delete(
    "/{checkpoint_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"description": "No such checkpoint"}, 409: {"description": "Jobs use this checkpoint"}},
)
def delete_checkpoint(
    checkpoint_id: str, session: SessionDep, session_factory: SessionFactoryDep, principal: CurrentPrincipal,
    settings: SettingsDep,
) -> Response:
    """Delete a checkpoint and (unless identical content is stored for another row) its file. 409 if jobs use it."""
    service.delete_checkpoint(session, session_factory, principal, settings, checkpoint_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
