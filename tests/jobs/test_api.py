"""The job API on SQLite and PostgreSQL: submit, get, list, cancel, idempotency, limits, bad input.

No job runs here (the dispatcher is off); running jobs are covered by test_runner / test_embedded /
test_distributed. Trace downloads are checked against a finished job whose rows are written by the
same code path a worker uses.
"""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from sqlalchemy import func, select

from backend import lifecycle
from backend.db import session_scope
from backend.models import Job, JobChain, TraceChunk
from tests.jobs.seed import seed_artifacts


def submit(client, seeded, headers=None, **overrides):  # noqa: ANN001, ANN201
    body = {"checkpoint_id": seeded.checkpoint_id, "dataset_id": seeded.dataset_id, "loss": "cross_entropy",
            "config": {"num_chains": 2, "num_draws": 20, "seed": 3}}
    body.update(overrides)
    return client.post("/v1/jobs", json=body, headers=headers or {})


def job_count(settings) -> int:  # noqa: ANN001
    with session_scope(settings) as session:
        return session.scalar(select(func.count()).select_from(Job))


def test_submit_then_get(api, seeded):  # noqa: ANN001
    response = submit(api, seeded)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued"
    assert job["config"] == {"num_chains": 2, "num_draws": 20, "seed": 3}
    assert job["attempts"] == 0 and job["progress"] == 0.0 and job["result"] is None
    assert job["timings"]["created_at"].endswith("Z") or "+00:00" in job["timings"]["created_at"]

    fetched = api.get(f"/v1/jobs/{job['id']}")
    assert fetched.status_code == 200
    assert fetched.json()["id"] == job["id"] and fetched.json()["status"] == "queued"
    # Nothing internal leaks (owner, storage paths).
    assert "owner" not in fetched.json() and "storage_key" not in fetched.text


def test_list_filters_and_cursor_pages_are_stable_under_inserts(api, seeded):  # noqa: ANN001
    other = seed_artifacts(api.settings, api.owner, seed=1)
    ids = [submit(api, seeded if i % 2 else other).json()["id"] for i in range(7)]
    newest_first = list(reversed(ids))

    page1 = api.get("/v1/jobs", params={"limit": 3}).json()
    assert [j["id"] for j in page1["items"]] == newest_first[:3]
    # Jobs submitted between pages do not shift the older pages.
    inserted = [submit(api, seeded).json()["id"] for _ in range(2)]
    seen = [j["id"] for j in page1["items"]]
    cursor = page1["next_cursor"]
    while cursor:
        page = api.get("/v1/jobs", params={"limit": 3, "cursor": cursor}).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
    assert seen == newest_first
    assert set(inserted).isdisjoint(seen)

    by_checkpoint = api.get("/v1/jobs", params={"checkpoint_id": seeded.checkpoint_id, "limit": 50}).json()
    assert {j["checkpoint_id"] for j in by_checkpoint["items"]} == {seeded.checkpoint_id}
    assert len(by_checkpoint["items"]) == 3 + 2

    api.post(f"/v1/jobs/{ids[0]}/cancel")
    cancelled = api.get("/v1/jobs", params={"status": "cancelled"}).json()["items"]
    assert [j["id"] for j in cancelled] == [ids[0]]
    assert len(api.get("/v1/jobs", params={"status": "queued", "limit": 200}).json()["items"]) == 8


def test_idempotency_key(api, other_api, seeded):  # noqa: ANN001
    first = submit(api, seeded, headers={"Idempotency-Key": "run-42"})
    again = submit(api, seeded, headers={"Idempotency-Key": "run-42"})
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]

    different = submit(api, seeded, headers={"Idempotency-Key": "run-42"}, config={"num_chains": 3})
    assert different.status_code == 409
    assert "run-42" in different.json()["detail"] and first.json()["id"] in different.json()["detail"]
    assert job_count(api.settings) == 1

    # Keys are per owner: bob's "run-42" is his own job.
    bobs = seed_artifacts(api.settings, other_api.owner)
    theirs = submit(other_api, bobs, headers={"Idempotency-Key": "run-42"})
    assert theirs.status_code == 202 and theirs.json()["id"] != first.json()["id"]

    too_long = submit(api, seeded, headers={"Idempotency-Key": "k" * 201})
    assert too_long.status_code == 422
    assert job_count(api.settings) == 2


