"""Every dataset query. Each is filtered by owner, except ``storage_key_in_use`` (see there)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.pagination import paginate
from backend.models import Dataset, Job


def get(session: Session, owner: str, dataset_id: str) -> Dataset | None:
    return session.scalar(select(Dataset).where(Dataset.owner == owner, Dataset.id == dataset_id))


def list_page(session: Session, owner: str, limit: int, cursor: str | None) -> list[Dataset]:
    query = paginate(select(Dataset).where(Dataset.owner == owner), Dataset, limit, cursor)
    return list(session.scalars(query))


def count_jobs_using(session: Session, owner: str, dataset_id: str) -> int:
    return session.scalar(
        select(func.count()).select_from(Job).where(Job.owner == owner, Job.dataset_id == dataset_id)
    ) or 0


def delete(session: Session, dataset: Dataset) -> None:
    session.delete(dataset)


def storage_key_in_use(session: Session, storage_key: str) -> bool:
    """Whether any dataset row (of any owner) still points at this content-addressed file.

    Deliberately not owner-filtered: identical content uploaded by two owners is stored once, and
    the file may only go when nobody references it. It returns a boolean and is never exposed.
    """
    return session.scalar(select(Dataset.id).where(Dataset.storage_key == storage_key).limit(1)) is not None
