"""Job state transitions and the reaper, on SQLite and PostgreSQL, with real concurrent threads."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import update

from backend import lifecycle
from backend.db import session_scope
from backend.models import Job, utcnow
from backend.reaper import reap_once


def new_job(settings, seeded) -> str:  # noqa: ANN001
    with session_scope(settings) as session:
        job = Job(owner="alice", checkpoint_id=seeded.checkpoint_id, dataset_id=seeded.dataset_id,
                  loss="cross_entropy", config={})
        session.add(job)
        session.flush()
        return job.id


def get(settings, job_id) -> Job:  # noqa: ANN001
    with session_scope(settings) as session:
        return session.get(Job, job_id)


def age_heartbeat(settings, job_id, seconds) -> None:  # noqa: ANN001
    with session_scope(settings) as session:
        session.execute(update(Job).where(Job.id == job_id)
                        .values(heartbeat_at=utcnow() - timedelta(seconds=seconds)))


def claim(settings, job_id, worker="w1"):  # noqa: ANN001, ANN201
    with session_scope(settings) as session:
        return lifecycle.claim(session, job_id, worker)


def test_a_job_is_claimed_once_even_by_concurrent_deliveries(api, seeded):  # noqa: ANN001
    settings = api.settings
    job_ids = [new_job(settings, seeded) for _ in range(6)]
    wins: list[tuple[str, str]] = []
    barrier = threading.Barrier(3)

    def deliver(worker: str) -> None:
        barrier.wait()
        for job_id in job_ids:
            if claim(settings, job_id, worker) is not None:
                wins.append((job_id, worker))

    threads = [threading.Thread(target=deliver, args=(f"w{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(j for j, _ in wins) == sorted(job_ids)  # each job claimed exactly once
    for job_id, worker in wins:
        job = get(settings, job_id)
        assert (job.status, job.attempts, job.worker) == ("running", 1, worker)
        assert job.started_at is not None and job.heartbeat_at is not None


def test_a_given_up_attempt_cannot_write(api, seeded):  # noqa: ANN001
    settings = api.settings
    job_id = new_job(settings, seeded)
    first = claim(settings, job_id, "w1")
    age_heartbeat(settings, job_id, 3600)
    report = reap_once(settings, enqueue=lambda ids: None)
    assert report.requeued == [job_id]
    second = claim(settings, job_id, "w2")
    assert (first, second) == (1, 2)
    with session_scope(settings) as session:
        assert not lifecycle.heartbeat(session, job_id, first, progress=0.9, draws_done=5).still_ours
        assert not lifecycle.finish_unsuccessfully(session, job_id, first, status="failed", error="late")
    with session_scope(settings) as session:
        assert not lifecycle.finish_succeeded(session, job_id, first, summary={"llc_mean": 1.0}, resolved_config=None,
                                              chains=[], chunks=[], draws_done=1)
    job = get(settings, job_id)
    assert (job.status, job.attempts, job.worker, job.result) == ("running", 2, "w2", None)


def test_reaper_requeues_then_fails_after_max_attempts(api, seeded):  # noqa: ANN001
    settings = api.settings
    settings.max_attempts = 2
    job_id = new_job(settings, seeded)
    enqueued: list[str] = []

    claim(settings, job_id, "w1")
    assert reap_once(settings, enqueue=enqueued.extend).requeued == []  # fresh heartbeat: left alone
    age_heartbeat(settings, job_id, settings.heartbeat_timeout + 5)
    assert reap_once(settings, enqueue=enqueued.extend).requeued == [job_id]
    job = get(settings, job_id)
    assert (job.status, job.attempts, job.worker) == ("queued", 1, None)
    assert "attempt 1 was lost" in job.error and "w1" in job.error
    assert enqueued == [job_id]

    claim(settings, job_id, "w2")
    age_heartbeat(settings, job_id, settings.heartbeat_timeout + 5)
    report = reap_once(settings, enqueue=enqueued.extend)
    assert report.failed == [job_id] and enqueued == [job_id]
    job = get(settings, job_id)
    assert job.status == "failed" and job.attempts == 2 and job.finished_at is not None
    assert "died 2 times" in job.error and "w2" in job.error and "last seen" in job.error


def test_reaper_cancels_a_lost_job_whose_cancel_was_requested(api, seeded):  # noqa: ANN001
    settings = api.settings
    job_id = new_job(settings, seeded)
    claim(settings, job_id)
    api.post(f"/v1/jobs/{job_id}/cancel")
    age_heartbeat(settings, job_id, settings.heartbeat_timeout + 5)
    assert reap_once(settings, enqueue=lambda ids: None).cancelled == [job_id]
    assert get(settings, job_id).status == "cancelled"


def test_concurrent_reapers_release_a_job_once(api, seeded):  # noqa: ANN001
    settings = api.settings
    job_ids = [new_job(settings, seeded) for _ in range(4)]
    for job_id in job_ids:
        claim(settings, job_id)
        age_heartbeat(settings, job_id, settings.heartbeat_timeout + 5)
    enqueued: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def reaper() -> None:
        barrier.wait()

        def collect(ids):  # noqa: ANN001, ANN202
            with lock:
                enqueued.extend(ids)

        reap_once(settings, enqueue=collect)

    threads = [threading.Thread(target=reaper) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(enqueued) == sorted(job_ids)
    assert all(get(settings, j).status == "queued" and get(settings, j).attempts == 1 for j in job_ids)


def test_reaper_reenqueues_queued_jobs_missing_from_the_broker(api, seeded):  # noqa: ANN001
    settings = api.settings.model_copy(update={"broker_url": "redis://127.0.0.1:6379/15"})
    waiting, in_broker, fresh = (new_job(settings, seeded) for _ in range(3))
    with session_scope(settings) as session:
        session.execute(update(Job).where(Job.id.in_([waiting, in_broker]))
                        .values(queued_at=utcnow() - timedelta(minutes=5)))
    enqueued: list[str] = []
    report = reap_once(settings, enqueue=enqueued.extend, broker_job_ids=lambda: {in_broker})
    # Only the old job whose message is gone; the fresh one may still be on its way to the broker.
    assert report.reenqueued == [waiting] and enqueued == [waiting]
    assert reap_once(settings, enqueue=enqueued.extend, broker_job_ids=lambda: set()).reenqueued == [in_broker]
    # Broker not inspectable: only jobs waiting longer than the long fallback interval are re-sent.
    assert reap_once(settings, enqueue=enqueued.extend, broker_job_ids=lambda: None).reenqueued == []
    assert enqueued == [waiting, in_broker]
