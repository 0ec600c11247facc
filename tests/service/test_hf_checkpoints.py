"""Hugging Face checkpoints through the service: save_pretrained output uploaded as a zip, tar, tar.gz
or sharded archive, or as one safetensors file with an hf architecture; refusals (weights that do not
fit, custom code, types outside the allowlist) leave nothing stored and run nothing; and, for every
allowlisted model type on both databases, the job's λ̂ equals the library's on the same model, data
and seed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from api.checkpoints import service as checkpoint_service
from tests.helpers import assert_nothing_stored, upload_checkpoint, upload_dataset, write_safetensors
from tests.service.hf_models import (
    TINY,
    masked_labels,
    save,
    tar_directory,
    tiny_model,
    token_ids,
    write_token_npz,
    zip_directory,
)

pytest.importorskip("transformers")

# Short runs with a fixed step size: the comparison is exact arithmetic, not statistics.
CONFIG = {"num_chains": 2, "num_draws": 8, "num_burnin_steps": 4, "epsilon": 1e-4, "gamma": 100.0,
          "batch_size": 8, "seed": 3, "device": "cpu"}


@pytest.fixture
def inspector_calls(monkeypatch):
    """Every run of a worker-side inspector subprocess from the API, recorded."""
    calls: list[list[str]] = []
    original = checkpoint_service._run_inspector

    def spy(command, stdin, **options):  # noqa: ANN001, ANN202
        calls.append(command)
        return original(command, stdin, **options)

    monkeypatch.setattr(checkpoint_service, "_run_inspector", spy)
    return calls


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gpt2")
    model = tiny_model("gpt2", n_embd=32, n_layer=2)  # ~120 KB: several 20 KB shards
    save(model, directory / "one")
    save(model, directory / "sharded", max_shard_size="20KB")
    return directory, model


def _stored_state(api, checkpoint_id):  # noqa: ANN001, ANN202
    from safetensors.numpy import load_file

    from backend.db import session_scope
    from backend.models import Checkpoint
    from backend.storage import ArtifactStore

    with session_scope(api.settings) as session:
        key = session.get(Checkpoint, checkpoint_id).storage_key
    return load_file(str(ArtifactStore(api.settings).path(key)))


@pytest.mark.parametrize("packing", ["zip", "zip-top-folder", "tar", "tar.gz", "sharded-zip", "sharded-tar.gz"])
def test_save_pretrained_archives_are_stored_as_one_safetensors(api, gpt2_dir, tmp_path, packing):  # noqa: ANN001
    directory, model = gpt2_dir
    source = directory / ("sharded" if packing.startswith("sharded") else "one")
    if packing.startswith("sharded"):
        assert (source / "model.safetensors.index.json").exists() and len(list(source.glob("model-*.safetensors"))) > 1
    if packing.endswith("zip"):
        archive = zip_directory(source, tmp_path / "m.zip")
    elif packing == "zip-top-folder":
        archive = zip_directory(source, tmp_path / "m.zip", top="gpt2-tiny")
    else:
        archive = tar_directory(source, tmp_path / "m.tar", gz=packing.endswith("gz"))
    r = upload_checkpoint(api, archive, collection="run", step=5)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["format"] == "safetensors" and (body["collection"], body["step"]) == ("run", 5)
    architecture = body["architecture"]
    assert architecture["kind"] == "hf" and architecture["task"] == "causal_lm"
    assert architecture["config"]["model_type"] == "gpt2" and "_name_or_path" not in architecture["config"]
    assert body["num_params"] == sum(p.numel() for p in model.parameters())  # the tied embedding once

    stored = _stored_state(api, body["id"])
    expected = {k: v.numpy() for k, v in model.state_dict().items()}
    assert set(stored) == set(expected) - {"lm_head.weight"}  # save_pretrained leaves the tied key out
    for key, value in stored.items():
        np.testing.assert_array_equal(value, expected[key])


def test_the_same_weights_archived_differently_are_stored_once(api, gpt2_dir, tmp_path):  # noqa: ANN001
    directory, _ = gpt2_dir
    a = upload_checkpoint(api, zip_directory(directory / "one", tmp_path / "a.zip")).json()
    b = upload_checkpoint(api, tar_directory(directory / "one", tmp_path / "b.tar")).json()
    assert a["sha256"] == b["sha256"] and a["id"] != b["id"]


def test_a_single_safetensors_file_with_an_hf_architecture(api, gpt2_dir, inspector_calls):  # noqa: ANN001
    directory, model = gpt2_dir
    config = json.loads((directory / "one" / "config.json").read_text())
    architecture = {"kind": "hf", "task": "causal_lm", "config": config}
    r = upload_checkpoint(api, directory / "one" / "model.safetensors", architecture)
    assert r.status_code == 201, r.text
    assert r.json()["architecture"]["kind"] == "hf"
    assert r.json()["num_params"] == sum(p.numel() for p in model.parameters())
    # The same normalized config again: the spec comes from the API's cache, no second subprocess.
    runs = len(inspector_calls)
    assert upload_checkpoint(api, directory / "one" / "model.safetensors", architecture, name="again").status_code == 201
    assert len(inspector_calls) == runs


def test_weights_that_do_not_fit_name_the_keys_and_store_nothing(api, gpt2_dir, tmp_path):  # noqa: ANN001
    from safetensors.numpy import load_file

    directory, _ = gpt2_dir
    state = load_file(str(directory / "one" / "model.safetensors"))
    state.pop("transformer.h.0.mlp.c_fc.weight")
    state["transformer.extra.weight"] = np.zeros((2, 2), np.float32)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((directory / "one" / "config.json").read_text())
    write_safetensors(bad / "model.safetensors", state)
    r = upload_checkpoint(api, zip_directory(bad, tmp_path / "bad.zip"))
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "missing keys: transformer.h.0.mlp.c_fc.weight" in detail
    assert "unexpected keys: transformer.extra.weight" in detail
    assert_nothing_stored(api.settings)


def test_the_task_field_chooses_the_head(api, gpt2_dir, tmp_path):  # noqa: ANN001
    """The causal LM's weights uploaded as a sequence classifier: the classifier's head is missing."""
    directory, _ = gpt2_dir
    r = upload_checkpoint(api, zip_directory(directory / "one", tmp_path / "m.zip"), task="sequence_classification")
    assert r.status_code == 422, r.text
    assert "missing keys: score.weight" in r.json()["detail"]
    assert_nothing_stored(api.settings)
    r = upload_checkpoint(api, tmp_path / "m.zip", task="translation")
    assert r.status_code == 422 and "translation" in r.json()["detail"]
    assert_nothing_stored(api.settings)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"auto_map": {"AutoModelForCausalLM": "modeling_evil.EvilModel"}}, "auto_map"),
        ({"model_type": "evil", "architectures": ["EvilForCausalLM"]}, "evil"),
        ({"model_type": "t5"}, "t5"),
    ],
)
def test_custom_code_and_unlisted_types_are_refused_before_anything_runs(api, gpt2_dir, tmp_path, inspector_calls,
                                                                         change, message):  # noqa: ANN001
    directory, _ = gpt2_dir
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    config = {**json.loads((directory / "one" / "config.json").read_text()), **change}
    (hostile / "config.json").write_text(json.dumps(config))
    (hostile / "model.safetensors").write_bytes((directory / "one" / "model.safetensors").read_bytes())
    marker = tmp_path / "ran"
    (hostile / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('code ran')\n")
    r = upload_checkpoint(api, zip_directory(hostile, tmp_path / "h.zip"))
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert message in detail
    for allowed in ("gpt2", "gpt_neox", "llama", "qwen2", "mistral", "bert"):
        assert allowed in detail
    assert inspector_calls == [] and not marker.exists()
    assert_nothing_stored(api.settings)


def test_hf_uploads_import_neither_torch_nor_transformers_in_the_api_process(gpt2_dir, tmp_path):  # noqa: ANN001
    directory, _ = gpt2_dir
    archive = tar_directory(directory / "sharded", tmp_path / "m.tar.gz", gz=True)
    code = f"""
        import os, sys
        from fastapi.testclient import TestClient
        from api.app import create_app
        from backend.settings import Settings
        from tests.helpers import create_key
        settings = Settings(data_dir={str(tmp_path / "data")!r})
        with TestClient(create_app(settings, run_dispatcher=False)) as client:
            client.headers["Authorization"] = "Bearer " + create_key(settings, "t")
            with open({str(archive)!r}, "rb") as f:
                code = client.post("/v1/checkpoints", files={{"file": f}}).status_code
        loaded = sorted(m for m in ("torch", "transformers", "torchvision") if m in sys.modules)
        print(code, loaded, os.environ["HF_HUB_OFFLINE"], os.environ["TRANSFORMERS_OFFLINE"])
        """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "201 [] 1 1"


# ---------------------------------------------------------------------------------------------
# End to end: each allowlisted model type, scored by the service and by the library


def _token_data(model_type: str) -> dict[str, np.ndarray]:
    ids = token_ids(n=16, seq_len=8)
    if TINY[model_type][0] == "masked_lm":
        return {"input_ids": ids, "labels": masked_labels(ids)}
    return {"input_ids": ids}


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("model_type", list(TINY))
def test_each_model_type_scores_like_the_library(api, tmp_path, model_type):  # noqa: ANN001
    import torch

    from estimator import LLCConfig, estimate_llc
    from worker.runner import run_job

    model = tiny_model(model_type, seed=1)
    task = TINY[model_type][0]
    archive = tar_directory(save(model, tmp_path / model_type), tmp_path / "m.tar.gz", gz=True)
    checkpoint = upload_checkpoint(api, archive, task=task)
    assert checkpoint.status_code == 201, checkpoint.text
    data = _token_data(model_type)
    dataset = upload_dataset(api, write_token_npz(tmp_path / "tokens.npz", **data))
    assert dataset.status_code == 201, dataset.text
    assert dataset.json()["kind"] == "tokens"

    job = api.post("/v1/jobs", json={"checkpoint_id": checkpoint.json()["id"], "dataset_id": dataset.json()["id"],
                                     "loss": task, "config": CONFIG})
    assert job.status_code == 202, job.text
    outcome = run_job(job.json()["id"], settings=api.settings, worker_name="hf-worker")
    assert outcome.status == "succeeded", api.get(f"/v1/jobs/{job.json()['id']}").json()["error"]
    result = api.get(f"/v1/jobs/{job.json()['id']}").json()["result"]

    expected = estimate_llc(model, {k: torch.from_numpy(v) for k, v in data.items()}, loss=task,
                            config=LLCConfig(**CONFIG))
    assert abs(result["llc_mean"] - expected.llc_mean) <= 1e-3, (result["llc_mean"], expected.llc_mean)
    assert result["init_loss"] == pytest.approx(expected.init_loss, abs=1e-4)


@pytest.mark.parametrize("entry_point", ["api.app", "ops.serve", "worker.runner", "worker.job_process",
                                         "worker.celery_worker"])
def test_every_service_process_runs_offline(entry_point):
    """Importing any entry point switches the Hugging Face hub off, even when the caller's environment
    says otherwise; subprocesses (inspectors, job processes) inherit it. (The inspector also switches
    it off itself before importing transformers: worker/inspect_architecture.py.)"""
    code = (f"import os, {entry_point}, subprocess, sys\n"
            "child = subprocess.run([sys.executable, '-c', 'import os; print(os.environ[\"HF_HUB_OFFLINE\"])'],"
            " capture_output=True, text=True).stdout.strip()\n"
            "print(os.environ['HF_HUB_OFFLINE'], os.environ['TRANSFORMERS_OFFLINE'], child)")
    env = {k: v for k, v in __import__("os").environ.items() if not k.endswith("_OFFLINE")}
    env.update(HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "1", "1"]
