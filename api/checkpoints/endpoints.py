"""HTTP endpoints for checkpoints (filled in by the checkpoints work)."""

from fastapi import APIRouter

router = APIRouter(prefix="/v1/checkpoints", tags=["checkpoints"])
