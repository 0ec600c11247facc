"""A torchvision ResNet-18 job through the service (the LLC paper's model): uploaded as safetensors
with a torchvision architecture, scored on CIFAR-10-shaped data, equal to the library's estimate on
the same weights, data and seed. Runs in .venv-vision (tests/vision/conftest.py skips it elsewhere)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import (  # noqa: F401 - the service fixtures (both databases)
    api,
    make_api,
    service_settings,
    upload_checkpoint,
    upload_dataset,
    write_safetensors,
)

RESNET18 = {"kind": "torchvision", "name": "resnet18", "num_classes": 10}
CONFIG = {"num_chains": 2, "num_draws": 4, "num_burnin_steps": 2, "epsilon": 1e-5, "gamma": 100.0,
          "batch_size": 8, "seed": 11, "device": "cpu"}


@pytest.mark.usefixtures("one_torch_thread")
def test_a_resnet18_job_scores_like_the_library(api, tmp_path):  # noqa: ANN001, F811
    import torch
    from safetensors.torch import save_file
    from torchvision import models

    from estimator import LLCConfig, estimate_llc
    from estimator.architectures import normalize
    from worker.loading import load_model
    from worker.runner import run_job

    torch.manual_seed(0)
    model = models.resnet18(weights=None, num_classes=10).eval()
    save_file(model.state_dict(), str(tmp_path / "resnet18.safetensors"))
    checkpoint = upload_checkpoint(api, tmp_path / "resnet18.safetensors", RESNET18)
    assert checkpoint.status_code == 201, checkpoint.text
    assert checkpoint.json()["num_params"] == sum(p.numel() for p in model.parameters())

    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, size=16).astype(np.int64)
    dataset = upload_dataset(api, write_safetensors(tmp_path / "cifar.safetensors", {"x": x, "y": y}))
    assert dataset.status_code == 201, dataset.text

    job = api.post("/v1/jobs", json={"checkpoint_id": checkpoint.json()["id"], "dataset_id": dataset.json()["id"],
                                     "loss": "cross_entropy", "config": CONFIG})
    assert job.status_code == 202, job.text
    outcome = run_job(job.json()["id"], settings=api.settings, worker_name="vision-worker")
    stored = api.get(f"/v1/jobs/{job.json()['id']}").json()
    assert outcome.status == "succeeded", stored["error"]

    loaded = load_model(tmp_path / "resnet18.safetensors", "safetensors", normalize(RESNET18))
    expected = estimate_llc(loaded, (torch.from_numpy(x), torch.from_numpy(y)), loss="cross_entropy",
                            config=LLCConfig(**CONFIG))
    assert abs(stored["result"]["llc_mean"] - expected.llc_mean) <= 1e-3
