"""``/metrics``: Prometheus text format whose numbers are the database's, on SQLite and PostgreSQL,
after synthetic rows with known timings and after real jobs; and the same answer from two separate
API processes (with per-request counters summed across them in multiprocess mode)."""

from __future__ import annotations

import json
import math
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from backend.cluster import DURATION_BUCKETS
from backend.db import session_scope
from backend.models import Checkpoint, Dataset, Job
from tests.helpers import api, make_api, service_settings  # noqa: F401 - fixtures
from tests.jobs.seed import seed_artifacts

Samples = dict[tuple[str, frozenset], float]


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, keyed by (name, labels)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def value_or_zero(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(client, **headers: str) -> Samples:  # noqa: ANN001
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


# -- synthetic rows with known timings ----------------------------------------------------------------------

# (status, run seconds or None if it never started, worker, steps/s reported)
FINISHED = [
    ("succeeded", 0.5, "gpu0", 100.0), ("succeeded", 3.25, "gpu0", 120.0), ("succeeded", 10.0, "gpu1", 55.5),
    ("succeeded", 45.0, "gpu1", 60.0), ("succeeded", 4000.0, "gpu0", 130.0), ("failed", 2.0, "gpu1", None),
    ("failed", 700.0, "gpu0", None), ("cancelled", None, None, None), ("cancelled", 30.0, "gpu1", None),
]


def insert_jobs(settings, owner: str = "alice") -> dict[str, object]:  # noqa: ANN001
    """Jobs in every state with chosen timings; returns what /metrics must report."""
    now = datetime.now(UTC).replace(microsecond=0)
    seeded = seed_artifacts(settings, owner)
    base = dict(owner=owner, checkpoint_id=seeded.checkpoint_id, dataset_id=seeded.dataset_id, loss="mse", config={})
    rows = []
    finished_at = now - timedelta(minutes=30)
    for index, (status, seconds, worker, speed) in enumerate(FINISHED):
        finished_at += timedelta(seconds=10)  # later rows finish later: the "latest job per worker" is the last one
        result = {"timings": {"steps_per_s": speed, "chain_steps_per_s": speed * 4}} if speed else None
        rows.append(Job(**base, status=status, worker=worker, result=result,
                        started_at=finished_at - timedelta(seconds=seconds) if seconds is not None else None,
                        finished_at=finished_at, heartbeat_at=finished_at if worker else None,
                        queued_at=now - timedelta(hours=1), created_at=now - timedelta(hours=1) + timedelta(seconds=index)))
    for age in (120, 30):
        rows.append(Job(**base, status="queued", queued_at=now - timedelta(seconds=age)))
    rows.append(Job(**base, status="running", worker="gpu0", attempts=1, progress=0.25, started_at=now,
                    heartbeat_at=now - timedelta(seconds=1)))
    rows.append(Job(**base, status="running", worker="gpu2", attempts=1, started_at=now - timedelta(hours=1),
                    heartbeat_at=now - timedelta(seconds=600)))  # stale: its worker died
    with session_scope(settings) as session:
        session.add_all(rows)
    return {"seeded": seeded}


def expected_from_database(settings) -> dict[str, object]:  # noqa: ANN001
    """The numbers, computed in Python from the rows as stored (independently of the SQL in the collector)."""
    with session_scope(settings) as session:
        jobs = session.scalars(select(Job)).all()
        sizes = {kind: [r.size_bytes for r in session.scalars(select(table))] for kind, table in
                 (("checkpoints", Checkpoint), ("datasets", Dataset))}
        distinct = {kind: sum({r.sha256: r.size_bytes for r in session.scalars(select(table))}.values())
                    for kind, table in (("checkpoints", Checkpoint), ("datasets", Dataset))}
        counts: dict[str, int] = {}
        durations: dict[str, list[float]] = {"succeeded": [], "failed": [], "cancelled": []}
        heartbeats: dict[str, float] = {}
        latest: dict[str, Job] = {}
        for job in jobs:
            counts[job.status] = counts.get(job.status, 0) + 1
            if job.status in durations and job.started_at is not None:
                durations[job.status].append((job.finished_at - job.started_at).total_seconds())
            if job.worker and job.heartbeat_at is not None:
                heartbeats[job.worker] = max(heartbeats.get(job.worker, 0.0), job.heartbeat_at.timestamp())
            if job.status == "succeeded" and job.worker and (
                    job.worker not in latest or job.finished_at > latest[job.worker].finished_at):
                latest[job.worker] = job
        queued = [j.queued_at for j in jobs if j.status == "queued"]
        speeds = {w: j.result["timings"]["steps_per_s"] for w, j in latest.items()}
        stale = sum(1 for j in jobs if j.status == "running" and j.heartbeat_at < datetime.now(UTC) - timedelta(
            seconds=settings.heartbeat_timeout))
    return dict(counts=counts, durations=durations, heartbeats=heartbeats, speeds=speeds, queued=queued,
                sizes=sizes, distinct=distinct, stale=stale)


def assert_metrics_match(samples: Samples, expected: dict[str, object]) -> None:
    for status in ("queued", "running", "succeeded", "failed", "cancelled"):
        assert value(samples, "lambdahat_jobs", status=status) == expected["counts"].get(status, 0), status
    assert value(samples, "lambdahat_queue_depth") == len(expected["queued"])
    if expected["queued"]:
        oldest = (datetime.now(UTC) - min(expected["queued"])).total_seconds()
        assert value(samples, "lambdahat_queue_oldest_age_seconds") == pytest.approx(oldest, abs=10)
    assert value(samples, "lambdahat_jobs_stale") == expected["stale"]
    for status, durations in expected["durations"].items():
        for bound in DURATION_BUCKETS:
            le = f"{bound:.1f}"
            assert value(samples, "lambdahat_job_duration_seconds_bucket", status=status, le=le) == \
                sum(1 for d in durations if d <= bound), (status, le)
        assert value(samples, "lambdahat_job_duration_seconds_bucket", status=status, le="+Inf") == len(durations)
        assert value(samples, "lambdahat_job_duration_seconds_count", status=status) == len(durations)
        assert value(samples, "lambdahat_job_duration_seconds_sum", status=status) == pytest.approx(sum(durations), abs=0.01)
    for worker, speed in expected["speeds"].items():
        assert value(samples, "lambdahat_sgld_steps_per_second", worker=worker) == pytest.approx(speed)
    assert {dict(k[1])["worker"] for k in samples if k[0] == "lambdahat_sgld_steps_per_second"} == set(expected["speeds"])
    for worker, beat in expected["heartbeats"].items():
        assert value(samples, "lambdahat_worker_last_heartbeat_seconds", worker=worker) == pytest.approx(beat, abs=0.01)
    for kind, sizes in expected["sizes"].items():
        assert value(samples, "lambdahat_uploads", kind=kind) == len(sizes)
        assert value(samples, "lambdahat_upload_bytes", kind=kind) == sum(sizes)
        assert value(samples, "lambdahat_stored_bytes", kind=kind) == expected["distinct"][kind]
    assert value(samples, "lambdahat_database_up") == 1


def test_metrics_match_the_database_for_known_timings(api) -> None:  # noqa: ANN001, F811
    insert_jobs(api.settings)
    # A second upload of the same content (dedupe) and another owner's artifacts: counted, owner not exposed.
    seed_artifacts(api.settings, "alice")
    seed_artifacts(api.settings, "bob", seed=1)
    expected = expected_from_database(api.settings)
    # The synthetic timings themselves, so the comparison is not vacuous.
    assert sorted(expected["durations"]["succeeded"]) == pytest.approx([0.5, 3.25, 10.0, 45.0, 4000.0])
    assert expected["speeds"] == {"gpu0": 130.0, "gpu1": 60.0} and expected["stale"] == 1

    samples = scrape(api)
    assert_metrics_match(samples, expected)
    assert value(samples, "lambdahat_job_duration_seconds_bucket", status="succeeded", le="5.0") == 2
    assert value(samples, "lambdahat_sgld_chain_steps_per_second", worker="gpu1") == pytest.approx(240.0)
    assert value(samples, "lambdahat_info", version="0.1.0", mode="embedded") == 1
    assert value(samples, "lambdahat_workers_alive") == 1  # gpu0's running job beat a second ago
    assert ("lambdahat_broker_up", frozenset()) not in samples  # embedded: no broker
    assert all("alice" not in str(labels) and "bob" not in str(labels) for _, labels in samples)


def test_metrics_after_real_jobs(api) -> None:  # noqa: ANN001, F811
    """Tiny jobs through the real runner: succeeded, failed (wrong loss) and cancelled while queued."""
    import torch

    from worker.runner import run_job

    seeded = seed_artifacts(api.settings, "alice")
    config = {"num_chains": 2, "num_draws": 30, "num_burnin_steps": 10, "epsilon": 1e-3, "gamma": 100.0,
              "batch_size": 32, "seed": 1, "device": "cpu"}

    def submit(loss: str = "cross_entropy") -> str:
        response = api.post("/v1/jobs", json={"checkpoint_id": seeded.checkpoint_id, "dataset_id": seeded.dataset_id,
                                              "loss": loss, "config": config})
        assert response.status_code == 202, response.text
        return response.json()["id"]

    before = scrape(api)
    assert value(before, "lambdahat_queue_depth") == 0
    ok = [submit(), submit()]
    broken = submit(loss="bce_with_logits")
    cancelled = submit()
    assert value(scrape(api), "lambdahat_queue_depth") == 4
    assert api.post(f"/v1/jobs/{cancelled}/cancel").json()["status"] == "cancelled"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert [run_job(j, settings=api.settings, worker_name="metrics-worker").status for j in ok] == ["succeeded"] * 2
        assert run_job(broken, settings=api.settings, worker_name="metrics-worker").status == "failed"
    finally:
        torch.set_num_threads(threads)

    samples = scrape(api)
    expected = expected_from_database(api.settings)
    assert expected["counts"] == {"succeeded": 2, "failed": 1, "cancelled": 1}
    assert_metrics_match(samples, expected)
    assert value(samples, "lambdahat_job_duration_seconds_count", status="cancelled") == 0  # never started
    speed = value(samples, "lambdahat_sgld_steps_per_second", worker="metrics-worker")
    latest = api.get(f"/v1/jobs/{ok[1]}").json()["result"]["timings"]
    assert speed == pytest.approx(latest["steps_per_s"]) and speed > 0
    assert value(samples, "lambdahat_sgld_chain_steps_per_second", worker="metrics-worker") == \
        pytest.approx(latest["chain_steps_per_s"])
    # The request counters of this process (shared by every app in it) saw the four submissions.
    submissions = {"method": "POST", "route": "/v1/jobs", "status": "202"}
    assert value(samples, "lambdahat_http_requests_total", **submissions) - \
        value_or_zero(before, "lambdahat_http_requests_total", **submissions) == 4


def test_metrics_token(make_api) -> None:  # noqa: ANN001, F811
    client = make_api("alice")
    client.app.state.settings.metrics_token = "scrape-secret-123"
    try:
        assert client.get("/metrics", headers={"Authorization": ""}).status_code == 401
        assert client.get("/metrics").status_code == 401  # an API key is not the metrics token
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert "lambdahat_jobs" in client.get("/metrics", headers={"Authorization": "Bearer scrape-secret-123"}).text
    finally:
        client.app.state.settings.metrics_token = None
    assert client.get("/metrics", headers={"Authorization": ""}).status_code == 200


def test_metrics_answer_while_the_database_is_down(tmp_path) -> None:  # noqa: ANN001
    from fastapi.testclient import TestClient

    from api.app import create_app
    from backend.settings import Settings

    settings = Settings(data_dir=tmp_path, database_url="postgresql+psycopg://postgres@127.0.0.1:1/nothing")
    with TestClient(create_app(settings, run_dispatcher=False)) as client:
        samples = scrape(client)
    assert value(samples, "lambdahat_database_up") == 0
    assert ("lambdahat_jobs", frozenset({("status", "queued")})) not in samples


def test_request_route_labels_are_templates(api) -> None:  # noqa: ANN001, F811
    job_404 = ("lambdahat_http_requests_total", {"method": "GET", "route": "/v1/jobs/{job_id}", "status": "404"})
    unmatched = ("lambdahat_http_requests_total", {"method": "GET", "route": "unmatched", "status": "404"})
    latency = ("lambdahat_http_request_duration_seconds_count", {"method": "GET", "route": "/v1/jobs/{job_id}"})
    before = scrape(api)
    for _ in range(3):
        api.get(f"/v1/jobs/{uuid.uuid4().hex}")
    api.get("/no/such/path/" + uuid.uuid4().hex)
    after = scrape(api)
    for (name, labels), increase in ((job_404, 3), (unmatched, 1), (latency, 3)):
        assert value(after, name, **labels) - value_or_zero(before, name, **labels) == increase, name
    assert not any("/no/such/path" in str(labels) for _, labels in after)  # raw paths never become labels


# -- two separate API processes -----------------------------------------------------------------------------------

TIME_DEPENDENT = {"lambdahat_metrics_collect_seconds", "lambdahat_queue_oldest_age_seconds"}


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_two_api_processes_report_the_same_cluster_and_sum_request_counters(tmp_path, postgres_url) -> None:  # noqa: ANN001
    from backend.settings import Settings
    from backend.workers import WorkerRegistryThread, registry_key
    from tests.helpers import create_key, migrate
    from tests.jobs.processes import Server, base_env

    broker_url = "redis://127.0.0.1:6379/13"
    queue = f"lh-ops-{uuid.uuid4().hex[:10]}"
    multiproc_dir = tmp_path / "prometheus"
    multiproc_dir.mkdir()
    settings = Settings(data_dir=tmp_path / "seed", database_url=postgres_url)
    migrate(settings)
    insert_jobs(settings)
    # An idle worker seen only through the broker's registry (one beat, thread not started: a static entry),
    # and one that stopped cleanly (left out of the per-worker series).
    registry = WorkerRegistryThread(broker_url, "idle-gpu", queues=[queue, "idle-gpu"], device="cuda", interval=60,
                                    key=registry_key(queue))
    registry.beat()
    retired = WorkerRegistryThread(broker_url, "retired-gpu", queues=[queue], device="cuda", interval=60,
                                   key=registry_key(queue))
    retired.beat(stopped=True)
    servers = []
    try:
        for name in ("a", "b"):
            env = base_env(tmp_path / f"data-{name}", database_url=postgres_url, broker_url=broker_url, queue=queue,
                           log_format="json")
            env["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc_dir)
            servers.append(Server(tmp_path / f"data-{name}", env, tmp_path / f"server-{name}.log"))
        a, b = servers
        # Each server keeps one local key per database (b's start revoked a's): use an explicit key on both.
        key = create_key(settings, "ops-test", owner="ops")
        for server in servers:
            server.client.headers["Authorization"] = f"Bearer {key}"
        for _ in range(3):
            a.client.get(f"/v1/jobs/{uuid.uuid4().hex}")
        for _ in range(2):
            b.client.get(f"/v1/jobs/{uuid.uuid4().hex}")

        samples_a, samples_b = parse(a.client.get("/metrics").text), parse(b.client.get("/metrics").text)
        cluster_a = {k: v for k, v in samples_a.items() if k[0] not in TIME_DEPENDENT and "_http_" not in k[0]}
        cluster_b = {k: v for k, v in samples_b.items() if k[0] not in TIME_DEPENDENT and "_http_" not in k[0]}
        assert cluster_a == cluster_b
        assert value(samples_a, "lambdahat_queue_oldest_age_seconds") == pytest.approx(
            value(samples_b, "lambdahat_queue_oldest_age_seconds"), abs=5)
        assert_metrics_match(samples_a, expected_from_database(settings))
        assert value(samples_a, "lambdahat_worker_last_heartbeat_seconds", worker="idle-gpu") == \
            pytest.approx(registry.entry["started_at"], abs=60)
        assert value(samples_a, "lambdahat_worker_up", worker="idle-gpu") == 1
        assert value(samples_a, "lambdahat_worker_up", worker="gpu2") == 0  # its job's heartbeat is 10 min old
        assert not any(dict(labels).get("worker") == "retired-gpu" for _, labels in samples_a)
        assert value(samples_a, "lambdahat_broker_up") == 1
        assert value(samples_a, "lambdahat_info", version="0.1.0", mode="distributed") == 1
        # Request counters: per-process files in PROMETHEUS_MULTIPROC_DIR, summed by whichever process answers.
        for samples in (samples_a, samples_b):
            assert value(samples, "lambdahat_http_requests_total", method="GET", route="/v1/jobs/{job_id}",
                         status="404") == 5

        # Both servers logged JSON only: one object per line, with the documented fields.
        for server in servers:
            lines = [line for line in Path(server.log_path).read_text().splitlines() if line.strip()]
            records = [json.loads(line) for line in lines]
            assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
            access = [r for r in records if r["logger"] == "uvicorn.access" and r.get("path", "").startswith("/v1/jobs/")]
            assert access and all(r["status"] == 404 and r["method"] == "GET" for r in access)
            assert any(r["logger"] == "lambdahat.server" and "distributed" in r["message"] for r in records)
    finally:
        for server in servers:
            server.stop()
        import redis

        redis.Redis.from_url(broker_url).delete(registry_key(queue))


def test_heartbeat_samples_are_unix_times(api) -> None:  # noqa: ANN001, F811
    insert_jobs(api.settings)
    samples = scrape(api)
    beats = [v for (name, _), v in samples.items() if name == "lambdahat_worker_last_heartbeat_seconds"]
    assert beats and all(abs(v - time.time()) < 3 * 3600 for v in beats) and all(math.isfinite(v) for v in beats)
