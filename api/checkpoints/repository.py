"""Every checkpoint query. Each is filtered by owner, except ``storage_key_in_use`` (see there)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.pagination import paginate
from backend.models import Checkpoint, Job


def get(session: Session, owner: str, checkpoint_id: str) -> Checkpoint | None:
    return session.scalar(select(Checkpoint).where(Checkpoint.owner == owner, Checkpoint.id == checkpoint_id))


def list_page(session: Session, owner: str, limit: int, cursor: str | None, collection: str | None = None) -> list[Checkpoint]:
    query = select(Checkpoint).where(Checkpoint.owner == owner)
    if collection is not None:
        query = query.where(Checkpoint.collection == collection)
    return list(session.scalars(paginate(query, Checkpoint, limit, cursor)))


def count_jobs_using(session: Session, owner: str, checkpoint_id: str) -> int:
    return session.scalar(
        select(func.count()).select_from(Job).where(Job.owner == owner, Job.checkpoint_id == checkpoint_id)
    ) or 0


def delete(session: Session, checkpoint: Checkpoint) -> None:
    session.delete(checkpoint)


def storage_key_in_use(session: Session, storage_key: str) -> bool:
    """Whether any checkpoint row (of any owner) still points at this content-addressed file.

    Deliberately not owner-filtered: identical content uploaded by two owners is stored once, and
    the file may only go when nobody references it. It returns a boolean and is never exposed.
    """
    return session.scalar(select(Checkpoint.id).where(Checkpoint.storage_key == storage_key).limit(1)) is not None
