"""Token datasets through the service: upload (npz, safetensors) with what is stored about them,
refusals that leave nothing stored, the submit-time checks (vocabulary, context length, loss and
model, memory) that queue nothing, and the built-in ``transformer`` kind scored with causal_lm end to
end, equal to the library."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import (
    MLP,
    assert_nothing_stored,
    upload_checkpoint,
    upload_dataset,
    write_checkpoint,
    write_safetensors,
)
from tests.service.hf_models import masked_labels, token_ids, write_token_npz

TRANSFORMER = {"kind": "transformer", "vocab_size": 64, "context_length": 8, "d_model": 16, "n_layers": 1, "n_heads": 2}
CONFIG = {"num_chains": 2, "num_draws": 8, "num_burnin_steps": 4, "epsilon": 1e-4, "gamma": 100.0,
          "batch_size": 8, "seed": 5, "device": "cpu"}


# ---------------------------------------------------------------------------------------------
# Upload


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_a_token_dataset_records_its_kind_largest_id_and_length(api, tmp_path, fmt):  # noqa: ANN001
    ids = token_ids(n=12, seq_len=6)
    ids[3, 2] = 61
    mask = np.ones_like(ids)
    mask[:, -2:] = 0
    labels = masked_labels(ids)
    if fmt == "npz":
        path = write_token_npz(tmp_path / "t.npz", input_ids=ids, attention_mask=mask, labels=labels)
    else:
        path = write_safetensors(tmp_path / "t.safetensors", {"input_ids": ids, "attention_mask": mask, "labels": labels})
    r = upload_dataset(api, path)
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["kind"], body["n"], body["seq_len"], body["max_token_id"]) == ("tokens", 12, 6, int(ids.max()))
    assert body["x_shape"] == [12, 6] and body["y_shape"] == [12, 6] and body["x_dtype"] == "int64"


def test_without_labels_the_targets_are_the_inputs(api, tmp_path):  # noqa: ANN001
    r = upload_dataset(api, write_token_npz(tmp_path / "t.npz", input_ids=token_ids().astype(np.int32)))
    assert r.status_code == 201, r.text
    assert r.json()["y_shape"] == r.json()["x_shape"] == [16, 8] and r.json()["y_dtype"] == "int32"


def test_xy_datasets_are_unchanged(api, tmp_path):  # noqa: ANN001
    from tests.helpers import write_dataset

    body = upload_dataset(api, write_dataset(tmp_path / "d.safetensors")).json()
    assert (body["kind"], body["max_token_id"], body["seq_len"]) == ("xy", None, None)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"input_ids": np.zeros((4, 3), np.float32)}, "token ids must be integers"),
        ({"input_ids": np.zeros(4, np.int64)}, "must be [N, T]"),
        ({"input_ids": np.zeros((0, 3), np.int64)}, "must be [N, T]"),
        ({"input_ids": np.full((4, 3), -1, np.int64)}, "negative token id"),
        ({"input_ids": np.zeros((4, 3), np.int64), "attention_mask": np.ones((4, 2), np.int64)}, "shape of input_ids"),
        ({"input_ids": np.zeros((4, 3), np.int64), "attention_mask": np.full((4, 3), 2, np.int64)}, "only 0 and 1"),
        ({"input_ids": np.zeros((4, 3), np.int64), "attention_mask": np.ones((4, 3), np.float32)}, "integer or bool"),
        ({"input_ids": np.zeros((4, 3), np.int64), "labels": np.zeros((4, 2), np.int64)}, "'labels' must be [N, T]"),
        ({"input_ids": np.zeros((4, 3), np.int64), "labels": np.full((4, 3), -5, np.int64)}, "-100 for positions"),
        ({"input_ids": np.zeros((4, 3), np.int64), "labels": np.zeros((4, 3), np.float32)}, "labels must be integers"),
        ({"input_ids": np.zeros((4, 3), np.int64), "x": np.zeros((4, 3), np.float32)}, "unexpected tensor(s): ['x']"),
    ],
)
def test_malformed_token_datasets_are_refused(api, tmp_path, arrays, message):  # noqa: ANN001
    r = upload_dataset(api, write_token_npz(tmp_path / "bad.npz", **arrays))
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]
    assert_nothing_stored(api.settings)


# ---------------------------------------------------------------------------------------------
# Submit-time checks


@pytest.fixture
def transformer_checkpoint(api, tmp_path):  # noqa: ANN001
    r = upload_checkpoint(api, write_checkpoint(tmp_path / "lm.safetensors", TRANSFORMER), TRANSFORMER)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _dataset(api, tmp_path, **arrays) -> str:  # noqa: ANN001, ANN003
    r = upload_dataset(api, write_token_npz(tmp_path / "t.npz", **arrays))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _refused_job(api, checkpoint_id: str, dataset_id: str, loss: str, *messages: str) -> None:  # noqa: ANN001
    r = api.post("/v1/jobs", json={"checkpoint_id": checkpoint_id, "dataset_id": dataset_id, "loss": loss,
                                   "config": CONFIG})
    assert r.status_code == 422, r.text
    for message in messages:
        assert message in r.json()["detail"], r.json()["detail"]
    assert api.get("/v1/jobs").json()["items"] == []  # nothing queued, nothing ran


def test_token_ids_outside_the_vocabulary(api, tmp_path, transformer_checkpoint):  # noqa: ANN001
    ids = token_ids(seq_len=8)
    ids[0, 0] = 70
    dataset = _dataset(api, tmp_path, input_ids=ids)
    _refused_job(api, transformer_checkpoint, dataset, "causal_lm", "token id 70", "vocabulary has 64 entries")


def test_sequences_longer_than_the_context(api, tmp_path, transformer_checkpoint):  # noqa: ANN001
    dataset = _dataset(api, tmp_path, input_ids=token_ids(seq_len=16))
    _refused_job(api, transformer_checkpoint, dataset, "causal_lm", "T=16", "context length of 8")


def test_labels_outside_the_vocabulary(api, tmp_path, transformer_checkpoint):  # noqa: ANN001
    ids = token_ids(seq_len=8)
    dataset = _dataset(api, tmp_path, input_ids=ids, labels=np.where(ids > 30, 99, -100))
    _refused_job(api, transformer_checkpoint, dataset, "masked_lm", "label 99", "64 entries")


@pytest.mark.parametrize(
    ("labels", "loss", "message"),
    [
        (None, "mse", "does not apply to the token dataset"),
        (None, "masked_lm", "masked_lm needs 'labels' [N, T]"),
        ("per_sequence", "masked_lm", "masked_lm needs 'labels' [N, T]"),
        ("per_sequence", "causal_lm", "causal_lm needs 'labels' of shape [N, T]"),
        (None, "cross_entropy", "needs 'labels' [N]"),
        ("per_token", "cross_entropy", "needs 'labels' [N]"),
        ("per_sequence", "cross_entropy", "needs a sequence classifier"),
    ],
)
def test_the_loss_must_fit_the_token_data(api, tmp_path, transformer_checkpoint, labels, loss, message):  # noqa: ANN001
    ids = token_ids(seq_len=8)
    arrays = {"input_ids": ids}
    if labels == "per_sequence":
        arrays["labels"] = np.arange(len(ids)) % 2
    elif labels == "per_token":
        arrays["labels"] = ids
    _refused_job(api, transformer_checkpoint, _dataset(api, tmp_path, **arrays), loss, message)


def test_a_token_dataset_needs_a_model_that_reads_tokens(api, tmp_path):  # noqa: ANN001
    checkpoint = upload_checkpoint(api, write_checkpoint(tmp_path / "mlp.safetensors"), MLP).json()["id"]
    dataset = _dataset(api, tmp_path, input_ids=token_ids(seq_len=8))
    _refused_job(api, checkpoint, dataset, "causal_lm", "needs a model that reads token ids", "kind mlp")


def test_a_model_that_does_not_fit_the_workers_memory(api, tmp_path, transformer_checkpoint):  # noqa: ANN001
    api.settings.worker_memory_bytes = 100_000
    dataset = _dataset(api, tmp_path, input_ids=token_ids(seq_len=8))
    _refused_job(api, transformer_checkpoint, dataset, "causal_lm", "even with one chain at a time",
                 "more than the worker's", "LAMBDAHAT_WORKER_MEMORY_BYTES")
    api.settings.worker_memory_bytes = 10 * 1024**3
    r = api.post("/v1/jobs", json={"checkpoint_id": transformer_checkpoint, "dataset_id": dataset, "loss": "causal_lm",
                                   "config": CONFIG})
    assert r.status_code == 202, r.text


def test_chains_are_chunked_to_fit_the_workers_memory(api, tmp_path, transformer_checkpoint):  # noqa: ANN001
    """Every chain's state fits but all chains in one vectorised call would not: the job runs with as
    many chains per call as fit, and a chunk size the request gives is kept."""
    from estimator import memory

    dataset = _dataset(api, tmp_path, input_ids=token_ids(seq_len=8))
    params = api.get(f"/v1/checkpoints/{transformer_checkpoint}").json()["num_params"]
    config = {**CONFIG, "num_chains": 8, "batch_size": 4}
    d_model, vocab = TRANSFORMER["d_model"], TRANSFORMER["vocab_size"]
    activations = memory.activation_bytes_estimate(4, 8, d_model, 1, vocab, 4)
    needed = memory.estimate_memory_bytes(params, 8, 4, activations, memory.eval_activation_bytes_estimate(4, 8, 8, d_model, vocab, 4))
    sampling = memory.sampling_bytes(params, 8, 4, activations)
    per_extra_chain = params * 4 + activations
    # Room for two more chains per call beyond the sequential run's needs, not for all eight.
    api.settings.worker_memory_bytes = max(needed, sampling + 2 * per_extra_chain)
    r = api.post("/v1/jobs", json={"checkpoint_id": transformer_checkpoint, "dataset_id": dataset, "loss": "causal_lm",
                                   "config": config})
    assert r.status_code == 202, r.text
    chunk = r.json()["config"]["max_chains_per_chunk"]
    assert 1 <= chunk < 8
    assert chunk == 1 + (api.settings.worker_memory_bytes - sampling) // per_extra_chain
    r = api.post("/v1/jobs", json={"checkpoint_id": transformer_checkpoint, "dataset_id": dataset, "loss": "causal_lm",
                                   "config": {**config, "max_chains_per_chunk": 8, "seed": 1}})
    assert r.status_code == 202 and r.json()["config"]["max_chains_per_chunk"] == 8, r.text


def test_batches_check_every_checkpoint(api, tmp_path, transformer_checkpoint):  # noqa: ANN001
    dataset = _dataset(api, tmp_path, input_ids=token_ids(seq_len=16))
    r = api.post("/v1/batches", json={"checkpoint_ids": [transformer_checkpoint], "dataset_id": dataset,
                                      "loss": "causal_lm", "config": CONFIG})
    assert r.status_code == 422 and "context length of 8" in r.json()["detail"], r.text
    assert api.get("/v1/jobs").json()["items"] == []


# ---------------------------------------------------------------------------------------------
# End to end: the built-in transformer kind with causal_lm


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("as_tokens", [True, False], ids=["token-dataset", "xy-dataset"])
def test_the_transformer_kind_scores_with_causal_lm_like_the_library(api, tmp_path, as_tokens):  # noqa: ANN001
    """The issue's report: no loss fitted a sequence model's output. causal_lm does, with the tokens
    uploaded as a token dataset or as x = y = ids."""
    import torch

    from estimator import LLCConfig, estimate_llc
    from estimator.architectures import normalize
    from worker.loading import load_model
    from worker.runner import run_job

    path = write_checkpoint(tmp_path / "lm.safetensors", TRANSFORMER, seed=2)
    checkpoint = upload_checkpoint(api, path, TRANSFORMER).json()["id"]
    ids = token_ids(n=16, seq_len=8)
    if as_tokens:
        dataset = _dataset(api, tmp_path, input_ids=ids)
        data = {"input_ids": torch.from_numpy(ids)}
    else:
        dataset = upload_dataset(api, write_safetensors(tmp_path / "xy.safetensors", {"x": ids, "y": ids})).json()["id"]
        data = (torch.from_numpy(ids), torch.from_numpy(ids))
    job = api.post("/v1/jobs", json={"checkpoint_id": checkpoint, "dataset_id": dataset, "loss": "causal_lm",
                                     "config": CONFIG})
    assert job.status_code == 202, job.text
    outcome = run_job(job.json()["id"], settings=api.settings, worker_name="lm-worker")
    stored = api.get(f"/v1/jobs/{job.json()['id']}").json()
    assert outcome.status == "succeeded", stored["error"]

    model = load_model(path, "safetensors", normalize(TRANSFORMER))
    expected = estimate_llc(model, data, loss="causal_lm", config=LLCConfig(**CONFIG))
    assert abs(stored["result"]["llc_mean"] - expected.llc_mean) <= 1e-3
    assert np.isfinite(stored["result"]["llc_mean"])
