"""Dataset queries, each filtered by the caller's owner (see ``api.repository``)."""

from __future__ import annotations

from api.repository import ArtifactRepository
from backend.models import Dataset


class DatasetRepository(ArtifactRepository[Dataset]):
    model = Dataset
    job_column = "dataset_id"
