"""HTTP endpoints for jobs (filled in by the jobs work)."""

from fastapi import APIRouter

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
