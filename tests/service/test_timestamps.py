"""Every stored time reads back as an aware UTC datetime, on SQLite (which keeps no zone) and on
PostgreSQL alike, aggregates included; a naive datetime is refused instead of being stored as if
it were UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import StatementError

from backend.db import session_scope
from backend.models import Job
from tests.jobs.seed import seed_artifacts


def _job(seeded, **fields) -> Job:  # noqa: ANN001, ANN003
    return Job(owner="alice", checkpoint_id=seeded.checkpoint_id, dataset_id=seeded.dataset_id, loss="mse",
               config={}, **fields)


def test_times_read_back_aware_and_in_utc(service_settings):  # noqa: ANN001
    seeded = seed_artifacts(service_settings)
    plus_two = timezone(timedelta(hours=2))
    written = datetime(2026, 3, 1, 14, 30, tzinfo=plus_two)  # 12:30 UTC
    with session_scope(service_settings) as session:
        job = _job(seeded, queued_at=written, finished_at=written + timedelta(minutes=5))
        session.add(job)
        session.flush()
        job_id = job.id
    with session_scope(service_settings) as session:
        job = session.get(Job, job_id)
        assert job.queued_at == written and job.queued_at.tzinfo is not None
        assert job.queued_at.utcoffset() == timedelta(0) and job.queued_at.hour == 12
        latest = session.scalar(select(func.max(Job.finished_at)))
        assert latest == written + timedelta(minutes=5) and latest.tzinfo is not None
        # Comparisons in SQL use the same conversion.
        assert session.scalar(select(func.count()).where(Job.queued_at < datetime(2026, 3, 1, 13, tzinfo=UTC))) == 1


def test_a_naive_datetime_is_refused(service_settings):  # noqa: ANN001
    seeded = seed_artifacts(service_settings)
    with pytest.raises(StatementError, match="naive datetime"), session_scope(service_settings) as session:
        session.add(_job(seeded, queued_at=datetime(2026, 3, 1, 12, 30)))
        session.flush()
