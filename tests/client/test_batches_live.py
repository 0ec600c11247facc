"""Batches through the client and the CLI against a live embedded server over real HTTP: submit a
collection, wait with progress, results ordered by step, dedupe on resubmission, cancel, and the
server's PNG plot endpoints (decoded and checked)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math

import matplotlib.image as mpimg
import numpy as np
import pytest
from safetensors.torch import save_file

from lambdahat import AsyncClient, Batch, Client, Conflict, NotFound, ValidationFailed
from tests.client.helpers import FAST_CONFIG, MLP_ARCHITECTURE, SLOW_CONFIG, classification_data, mlp
from tests.client.test_cli import fails_with, ok, run_cli

pytestmark = pytest.mark.slow

BATCH_CONFIG = {**FAST_CONFIG, "num_chains": 2, "num_draws": 20}


@pytest.fixture
def cl(client_env):
    with Client(client_env.url, client_env.api_key) as client:
        yield client


def upload_collection(cl: Client, name: str, steps: list[int]) -> list[str]:
    return [cl.upload_checkpoint(mlp(seed=100 + step).state_dict(), architecture=MLP_ARCHITECTURE, collection=name,
                                 step=step, name=f"{name}-{step}").id for step in steps]


def png_image(data: bytes) -> np.ndarray:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return mpimg.imread(io.BytesIO(data), format="png")


def test_submit_wait_results_dedupe_and_plots(cl):
    dataset = cl.upload_dataset(classification_data(seed=3))
    ids = upload_collection(cl, "sdk-batch", [30, 10, 20, 0])

    batch = cl.submit_batch(dataset, loss="cross_entropy", config=BATCH_CONFIG, collection="sdk-batch")
    assert isinstance(batch, Batch) and batch.total == 4 and batch.collection == "sdk-batch"
    seen: list[Batch] = []
    final = cl.wait(batch, progress=seen.append, timeout=240, poll=0.3)
    assert final.succeeded and final.counts["succeeded"] == 4 and final.progress == 1.0
    assert seen and seen[-1].id == batch.id and all(s.num_finished <= 4 for s in seen)

    rows = cl.results(batch)
    assert [r["step"] for r in rows] == [0, 10, 20, 30]
    assert [r["checkpoint_id"] for r in rows] == [ids[3], ids[1], ids[2], ids[0]]
    assert all(r["status"] == "succeeded" and math.isfinite(r["llc_mean"]) and r["llc_std"] >= 0 for r in rows)
    job = cl.job(rows[0]["job_id"])
    assert job.batch_id == batch.id and job.result.llc_mean == rows[0]["llc_mean"]
    assert batch.id in {b.id for b in cl.batches(collection="sdk-batch")}

    # The same request again is answered from the finished work; force re-runs it.
    again = cl.submit_batch(dataset, loss="cross_entropy", config=BATCH_CONFIG, collection="sdk-batch")
    assert again.finished and again.reused == 4 and again.counts["succeeded"] == 4
    reused_rows = cl.results(again)
    assert [r["llc_mean"] for r in reused_rows] == [r["llc_mean"] for r in rows]
    assert [r["reused_from"] for r in reused_rows] == [r["job_id"] for r in rows]
    reused_traces = cl.traces(reused_rows[0]["job_id"])
    np.testing.assert_array_equal(reused_traces["llc"], cl.traces(rows[0]["job_id"])["llc"])
    forced = cl.submit_batch(dataset, loss="cross_entropy", config=BATCH_CONFIG, collection="sdk-batch", force=True)
    assert forced.reused == 0 and not forced.finished
    cancelled = cl.cancel(forced)
    assert isinstance(cancelled, Batch) and cancelled.counts["queued"] == 0
    assert cl.wait(forced, progress=True, timeout=60, poll=0.3).status in ("cancelled", "succeeded")  # a tqdm bar

    # Plots drawn by the server: a job's traces, the batch over training, two batches on one axis.
    job_png = png_image(cl.plot(job))
    assert job_png.shape[:2] == (750, 1000) and job_png[..., :3].std() > 0.05
    batch_png = png_image(cl.plot(batch))
    assert batch_png.shape[:2] == (550, 900) and batch_png[..., :3].std() > 0.05
    both = png_image(cl.plot_llc(batches=[batch, again]))
    assert both.shape[:2] == (550, 900) and both[..., :3].std() > 0.05
    by_collection = png_image(cl.plot_llc(collections=["sdk-batch"]))
    assert by_collection.shape[:2] == (550, 900)
    with pytest.raises(NotFound, match="no batch of collection 'nope'"):
        cl.plot_llc(collections=["nope"])


def test_bad_batch_requests_raise_with_the_servers_message(cl):
    dataset = cl.upload_dataset(classification_data(seed=4))
    with pytest.raises(ValidationFailed, match="collection 'empty-run' has no checkpoints"):
        cl.submit_batch(dataset, collection="empty-run")
    with pytest.raises(NotFound, match="not found"):
        cl.submit_batch(dataset, checkpoints=["0" * 32])
    with pytest.raises(ValueError, match="exactly one"):
        cl.submit_batch(dataset)
    with pytest.raises(NotFound):
        cl.batch("f" * 32)


def test_async_client_runs_a_batch(client_env):
    async def scenario() -> list[dict]:
        async with AsyncClient(client_env.url, client_env.api_key) as acl:
            dataset = await acl.upload_dataset(classification_data(seed=5))
            for step in (2, 1):
                await acl.upload_checkpoint(mlp(seed=step).state_dict(), architecture=MLP_ARCHITECTURE,
                                            collection="async-batch", step=step)
            batch = await acl.submit_batch(dataset, config=BATCH_CONFIG, collection="async-batch")
            final = await acl.wait(batch, progress=False, timeout=240, poll=0.3)
            assert final.succeeded
            return await acl.results(final)

    rows = asyncio.run(scenario())
    assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["llc_mean"]) for r in rows)


def test_cli_batch_results_plot_and_cancel(live_server, tmp_path):
    for step in (300, 100, 200):
        state = {k: v.contiguous() for k, v in mlp(seed=step).state_dict().items()}
        save_file(state, str(tmp_path / f"ckpt_{step}.safetensors"))
    np.savez(tmp_path / "data.npz", **classification_data(n=64, seed=12))
    (tmp_path / "arch.json").write_text(json.dumps(MLP_ARCHITECTURE))
    dataset = json.loads(ok(run_cli(live_server, "upload-dataset", str(tmp_path / "data.npz"), "--format", "json")))[0]
    ok(run_cli(live_server, "upload", *[str(tmp_path / f"ckpt_{s}.safetensors") for s in (300, 100, 200)],
               "--architecture", str(tmp_path / "arch.json"), "--collection", "cli-batch", "--step-from-filename"))

    created = run_cli(live_server, "batch", "--collection", "cli-batch", "--dataset", dataset["id"],
                      "--loss", "cross_entropy", "--config", json.dumps(BATCH_CONFIG), "--wait", "--timeout", "240",
                      "--format", "json")
    batch = json.loads(ok(created))
    assert batch["status"] == "succeeded" and batch["counts"]["succeeded"] == 3

    plot = tmp_path / "batch.png"
    rows = list(csv.DictReader(io.StringIO(ok(run_cli(live_server, "results", batch["id"], "--format", "csv",
                                                      "--plot", str(plot))))))
    assert [r["step"] for r in rows] == ["100", "200", "300"] and {r["status"] for r in rows} == {"succeeded"}
    image = mpimg.imread(plot, format="png")
    assert image.shape[:2] == (550, 900) and image[..., :3].std() > 0.05
    as_json = json.loads(ok(run_cli(live_server, "results", batch["id"], "--format", "json")))
    assert [r["llc_mean"] for r in as_json] == [pytest.approx(float(r["llc_mean"])) for r in rows]
    table = ok(run_cli(live_server, "results", batch["id"]))
    assert batch["id"] in table and "succeeded" in table
    assert "3/3 finished" in ok(run_cli(live_server, "status", batch["id"]))

    # A finished batch has nothing to cancel; a slow one is cancelled and `wait` exits 1.
    fails_with(run_cli(live_server, "cancel", batch["id"]), 6, "already finished")
    slow = json.loads(ok(run_cli(live_server, "batch", "--collection", "cli-batch", "--dataset", dataset["id"],
                                 "--loss", "cross_entropy", "--config", json.dumps(SLOW_CONFIG), "--format", "json")))
    assert slow["counts"]["queued"] + slow["counts"]["running"] == 3
    ok(run_cli(live_server, "cancel", slow["id"]))
    waited = run_cli(live_server, "wait", slow["id"], "--quiet", "--timeout", "60", "--poll", "0.3")
    assert waited.returncode == 1, waited.stdout + waited.stderr
    fails_with(run_cli(live_server, "batch", "--dataset", dataset["id"], "--loss", "cross_entropy"), 2,
               "--collection")


def test_conflict_is_raised_for_a_finished_batch(cl):
    dataset = cl.upload_dataset(classification_data(seed=6))
    upload_collection(cl, "conflict-batch", [1])
    batch = cl.wait(cl.submit_batch(dataset, config=BATCH_CONFIG, collection="conflict-batch"), progress=False,
                    timeout=240, poll=0.3)
    with pytest.raises(Conflict, match="already finished"):
        cl.cancel(batch)
