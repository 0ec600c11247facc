"""The batch API on SQLite and PostgreSQL: creation by collection and by ids, ordering, counts,
results as JSON and CSV, cancellation, listing, idempotency, bad input and owner isolation.
No jobs run here (no dispatcher); job state changes are made with the lifecycle functions workers use.
"""

from __future__ import annotations

import csv
import io

from backend import lifecycle
from backend.db import session_scope
from tests.batches.conftest import FAST_CONFIG, seed_collection

STEPS = [30, 10, None, 20, 0]  # inserted out of order; results come back by step, unknown step last


def create(api, seeded, **body):  # noqa: ANN001, ANN201
    return api.post("/v1/batches", json={"dataset_id": seeded.dataset_id, "loss": "cross_entropy",
                                         "config": FAST_CONFIG, **body})


def test_batch_of_a_collection_has_one_queued_job_per_checkpoint_ordered_by_step(api, seeded):  # noqa: ANN001
    ids = seed_collection(api.settings, api.owner, "run-a", STEPS)
    seed_collection(api.settings, api.owner, "run-b", [5], seed_offset=50)  # another collection: not included

    response = create(api, seeded, collection="run-a")
    assert response.status_code == 202, response.text
    batch = response.json()
    assert batch["total"] == 5 and batch["status"] == "queued" and batch["collection"] == "run-a"
    assert batch["counts"] == {"queued": 5, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0}
    assert batch["progress"] == 0.0 and batch["finished_at"] is None

    rows = api.get(f"/v1/batches/{batch['id']}/results").json()
    assert [r["step"] for r in rows] == [0, 10, 20, 30, None]
    by_step = dict(zip(STEPS, ids, strict=True))
    assert [r["checkpoint_id"] for r in rows] == [by_step[s] for s in (0, 10, 20, 30, None)]
    assert {r["status"] for r in rows} == {"queued"} and all(r["llc_mean"] is None for r in rows)
    assert [r["name"] for r in rows] == ["step-0", "step-10", "step-20", "step-30", "step-None"]

    job = api.get(f"/v1/jobs/{rows[0]['job_id']}").json()
    assert job["batch_id"] == batch["id"] and job["config"] == FAST_CONFIG and job["status"] == "queued"


def test_batch_by_checkpoint_ids_and_results_csv(api, seeded):  # noqa: ANN001
    ids = seed_collection(api.settings, api.owner, "run-c", [300, 100, 200])
    response = create(api, seeded, checkpoint_ids=[ids[0], ids[2]])
    assert response.status_code == 202, response.text
    batch = response.json()
    assert batch["total"] == 2 and batch["collection"] is None

    # One job finishes (the way a worker writes it), one fails.
    rows = api.get(f"/v1/batches/{batch['id']}/results").json()
    assert [r["step"] for r in rows] == [200, 300]
    finish(api.settings, rows[0]["job_id"], llc=1.25)
    with session_scope(api.settings) as session:
        attempt = lifecycle.claim(session, rows[1]["job_id"], "test-worker")
        lifecycle.finish_unsuccessfully(session, rows[1]["job_id"], attempt, status="failed", error="boom")

    summary = api.get(f"/v1/batches/{batch['id']}").json()
    assert summary["counts"]["succeeded"] == 1 and summary["counts"]["failed"] == 1
    assert summary["status"] == "failed" and summary["progress"] == 1.0 and summary["finished_at"] is not None

    text = api.get(f"/v1/batches/{batch['id']}/results", params={"format": "csv"})
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(text.text)))
    assert [row["step"] for row in table] == ["200", "300"]
    assert float(table[0]["llc_mean"]) == 1.25 and float(table[0]["llc_std"]) == 0.5
    assert table[0]["warnings"] == "low_ess: few effective draws"
    assert table[1]["status"] == "failed" and table[1]["llc_mean"] == "" and table[1]["error"] == "boom"


