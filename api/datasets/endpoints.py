"""HTTP endpoints for datasets (filled in by the datasets work)."""

from fastapi import APIRouter

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])
