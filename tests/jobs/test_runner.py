"""The job runner in this process: what it stores equals what the library computes (on SQLite and
PostgreSQL). Its other behaviour (errors, cancel, time limit) is in test_runner_behaviour.py."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from backend.db import session_scope
from backend.models import JobChain
from worker.runner import run_job

# Small and explicit: no automatic tuning, a few hundred steps.
CONFIG = {"num_chains": 2, "num_draws": 40, "num_burnin_steps": 20, "epsilon": 1e-3, "gamma": 100.0,
          "batch_size": 32, "seed": 7, "device": "cpu"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def submit(api, seeded, config=None, loss="cross_entropy") -> str:  # noqa: ANN001
    body = {"checkpoint_id": seeded.checkpoint_id, "dataset_id": seeded.dataset_id, "loss": loss,
            "config": config or CONFIG}
    response = api.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def library_estimate(seeded, config, loss="cross_entropy"):  # noqa: ANN001, ANN201
    from estimator import LLCConfig, estimate_llc
    from worker.loading import load_dataset, load_model

    model = load_model(seeded.checkpoint_path, "safetensors", seeded.architecture)
    x, y = load_dataset(seeded.dataset_path, "safetensors")
    return estimate_llc(model, (x, y), loss=loss, config=LLCConfig(**config))


def test_runner_stores_exactly_what_the_library_computes(api, seeded):  # noqa: ANN001
    job_id = submit(api, seeded)
    outcome = run_job(job_id, settings=api.settings, worker_name="unit-worker")
    assert outcome.status == "succeeded", outcome

    job = api.get(f"/v1/jobs/{job_id}").json()
    assert (job["status"], job["attempts"], job["worker"], job["progress"]) == ("succeeded", 1, "unit-worker", 1.0)
    assert job["draws_done"] == CONFIG["num_draws"] and job["error"] is None
    assert job["resolved_config"]["epsilon"] == CONFIG["epsilon"] and job["resolved_config"]["nbeta"] > 0
    assert job["timings"]["duration_s"] > 0

    expected = library_estimate(seeded, CONFIG)
    result = job["result"]
    assert result["llc_mean"] == expected.llc_mean and result["llc_std"] == expected.llc_std
    assert result["llc_per_chain"] == expected.llc_per_chain.tolist()
    assert result["init_loss"] == expected.init_loss and result["nbeta"] == expected.nbeta
    traces = api.get(f"/v1/jobs/{job_id}/traces").json()
    np.testing.assert_array_equal(np.array(traces["loss"], dtype=np.float32), expected.loss_trace.astype(np.float32))
    np.testing.assert_array_equal(np.array(traces["llc"], dtype=np.float32), expected.llc_trace.astype(np.float32))
    with session_scope(api.settings) as session:
        chains = session.scalars(select(JobChain).where(JobChain.job_id == job_id).order_by(JobChain.chain)).all()
        assert [c.chain for c in chains] == [0, 1] and all(c.num_draws == CONFIG["num_draws"] for c in chains)
        assert chains[0].llc == pytest.approx(expected.llc_per_chain[0])

    # A second delivery of the same job does nothing.
    assert run_job(job_id, settings=api.settings, worker_name="other").status == "skipped"
    assert api.get(f"/v1/jobs/{job_id}").json()["attempts"] == 1


def test_stored_chain_rows_mark_the_chains_that_diverged():
    """The per-chain rows a job stores say which chains diverged (the estimator's list) and carry each
    chain's warnings; healthy chains keep their λ̂."""
    import torch

    from estimator import estimate_llc
    from tests.estimator.test_api import CLIFF_CONFIG, _Cliff
    from worker.runner import result_rows

    result = estimate_llc(_Cliff(), (torch.zeros(100, 1), torch.zeros(100, 1)), loss=lambda out, t: out.mean(),
                          config=CLIFF_CONFIG)
    diverged = set(result.diagnostics["diverged_chains"])
    assert 0 < len(diverged) < CLIFF_CONFIG.num_chains
    chains = result_rows(result)["chains"]
    assert {row["chain"] for row in chains if row["diverged"]} == diverged
    for row in chains:
        if row["diverged"]:
            assert row["llc"] is None and "diverg" in row["message"]
        else:
            assert row["llc"] == float(result.llc_per_chain[row["chain"]])