def finish(settings, job_id: str, *, llc: float) -> None:  # noqa: ANN001
    """Claim and finish a job with a result summary and traces, as a worker does."""
    import numpy as np

    from worker.runner import encode_chunk

    with session_scope(settings) as session:
        attempt = lifecycle.claim(session, job_id, "test-worker")
        assert attempt is not None
        trace = np.linspace(0.5, 1.0, 10, dtype=np.float32)
        lifecycle.finish_succeeded(
            session, job_id, attempt,
            summary={"llc_mean": llc, "llc_std": 0.5, "llc_per_chain": [llc], "init_loss": 0.5, "nbeta": 10.0,
                     "n": 64, "diagnostics": {}, "warnings": [{"code": "low_ess", "message": "few effective draws"}]},
            resolved_config={"seed": 1}, chains=[{"chain": 0, "llc": llc, "num_draws": 10}],
            chunks=[{"chain": 0, "series": s, "start_draw": 0, "num_draws": 10, "data": encode_chunk(trace * k)}
                    for s, k in (("loss", 1.0), ("llc", llc))],
            draws_done=10)


def test_cancel_cancels_queued_jobs_and_asks_running_ones_to_stop(api, seeded):  # noqa: ANN001
    seed_collection(api.settings, api.owner, "run-d", [1, 2, 3, 4])
    batch = create(api, seeded, collection="run-d").json()
    rows = api.get(f"/v1/batches/{batch['id']}/results").json()
    finish(api.settings, rows[0]["job_id"], llc=2.0)
    with session_scope(api.settings) as session:
        assert lifecycle.claim(session, rows[1]["job_id"], "test-worker") == 1

    response = api.post(f"/v1/batches/{batch['id']}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["counts"] == {"queued": 0, "running": 1, "succeeded": 1, "failed": 0, "cancelled": 2}
    running = api.get(f"/v1/jobs/{rows[1]['job_id']}").json()
    assert running["status"] == "running" and running["cancel_requested"] is True
    assert api.get(f"/v1/jobs/{rows[0]['job_id']}").json()["status"] == "succeeded"  # finished work stays

    # The running job's runner notices and stops; then there is nothing left to cancel.
    with session_scope(api.settings) as session:
        lifecycle.finish_unsuccessfully(session, rows[1]["job_id"], 1, status="cancelled", error="cancelled")
    assert api.get(f"/v1/batches/{batch['id']}").json()["status"] == "cancelled"
    again = api.post(f"/v1/batches/{batch['id']}/cancel")
    assert again.status_code == 409 and "already finished" in again.json()["detail"]


def test_listing_filters_by_collection_and_pages_with_a_cursor(api, seeded):  # noqa: ANN001
    seed_collection(api.settings, api.owner, "run-e", [1])
    seed_collection(api.settings, api.owner, "run-f", [1], seed_offset=10)
    made = [create(api, seeded, collection=name).json()["id"] for name in ("run-e", "run-f", "run-e")]

    only_e = api.get("/v1/batches", params={"collection": "run-e"}).json()
    assert [b["id"] for b in only_e["items"]] == [made[2], made[0]] and only_e["next_cursor"] is None

    first = api.get("/v1/batches", params={"limit": 2}).json()
    assert [b["id"] for b in first["items"]] == [made[2], made[1]] and first["next_cursor"]
    second = api.get("/v1/batches", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [b["id"] for b in second["items"]] == [made[0]] and second["next_cursor"] is None


def test_idempotency_key_replays_the_same_batch_and_refuses_a_different_request(api, seeded):  # noqa: ANN001
    seed_collection(api.settings, api.owner, "run-g", [1, 2])
    headers = {"Idempotency-Key": "batch-key-1"}
    first = api.post("/v1/batches", headers=headers, json={"dataset_id": seeded.dataset_id, "loss": "cross_entropy",
                                                          "config": FAST_CONFIG, "collection": "run-g"})
    again = api.post("/v1/batches", headers=headers, json={"dataset_id": seeded.dataset_id, "loss": "cross_entropy",
                                                          "config": FAST_CONFIG, "collection": "run-g"})
    assert first.status_code == 202 and again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert api.get("/v1/jobs").json()["items"].__len__() == 2  # no second set of jobs
    different = api.post("/v1/batches", headers=headers, json={"dataset_id": seeded.dataset_id, "loss": "mse",
                                                              "config": FAST_CONFIG, "collection": "run-g"})
    assert different.status_code == 409 and "batch-key-1" in different.json()["detail"]


def test_bad_input_is_refused_with_a_message_naming_the_problem(api, seeded):  # noqa: ANN001
    ids = seed_collection(api.settings, api.owner, "run-h", [1, 2])
    missing = "0" * 32
    cases = [
        ({"collection": "run-h", "checkpoint_ids": ids}, 422, "exactly one"),
        ({}, 422, "exactly one"),
        ({"collection": "no-such-run"}, 422, "collection 'no-such-run' has no checkpoints"),
        ({"checkpoint_ids": []}, 422, "checkpoint_ids"),
        ({"checkpoint_ids": [ids[0], ids[0]]}, 422, "more than once"),
        ({"checkpoint_ids": [ids[0], missing]}, 404, missing),
        ({"checkpoint_ids": ["../etc"]}, 404, "../etc"),
        ({"collection": "run-h", "config": {"num_draw": 3}}, 422, "num_draw"),
        ({"collection": "run-h", "config": {"batch_size": 65}}, 422, "batch_size=65"),
        ({"collection": "run-h", "loss": "hinge"}, 422, "loss"),
        ({"collection": "run-h", "dataset_id": missing}, 404, f"dataset '{missing}' not found"),
        ({"collection": "run-h", "extra": 1}, 422, "extra"),
    ]
    for body, code, text in cases:
        response = create(api, seeded, **body)
        assert response.status_code == code, (body, response.text)
        assert text in response.text, (body, response.text)
    assert api.get("/v1/batches").json()["items"] == []  # nothing half-created
    assert api.get("/v1/jobs").json()["items"] == []

    for method, path in [("GET", f"/v1/batches/{missing}"), ("GET", f"/v1/batches/{missing}/results"),
                         ("POST", f"/v1/batches/{missing}/cancel"), ("GET", f"/v1/batches/{missing}/plot.png"),
                         ("GET", "/v1/batches/not-an-id")]:
        response = api.request(method, path)
        assert response.status_code == 404 and "not found" in response.json()["detail"], (path, response.text)
    batch = create(api, seeded, collection="run-h").json()
    bad_format = api.get(f"/v1/batches/{batch['id']}/results", params={"format": "xml"})
    assert bad_format.status_code == 422
    assert api.get("/v1/batches", params={"cursor": "garbage"}).status_code == 422
    assert api.get("/v1/batches", params={"limit": 0}).status_code == 422


def test_too_many_jobs_for_the_owner_cap_is_refused_whole(api, seeded):  # noqa: ANN001
    api.settings.max_queued_jobs_per_owner = 3
    seed_collection(api.settings, api.owner, "run-i", [1, 2, 3, 4])
    response = create(api, seeded, collection="run-i")
    assert response.status_code == 429 and "4 new jobs" in response.json()["detail"]
    assert api.get("/v1/jobs").json()["items"] == []


def test_another_owners_batches_and_checkpoints_are_invisible(api, other_api, seeded):  # noqa: ANN001
    ids = seed_collection(api.settings, api.owner, "run-j", [1, 2])
    batch = create(api, seeded, collection="run-j").json()
    for method, path in [("GET", f"/v1/batches/{batch['id']}"), ("GET", f"/v1/batches/{batch['id']}/results"),
                         ("POST", f"/v1/batches/{batch['id']}/cancel"), ("GET", f"/v1/batches/{batch['id']}/plot.png"),
                         ("GET", f"/v1/plots/llc.png?batch_id={batch['id']}")]:
        response = other_api.request(method, path)
        assert response.status_code == 404, (path, response.text)
    assert other_api.get("/v1/batches").json()["items"] == []
    assert other_api.get("/v1/batches", params={"collection": "run-j"}).json()["items"] == []
    # bob cannot batch alice's collection or checkpoints, nor use her dataset
    bobs = {"dataset_id": seeded.dataset_id, "loss": "cross_entropy", "config": FAST_CONFIG}
    assert other_api.post("/v1/batches", json={**bobs, "collection": "run-j"}).status_code == 404  # the dataset
    bob_data = __import__("tests.jobs.seed", fromlist=["seed_artifacts"]).seed_artifacts(
        other_api.settings, other_api.owner)
    mine = {**bobs, "dataset_id": bob_data.dataset_id}
    response = other_api.post("/v1/batches", json={**mine, "collection": "run-j"})
    assert response.status_code == 422 and "run-j" in response.json()["detail"]
    assert other_api.post("/v1/batches", json={**mine, "checkpoint_ids": ids}).status_code == 404
    assert api.post(f"/v1/batches/{batch['id']}/cancel").status_code == 200  # still alice's to cancel
