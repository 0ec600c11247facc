"""``Client`` and ``AsyncClient`` against a live embedded server over real HTTP."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
import torch
from torch import nn

from lambdahat import (
    AsyncClient,
    Checkpoint,
    Client,
    Conflict,
    ConnectionFailed,
    Dataset,
    Job,
    NotFound,
    Unauthorized,
    ValidationFailed,
    WaitTimeout,
)
from tests.client.conftest import free_port
from tests.client.helpers import FAST_CONFIG, MLP_ARCHITECTURE, SLOW_CONFIG, classification_data, mlp


@pytest.fixture
def cl(client_env):
    with Client(client_env.url, client_env.api_key) as client:
        yield client


@pytest.fixture
def uploaded(cl) -> tuple[Checkpoint, Dataset]:
    """A checkpoint and a dataset that fit each other."""
    dataset = cl.upload_dataset(classification_data())
    checkpoint = cl.upload_checkpoint(mlp().state_dict(), architecture=MLP_ARCHITECTURE)
    return checkpoint, dataset


def test_datasets_upload_from_arrays_tensors_and_files(cl, tmp_path):
    data = classification_data(n=50)
    from_numpy = cl.upload_dataset(data, name="numpy")
    assert (from_numpy.n, from_numpy.x_shape, from_numpy.y_shape) == (50, [50, 4], [50])
    assert from_numpy.name == "numpy" and from_numpy.format == "safetensors"

    from_tensors = cl.upload_dataset((torch.from_numpy(data["x"]), torch.from_numpy(data["y"])))
    assert from_tensors.x_dtype.lower().endswith("32") and from_tensors.n == 50

    npz = tmp_path / "digits.npz"
    np.savez(npz, **data)
    from_file = cl.upload_dataset(npz)
    assert from_file.format == "npz" and from_file.n == 50

    assert cl.dataset(from_file.id) == from_file
    listed = {d.id for d in cl.datasets()}
    assert {from_numpy.id, from_tensors.id, from_file.id} <= listed


def test_checkpoints_upload_as_state_dict_module_and_file_and_list_by_collection(cl, tmp_path):
    model = mlp(seed=1)
    from_state = cl.upload_checkpoint(model.state_dict(), architecture=MLP_ARCHITECTURE, collection="ckpt-run", step=10)
    assert (from_state.collection, from_state.step, from_state.num_params) == ("ckpt-run", 10, 4 * 8 + 8 + 8 * 3 + 3)

    from_module = cl.upload_checkpoint(model, collection="ckpt-run", step=20, name="inferred")
    assert from_module.architecture["kind"] == "mlp" and from_module.name == "inferred"
    assert from_module.sha256 == from_state.sha256  # the same weights serialise to the same bytes

    from safetensors.torch import save_file

    path = tmp_path / "step_30.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    from_file = cl.upload_checkpoint(path, architecture=MLP_ARCHITECTURE, collection="ckpt-run", step=30)
    assert from_file.format == "safetensors"

    cl.upload_checkpoint(model, collection="ckpt-other", step=10)
    in_run = cl.checkpoints(collection="ckpt-run")
    assert sorted(c.step for c in in_run) == [10, 20, 30]
    assert cl.checkpoint(from_file.id).step == 30


def test_weights_that_do_not_fit_the_architecture_are_rejected_with_the_servers_message(cl):
    wrong = {**MLP_ARCHITECTURE, "hidden": [9]}
    with pytest.raises(ValidationFailed) as info:
        cl.upload_checkpoint(mlp().state_dict(), architecture=wrong)
    assert info.value.status_code == 422
    assert "0.weight" in info.value.message  # the server names the mismatched tensor
    with pytest.raises(ValueError, match="architecture"):
        cl.upload_checkpoint(mlp().state_dict())  # a bare state_dict cannot be sent without one


def test_errors_carry_status_and_message(cl, client_env):
    with pytest.raises(NotFound) as info:
        cl.job("0" * 32)
    assert info.value.status_code == 404 and info.value.message
    with pytest.raises(NotFound, match="no job or batch"):
        cl.get("0" * 32)
    with Client(client_env.url, api_key="lh_not_a_real_key") as wrong_key, pytest.raises(Unauthorized) as info:
        wrong_key.datasets()
    assert info.value.status_code == 401
    with Client(f"http://127.0.0.1:{free_port()}", api_key="x") as nowhere, pytest.raises(ConnectionFailed):
        nowhere.datasets()


def test_key_falls_back_to_the_local_key_file(client_env):
    with Client(client_env.url) as cl:
        assert cl.api_key_source.endswith("api_key")
        assert isinstance(cl.datasets(limit=1), list)


def test_listing_follows_cursors_past_one_page(cl):
    tiny = {"x": np.zeros((2, 1), np.float32), "y": np.zeros(2, np.float32)}
    created = {cl.upload_dataset(tiny, name=f"page-{i}").id for i in range(105)}  # pages hold 100
    listed = [d.id for d in cl.datasets()]
    assert len(listed) == len(set(listed))  # no duplicates across pages
    assert created <= set(listed)
    assert len(cl.datasets(limit=7)) == 7


def test_submit_wait_traces_and_results(cl, uploaded):
    checkpoint, dataset = uploaded
    job = cl.submit(checkpoint, dataset, loss="cross_entropy", config=FAST_CONFIG, idempotency_key="live-1")
    assert job.status == "queued" and job.config == FAST_CONFIG
    again = cl.submit(checkpoint.id, dataset.id, loss="cross_entropy", config=FAST_CONFIG, idempotency_key="live-1")
    assert again.id == job.id  # the same key never queues a second job

    snapshots: list[Job] = []
    final = cl.wait(job, progress=snapshots.append, timeout=240, poll=0.3)
    assert final.status == "succeeded", final.error
    assert snapshots[-1].status == "succeeded"
    progress = [s.progress for s in snapshots]
    assert progress == sorted(progress)

    result = final.result
    assert result is not None and math.isfinite(result.llc_mean) and len(result.llc_per_chain) == 2
    traces = cl.traces(final)
    assert traces["loss"].shape == (2, 40) and traces["llc"].shape == (2, 40)
    assert np.isfinite(traces["loss"]).all()
    assert traces["init_loss"] == pytest.approx(result.init_loss, rel=1e-5)
    # The last running estimate of each chain is that chain's reported estimate.
    np.testing.assert_allclose(traces["llc"][:, -1], result.llc_per_chain, rtol=1e-4, atol=1e-4)

    (row,) = cl.results(final.id)
    assert row["job_id"] == final.id and row["status"] == "succeeded"
    assert row["llc_mean"] == pytest.approx(result.llc_mean)
    assert final.id in {j.id for j in cl.jobs(status="succeeded")}
    assert [j.id for j in cl.jobs(checkpoint=checkpoint)] == [final.id]


def test_wait_times_out_then_cancel_stops_the_job(cl, uploaded):
    checkpoint, dataset = uploaded
    job = cl.submit(checkpoint, dataset, loss="cross_entropy", config=SLOW_CONFIG)
    with pytest.raises(WaitTimeout) as info:
        cl.wait(job, progress=False, timeout=1.0, poll=0.2)
    assert isinstance(info.value.last, Job) and not info.value.last.finished
    cl.cancel(job)
    final = cl.wait(job, progress=False, timeout=60, poll=0.3)
    assert final.status == "cancelled"
    with pytest.raises(Conflict):
        cl.cancel(final)  # already finished


def test_async_client_runs_the_same_operations(client_env):
    async def scenario() -> tuple[Job, dict, list[Dataset]]:
        async with AsyncClient(client_env.url, client_env.api_key) as acl:
            dataset, checkpoint = await asyncio.gather(
                acl.upload_dataset(classification_data(seed=3)),
                acl.upload_checkpoint(mlp(seed=3), collection="async-run", step=1),
            )
            job = await acl.submit(checkpoint, dataset, loss="cross_entropy", config=FAST_CONFIG)
            final = await acl.wait(job, progress=False, timeout=240, poll=0.3)
            traces = await acl.traces(final) if final.succeeded else {}
            return final, traces, await acl.datasets()

    final, traces, datasets = asyncio.run(scenario())
    assert final.status == "succeeded", final.error
    assert traces["loss"].shape == (2, 40)
    assert final.dataset_id in {d.id for d in datasets}


def test_estimate_uploads_runs_and_matches_the_library(cl, capsys):
    model = mlp(seed=5)
    data = classification_data(n=64, seed=5)
    x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])
    job = cl.estimate(model, (x, y), loss="cross_entropy", config=FAST_CONFIG, progress=True, timeout=240)
    assert job.succeeded and job.result.n == 64
    bar = capsys.readouterr().err  # the tqdm bar, as text outside a notebook
    assert f"job {job.id[:8]}" in bar and "100%" in bar and "succeeded" in bar

    estimator = pytest.importorskip("estimator")
    library = estimator.estimate_llc(model, (x, y), loss="cross_entropy", config=estimator.LLCConfig(**FAST_CONFIG))
    assert job.result.llc_mean == pytest.approx(library.llc_mean, rel=1e-5, abs=1e-6)


def test_estimate_refuses_unknown_architectures_before_uploading(cl):
    before = len(cl.datasets())

    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 3)

        def forward(self, x):
            return self.layer(x)

    with pytest.raises(ValueError, match="architecture="):
        cl.estimate(Custom(), (torch.zeros(4, 4), torch.zeros(4, dtype=torch.long)), progress=False)
    assert len(cl.datasets()) == before
