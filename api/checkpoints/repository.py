"""Checkpoint queries, each filtered by the caller's owner (see ``api.repository``)."""

from __future__ import annotations

from api.repository import ArtifactRepository
from backend.models import Checkpoint


class CheckpointRepository(ArtifactRepository[Checkpoint]):
    model = Checkpoint
    job_column = "checkpoint_id"

    def page_of_collection(self, limit: int, cursor: str | None, collection: str | None) -> list[Checkpoint]:
        conditions = [] if collection is None else [Checkpoint.collection == collection]
        return self.page(limit, cursor, *conditions)
