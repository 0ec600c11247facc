"""Hugging Face models, save_pretrained folders, token datasets and torch.export programs uploaded by
the client to a live embedded server (``lambdahat serve``), and a causal_lm job on what was uploaded."""

from __future__ import annotations

import json
import math
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

from lambdahat import Client, LLCConfig, estimate_llc
from tests.client.conftest import LiveServer, lambdahat_command
from tests.client.helpers import FAST_CONFIG
from tests.client.test_hf_serialize import tiny_gpt_neox

VOCAB, T = 64, 16


def token_ids(n: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=(n, T), dtype=np.int64)


@pytest.fixture
def client(client_env: LiveServer):
    with Client(client_env.url, timeout=300) as cl:
        yield cl


def test_pretrained_model_is_stored_as_an_hf_checkpoint(client: Client):
    model = tiny_gpt_neox(seed=1)
    checkpoint = client.upload_checkpoint(model, collection="hf-live-model", step=3)
    assert checkpoint.format == "safetensors" and checkpoint.step == 3
    assert checkpoint.architecture["kind"] == "hf" and checkpoint.architecture["task"] == "causal_lm"
    assert checkpoint.architecture["config"]["model_type"] == "gpt_neox"
    assert checkpoint.num_params == sum(p.numel() for p in model.parameters())


def test_token_dict_and_hf_dataset_are_stored_as_token_datasets(client: Client):
    import datasets

    ids = token_ids(n=10)
    mask = np.ones_like(ids)
    mask[:, -2:] = 0
    from_dict = client.upload_dataset({"input_ids": ids, "attention_mask": mask}, name="tokens-dict")
    assert from_dict.kind == "tokens" and from_dict.n == 10 and from_dict.seq_len == T
    assert from_dict.max_token_id == int(ids.max())
    hf = datasets.Dataset.from_dict({"text": ["x"] * 6, "input_ids": token_ids(n=6, seed=2).tolist()})
    from_hf = client.upload_dataset(hf, name="tokens-hf")
    assert from_hf.kind == "tokens" and from_hf.n == 6 and from_hf.seq_len == T and from_hf.name == "tokens-hf"


def test_folder_upload_then_causal_lm_job_matches_the_library(client: Client, tmp_path):
    model = tiny_gpt_neox(seed=4)
    folder = tmp_path / "step40"
    model.save_pretrained(folder)
    checkpoint = client.upload_checkpoint(folder, collection="hf-live-folder", step=40)
    assert checkpoint.architecture["kind"] == "hf" and checkpoint.step == 40
    ids = token_ids(n=64, seed=5)
    dataset = client.upload_dataset({"input_ids": ids})
    job = client.wait(client.submit(checkpoint, dataset, loss="causal_lm", config=FAST_CONFIG), progress=False,
                      timeout=600)
    assert job.succeeded, job.error
    assert job.result.llc_mean is not None and math.isfinite(job.result.llc_mean)
    torch.set_num_threads(1)  # as the job process runs it
    expected = estimate_llc(model, {"input_ids": ids}, loss="causal_lm", config=LLCConfig(**FAST_CONFIG))
    assert job.result.llc_mean == pytest.approx(expected.llc_mean, abs=1e-3)


def test_archive_path_is_uploaded_as_it_is(client: Client, tmp_path):
    import zipfile

    folder = tmp_path / "saved"
    tiny_gpt_neox(seed=6).save_pretrained(folder)
    archive = tmp_path / "step6.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for name in ("config.json", "model.safetensors"):
            zipped.write(folder / name, f"saved/{name}")  # under one top folder, as zip tools make it
    checkpoint = client.upload_checkpoint(archive, collection="hf-live-zip", step=6, task="causal_lm")
    assert checkpoint.architecture["kind"] == "hf" and checkpoint.name == "step6.zip"


def test_exported_program_is_uploaded_as_pt2(client: Client):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    program = torch.export.export(model, (torch.randn(2, 4),))
    checkpoint = client.upload_checkpoint(program, collection="hf-live-export", step=1)
    assert checkpoint.format == "pt2" and checkpoint.step == 1


def test_cli_uploads_a_runs_checkpoint_folders_with_steps_from_their_names(live_server: LiveServer, tmp_path):
    run = tmp_path / "pythia-tiny"
    for step in (0, 16, 128):
        tiny_gpt_neox(seed=step).save_pretrained(run / f"step{step}")
    result = subprocess.run(
        [*lambdahat_command(), "upload", *(str(run / f"step{s}") for s in (0, 16, 128)), "--collection",
         "hf-live-cli", "--step-from-filename", "--format", "json"],
        env=live_server.env(LAMBDAHAT_URL=live_server.url), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    uploaded = json.loads(result.stdout)
    assert [c["step"] for c in uploaded] == [0, 16, 128]
    assert [c["name"] for c in uploaded] == ["step0", "step16", "step128"]
    assert {c["collection"] for c in uploaded} == {"hf-live-cli"}
    assert all(c["architecture"]["kind"] == "hf" for c in uploaded)


def test_async_client_uploads_a_pretrained_model_and_token_data(client_env: LiveServer):
    import asyncio

    from lambdahat import AsyncClient

    async def scenario():  # noqa: ANN202
        async with AsyncClient(client_env.url) as acl:
            return await asyncio.gather(
                acl.upload_checkpoint(tiny_gpt_neox(seed=8), collection="hf-live-async", step=8),
                acl.upload_dataset({"input_ids": token_ids(n=4, seed=8)}),
            )

    checkpoint, dataset = asyncio.run(scenario())
    assert checkpoint.architecture["kind"] == "hf" and checkpoint.step == 8
    assert dataset.kind == "tokens" and dataset.n == 4


def test_torchvision_resnet18_is_uploaded_and_scored(client: Client):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    checkpoint = client.upload_checkpoint(model, collection="tv-live", step=0)  # architecture inferred
    assert checkpoint.architecture["kind"] == "torchvision" and checkpoint.architecture["name"] == "resnet18"
    rng = np.random.default_rng(0)
    data = {"x": rng.standard_normal((32, 3, 32, 32)).astype(np.float32), "y": rng.integers(0, 10, 32)}
    dataset = client.upload_dataset(data)
    config = {**FAST_CONFIG, "num_chains": 1, "num_draws": 5, "num_burnin_steps": 2, "batch_size": 8}
    job = client.wait(client.submit(checkpoint, dataset, loss="cross_entropy", config=config), progress=False,
                      timeout=600)
    assert job.succeeded, job.error
    assert math.isfinite(job.result.llc_mean)
