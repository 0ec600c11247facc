"""The base of every repository: queries over the caller's own rows, with the owner filter written once.

A repository is bound to a session and an owner (the caller). Every query starts from
:meth:`OwnedRepository.owned` or filters with :meth:`OwnedRepository.mine`, so no query of the API
can forget the owner: another owner's rows are simply not there (the API answers 404, never 403).
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.orm import Session

from api.pagination import paginate
from backend.models import Job

RowT = TypeVar("RowT")


class OwnedRepository(Generic[RowT]):
    model: ClassVar[type]  # the table this repository is about; it has ``id`` and ``owner`` columns

    def __init__(self, session: Session, owner: str) -> None:
        self.session = session
        self.owner = owner

    def mine(self, model: type | None = None) -> ColumnElement[bool]:
        """The owner filter for ``model`` (default: this repository's table)."""
        return (model or self.model).owner == self.owner

    def owned(self, model: type | None = None) -> Select[Any]:
        """SELECT the caller's rows of ``model`` (default: this repository's table)."""
        return select(model or self.model).where(self.mine(model))

    def get(self, row_id: str) -> RowT | None:
        return self.session.scalar(self.owned().where(self.model.id == row_id))

    def first(self, *conditions: ColumnElement[bool]) -> RowT | None:
        return self.session.scalar(self.owned().where(*conditions).limit(1))

    def page(self, limit: int, cursor: str | None, *conditions: ColumnElement[bool]) -> list[RowT]:
        """Newest first, ``limit`` rows after ``cursor`` (see ``api.pagination``)."""
        return list(self.session.scalars(paginate(self.owned().where(*conditions), self.model, limit, cursor)))


class ArtifactRepository(OwnedRepository[RowT]):
    """Checkpoints and datasets: uploaded files, stored once per content, that jobs refer to."""

    job_column: ClassVar[str]  # the name of the Job column that refers to this table

    def count_jobs_using(self, row_id: str) -> int:
        refers = getattr(Job, self.job_column) == row_id
        return self.session.scalar(select(func.count()).select_from(Job).where(self.mine(Job), refers)) or 0

    def delete(self, row: RowT) -> None:
        self.session.delete(row)

    @classmethod
    def storage_key_in_use(cls, session: Session, storage_key: str) -> bool:
        """Whether any row (of any owner) still points at this content-addressed file.

        Deliberately not owner-filtered: identical content uploaded by two owners is stored once, and
        the file may only go when nobody references it. It returns a boolean and is never exposed.
        """
        return session.scalar(select(cls.model.id).where(cls.model.storage_key == storage_key).limit(1)) is not None