def test_cancel_queued_and_running(api, seeded):  # noqa: ANN001
    queued = submit(api, seeded).json()
    response = api.post(f"/v1/jobs/{queued['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled" and response.json()["timings"]["finished_at"]
    again = api.post(f"/v1/jobs/{queued['id']}/cancel")
    assert again.status_code == 409 and "already finished (cancelled)" in again.json()["detail"]

    running = submit(api, seeded).json()
    with session_scope(api.settings) as session:
        assert lifecycle.claim(session, running["id"], "test-worker") == 1
    flagged = api.post(f"/v1/jobs/{running['id']}/cancel").json()
    # A running job stops cooperatively: until its runner notices, it is running with cancel_requested.
    assert flagged["status"] == "running" and flagged["cancel_requested"] is True
    with session_scope(api.settings) as session:
        reply = lifecycle.heartbeat(session, running["id"], 1, progress=0.5, draws_done=10)
    assert reply.still_ours and reply.cancel_requested


def test_per_owner_cap_on_unfinished_jobs(api, other_api, seeded):  # noqa: ANN001
    api.settings.max_queued_jobs_per_owner = 2
    first = submit(api, seeded).json()
    assert submit(api, seeded).status_code == 202
    refused = submit(api, seeded)
    assert refused.status_code == 429 and "limit" in refused.json()["detail"]
    # Another owner has their own allowance.
    assert submit(other_api, seed_artifacts(api.settings, other_api.owner)).status_code == 202
    api.post(f"/v1/jobs/{first['id']}/cancel")
    assert submit(api, seeded).status_code == 202


def test_pt2_checkpoint_needs_run_code_scope(api, code_api):  # noqa: ANN001
    archive = seed_artifacts(api.settings, api.owner, checkpoint_format="pt2")
    refused = submit(api, archive)
    assert refused.status_code == 403 and "run-code" in refused.json()["detail"]
    assert job_count(api.settings) == 0
    assert submit(code_api, archive).status_code == 202


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"loss": "hinge"}, "loss"),
        ({"config": {"epsilon": 0}}, "epsilon"),
        ({"config": {"epsilon": -1e-3}}, "epsilon"),
        ({"config": {"num_chains": 0}}, "num_chains"),
        ({"config": {"num_chains": 65}}, "num_chains"),
        ({"config": {"num_draws": 0}}, "num_draws"),
        ({"config": {"seed": -1}}, "seed"),
        ({"config": {"gamma": -5}}, "gamma"),
        ({"config": {"gamma": 0}}, "gamma"),
        ({"config": {"sampler": "hmc"}}, "sampler"),
        ({"config": {"device": "tpu"}}, "device"),
        ({"config": {"chain_mode": "parallel"}}, "chain_mode"),
        ({"config": {"mala_band": [0.9, 0.5]}}, "mala_band"),
        ({"config": {"num_chanes": 4}}, "num_chanes"),
        ({"config": "fast"}, "config"),
        ({"checkpoint_id": None}, "checkpoint_id"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_invalid_submissions_are_422_naming_the_field(api, seeded, change, needle):  # noqa: ANN001
    response = submit(api, seeded, **change)
    assert response.status_code == 422, response.text
    assert needle in response.text
    assert job_count(api.settings) == 0


def test_settings_dependent_bounds(api, seeded):  # noqa: ANN001
    api.settings.max_draws = 100
    too_many = submit(api, seeded, config={"num_draws": 101})
    assert too_many.status_code == 422 and "num_draws" in too_many.json()["detail"]
    batch = submit(api, seeded, config={"batch_size": seeded.n + 1})
    assert batch.status_code == 422
    assert "batch_size" in batch.json()["detail"] and f"n={seeded.n}" in batch.json()["detail"]
    assert submit(api, seeded, config={"num_draws": 100, "batch_size": seeded.n}).status_code == 202


def test_unknown_and_foreign_references(api, other_api, seeded):  # noqa: ANN001
    missing = submit(api, seeded, checkpoint_id="0" * 32)
    assert missing.status_code == 404 and "checkpoint" in missing.json()["detail"]
    missing = submit(api, seeded, dataset_id="0" * 32)
    assert missing.status_code == 404 and "dataset" in missing.json()["detail"]
    # Bob cannot use (or learn about) alice's artifacts or jobs.
    assert submit(other_api, seeded).status_code == 404
    job_id = submit(api, seeded).json()["id"]
    for method, path in [("GET", f"/v1/jobs/{job_id}"), ("POST", f"/v1/jobs/{job_id}/cancel"),
                         ("GET", f"/v1/jobs/{job_id}/traces")]:
        assert other_api.request(method, path).status_code == 404
    assert other_api.get("/v1/jobs").json()["items"] == []
    assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"


def test_bad_requests_to_every_endpoint(api, seeded):  # noqa: ANN001
    from fastapi.testclient import TestClient

    anonymous = TestClient(api.app)
    job_id = submit(api, seeded).json()["id"]
    for method, path in [("POST", "/v1/jobs"), ("GET", "/v1/jobs"), ("GET", f"/v1/jobs/{job_id}"),
                         ("POST", f"/v1/jobs/{job_id}/cancel"), ("GET", f"/v1/jobs/{job_id}/traces")]:
        assert anonymous.request(method, path).status_code == 401
        bad_key = anonymous.request(method, path, headers={"Authorization": "Bearer lh_not-a-key"})
        assert bad_key.status_code == 401 and "invalid" in bad_key.json()["detail"]

    assert api.post("/v1/jobs", content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 422
    assert api.get("/v1/jobs/nope").status_code == 404
    assert api.get("/v1/jobs/" + "x" * 65).status_code == 422
    assert api.post("/v1/jobs/nope/cancel").status_code == 404
    assert api.get("/v1/jobs/nope/traces").status_code == 404
    assert api.get("/v1/jobs", params={"status": "sleeping"}).status_code == 422
    assert api.get("/v1/jobs", params={"limit": 0}).status_code == 422
    assert api.get("/v1/jobs", params={"limit": 501}).status_code == 422
    bad_cursor = api.get("/v1/jobs", params={"cursor": "bm90IGEgY3Vyc29y"})
    assert bad_cursor.status_code == 422 and "cursor" in bad_cursor.json()["detail"]
    assert api.get(f"/v1/jobs/{job_id}/traces", params={"format": "xml"}).status_code == 422
    no_traces = api.get(f"/v1/jobs/{job_id}/traces")
    assert no_traces.status_code == 409 and "queued" in no_traces.json()["detail"]
    assert job_count(api.settings) == 1


def _finished_job(api, seeded, loss_trace, llc_trace, init_loss=0.5):  # noqa: ANN001, ANN202
    """A job finished through the worker's own write path (claim + lifecycle.finish_succeeded)."""
    from estimator.config import LLCConfig
    from estimator.result import LLCResult
    from worker.runner import result_rows

    job_id = submit(api, seeded).json()["id"]
    chains = loss_trace.shape[0]
    result = LLCResult(
        llc_mean=float(np.nanmean(llc_trace[:, -1])), llc_std=float(np.nanstd(llc_trace[:, -1])),
        llc_per_chain=llc_trace[:, -1].astype(np.float64), init_loss=init_loss, loss_trace=loss_trace,
        llc_trace=llc_trace, nbeta=10.0, n=seeded.n, config=LLCConfig(num_chains=chains), diagnostics={},
        warnings=[{"code": "low_ess", "message": "few effective samples", "chain": None}],
        timings={"total_s": 1.0}, chain_mode="vmap", chain_mode_reason="test",
    )
    with session_scope(api.settings) as session:
        attempt = lifecycle.claim(session, job_id, "test-worker")
    with session_scope(api.settings) as session:
        assert lifecycle.finish_succeeded(session, job_id, attempt, **result_rows(result))
    return job_id


def test_traces_in_three_formats(api, seeded):  # noqa: ANN001
    rng = np.random.default_rng(0)
    chains, draws = 3, 2500  # crosses the 1024-draw chunk boundary twice
    loss = (0.5 + rng.random((chains, draws))).astype(np.float32)
    llc = np.cumsum(loss, axis=1).astype(np.float32)
    loss[2, 2000:] = np.nan  # a chain that diverged: its unreached draws are NaN
    job_id = _finished_job(api, seeded, loss, llc)

    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["has_traces"] and job["result"]["warnings"][0]["code"] == "low_ess"
    with session_scope(api.settings) as session:
        assert session.scalar(select(func.count()).select_from(JobChain).where(JobChain.job_id == job_id)) == chains
        chunks = session.scalar(select(func.count()).select_from(TraceChunk).where(TraceChunk.job_id == job_id))
    assert chunks == 2 * chains * 3  # two series x chains x ceil(2500 / 1024)

    as_json = api.get(f"/v1/jobs/{job_id}/traces").json()
    assert (as_json["num_chains"], as_json["num_draws"], as_json["init_loss"]) == (chains, draws, 0.5)
    got_loss = np.array([[np.nan if v is None else v for v in row] for row in as_json["loss"]], dtype=np.float32)
    np.testing.assert_array_equal(got_loss, loss)
    np.testing.assert_array_equal(np.array(as_json["llc"], dtype=np.float32), llc)

    npz = np.load(io.BytesIO(api.get(f"/v1/jobs/{job_id}/traces", params={"format": "npz"}).content))
    np.testing.assert_array_equal(npz["loss"], loss)
    np.testing.assert_array_equal(npz["llc"], llc)
    assert float(npz["init_loss"]) == 0.5

    csv = api.get(f"/v1/jobs/{job_id}/traces", params={"format": "csv"})
    assert csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.strip().split("\n")
    assert lines[0] == "chain,draw,loss,llc" and len(lines) == 1 + chains * draws
    chain, draw, loss_value, llc_value = lines[1 + draws + 7].split(",")
    assert (int(chain), int(draw)) == (1, 7)
    assert np.float32(loss_value) == loss[1, 7] and np.float32(llc_value) == llc[1, 7]

    assert api.post(f"/v1/jobs/{job_id}/cancel").status_code == 409


def test_api_modules_do_not_import_torch():
    code = ("import sys; import api.app, backend.dispatcher, api.jobs.service, backend.celery_app, backend.reaper; "
            "from api.app import create_app; create_app(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_config_fields_are_the_estimators():
    import dataclasses

    from api.jobs.schemas import LLC_CONFIG_FIELDS
    from estimator.config import LLCConfig

    assert set(LLC_CONFIG_FIELDS) == {f.name for f in dataclasses.fields(LLCConfig)}


def test_submission_survives_an_unreachable_broker(api, seeded):  # noqa: ANN001
    # The row is committed before the enqueue; a failed enqueue is logged, and the reaper re-sends it later.
    api.settings.broker_url = "redis://127.0.0.1:1/0"  # nothing listens there
    response = submit(api, seeded)
    assert response.status_code == 202
    assert api.get(f"/v1/jobs/{response.json()['id']}").json()["status"] == "queued"


@pytest.mark.parametrize("config", [
    {"epsilon": 1e-12, "gamma": 1e-12, "nbeta": 1e-12, "num_chains": 1, "num_draws": 1, "num_burnin_steps": 0,
     "num_steps_bw_draws": 1, "batch_size": 1, "seed": 0, "device": "cuda:3", "dtype": "float64",
     "chain_mode": "sequential", "max_chains_per_chunk": 1, "target_bias": 0.49, "rhat_threshold": 1.0001,
     "min_ess": 0, "mala_band": [0, 1]},
    {"sampler": "sgnht", "num_chains": 64, "epsilon": 10, "device": "auto", "chain_mode": "vmap", "seed": 2**63 - 1},
    {},
])
def test_every_config_the_api_accepts_the_estimator_accepts(config):  # noqa: ANN001
    from api.jobs.schemas import JobCreate
    from estimator.config import LLCConfig

    body = JobCreate(checkpoint_id="c", dataset_id="d", loss="mse", config=config)
    LLCConfig.from_dict(body.config_dict())  # raises if the worker would refuse what the API let through


def test_hostile_ids_never_reach_the_database(api, seeded):  # noqa: ANN001
    # PostgreSQL refuses strings with NUL bytes: such ids must answer 404 (or an empty list), never 500.
    for path in ("/v1/jobs/a%00b", "/v1/jobs/a%00b/traces"):
        assert api.get(path).status_code == 404
    assert api.post("/v1/jobs/a%00b/cancel").status_code == 404
    assert submit(api, seeded, checkpoint_id="a\x00b").status_code == 404
    assert submit(api, seeded, dataset_id="a\x00b").status_code == 404
    listed = api.get("/v1/jobs", params={"checkpoint_id": "a\x00b"})
    assert listed.status_code == 200 and listed.json() == {"items": [], "next_cursor": None}
    assert api.get("/v1/jobs", params={"cursor": "WyIyMDI2LTAxLTAxIiwgImFcdTAwMDBiIl0"}).status_code == 422
    assert job_count(api.settings) == 0
