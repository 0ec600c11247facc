"""Identical work is not repeated: a succeeded job with the same (checkpoint sha256, dataset sha256,
loss, config with constant defaults filled in) answers a new submission, single or in a batch, unless
``force``; never across owners. Both databases."""

from __future__ import annotations

import dataclasses

import numpy as np

from api.jobs.dedupe import CONSTANT_DEFAULTS, canonical_config
from tests.batches.conftest import FAST_CONFIG, seed_collection
from tests.batches.test_api import finish
from tests.jobs.seed import seed_artifacts


def submit(api, seeded, config=FAST_CONFIG, **extra):  # noqa: ANN001, ANN201
    response = api.post("/v1/jobs", json={"checkpoint_id": seeded.checkpoint_id, "dataset_id": seeded.dataset_id,
                                          "loss": "cross_entropy", "config": config, **extra})
    assert response.status_code == 202, response.text
    return response.json()


def test_the_constant_defaults_are_the_estimators():
    from estimator import LLCConfig

    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(LLCConfig)}
    constant = {name: value for name, value in defaults.items() if value is not None}
    assert {k: list(v) if isinstance(v, tuple) else v for k, v in constant.items()} == CONSTANT_DEFAULTS
    num_chains = defaults["num_chains"]
    assert canonical_config({}) == canonical_config({"seed": 0, "num_chains": float(num_chains),
                                                     "mala_band": tuple(defaults["mala_band"])})
    assert canonical_config({}) != canonical_config({"num_chains": num_chains + 1})
    assert canonical_config({}) != canonical_config({"seed": 1})


def test_a_succeeded_job_is_reused_unless_forced(api, seeded):  # noqa: ANN001
    first = submit(api, seeded)
    finish(api.settings, first["id"], llc=3.5)

    again = submit(api, seeded)
    assert again["id"] != first["id"] and again["status"] == "succeeded" and again["reused_from"] == first["id"]
    assert again["result"]["llc_mean"] == 3.5 and again["result"]["llc_std"] == 0.5
    ours = api.get(f"/v1/jobs/{again['id']}/traces").json()
    theirs = api.get(f"/v1/jobs/{first['id']}/traces").json()
    assert ours["llc"] == theirs["llc"] and ours["loss"] == theirs["loss"] and ours["num_draws"] == 10

    forced = submit(api, seeded, force=True)
    assert forced["status"] == "queued" and forced["reused_from"] is None

    other_seed = submit(api, seeded, config={**FAST_CONFIG, "seed": 2})
    assert other_seed["status"] == "queued" and other_seed["reused_from"] is None
    other_loss = api.post("/v1/jobs", json={"checkpoint_id": seeded.checkpoint_id, "dataset_id": seeded.dataset_id,
                                            "loss": "nll", "config": FAST_CONFIG}).json()
    assert other_loss["status"] == "queued"


def test_defaults_written_out_are_the_same_work(api, seeded):  # noqa: ANN001
    implicit = {k: v for k, v in FAST_CONFIG.items() if k != "device"}
    first = submit(api, seeded, config={k: v for k, v in implicit.items() if k != "seed"} | {"seed": 0})
    finish(api.settings, first["id"], llc=1.0)
    spelled_out = submit(api, seeded, config={**implicit, "seed": 0, "sampler": "sgld", "dtype": "float32"})
    assert spelled_out["reused_from"] == first["id"]


def test_the_same_files_uploaded_again_are_the_same_work(api, seeded):  # noqa: ANN001
    """The fingerprint is of the contents (sha256), not of the row ids."""
    first = submit(api, seeded)
    finish(api.settings, first["id"], llc=2.0)
    copy = seed_artifacts(api.settings, api.owner)  # same seed: byte-identical files, new rows
    assert copy.checkpoint_id != seeded.checkpoint_id
    again = submit(api, copy)
    assert again["reused_from"] == first["id"] and again["checkpoint_id"] == copy.checkpoint_id


def test_another_owners_identical_work_is_never_reused(api, other_api, seeded):  # noqa: ANN001
    first = submit(api, seeded)
    finish(api.settings, first["id"], llc=2.0)
    bobs = seed_artifacts(other_api.settings, other_api.owner)  # byte-identical files, bob's rows
    job = submit(other_api, bobs)
    assert job["status"] == "queued" and job["reused_from"] is None


def test_batch_items_reuse_finished_work_and_force_reruns_all(api, seeded):  # noqa: ANN001
    ids = seed_collection(api.settings, api.owner, "run-dedupe", [10, 20, 30])
    body = {"dataset_id": seeded.dataset_id, "loss": "cross_entropy", "config": FAST_CONFIG, "collection": "run-dedupe"}
    first = api.post("/v1/batches", json=body).json()
    rows = api.get(f"/v1/batches/{first['id']}/results").json()
    finish(api.settings, rows[0]["job_id"], llc=1.0)
    finish(api.settings, rows[2]["job_id"], llc=3.0)

    second = api.post("/v1/batches", json=body).json()
    assert second["counts"]["succeeded"] == 2 and second["counts"]["queued"] == 1 and second["reused"] == 2
    again = api.get(f"/v1/batches/{second['id']}/results").json()
    assert [r["reused_from"] for r in again] == [rows[0]["job_id"], None, rows[2]["job_id"]]
    assert [r["llc_mean"] for r in again] == [1.0, None, 3.0]
    assert [r["checkpoint_id"] for r in again] == ids

    forced = api.post("/v1/batches", json={**body, "force": True}).json()
    assert forced["counts"]["queued"] == 3 and forced["reused"] == 0
    assert np.isclose(api.get(f"/v1/batches/{second['id']}").json()["progress"], 2 / 3)
