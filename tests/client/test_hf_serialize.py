"""Client-side handling of Hugging Face models, save_pretrained folders, token datasets and torch.export
programs, checked without a server: what each upload sends, and the refusals made before sending."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lambdahat._http import Call
from lambdahat._ops import op_upload_checkpoint, op_upload_dataset
from lambdahat.serialize import (
    hf_dataset_to_tokens,
    is_pretrained_model,
    pretrained_files,
    step_from_path,
    tokens_to_npz,
    write_pretrained_tar,
)
from tests.client.conftest import lambdahat_command, process_env


def tiny_gpt_neox(seed: int = 0):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    config = GPTNeoXConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=32)
    return GPTNeoXForCausalLM(config)


def first_call(operation) -> Call:  # noqa: ANN001 - an op_* generator
    """The request an operation makes first, its file read into bytes while the operation still
    holds it open (a streamed temporary file closes with the operation)."""
    call = next(operation)
    assert isinstance(call, Call)
    if call.files:
        filename, payload, content_type = call.files["file"]
        if not isinstance(payload, bytes):
            payload = payload.read()
        call.files = {"file": (filename, payload, content_type)}
    operation.close()
    return call


def sent_bytes(call: Call) -> tuple[str, bytes]:
    filename, payload, _ = call.files["file"]
    return filename, payload


def load_npz(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


# -- token datasets ------------------------------------------------------------------------------


def test_token_dict_becomes_npz_with_the_token_member_names():
    ids = np.arange(12, dtype=np.int32).reshape(3, 4)
    mask = np.ones((3, 4), dtype=bool)
    mask[0, 3] = False
    arrays = load_npz(tokens_to_npz({"input_ids": ids, "attention_mask": mask, "labels": ids}))
    assert sorted(arrays) == ["attention_mask", "input_ids", "labels"]
    np.testing.assert_array_equal(arrays["input_ids"], ids)
    assert arrays["input_ids"].dtype == np.int64 and arrays["attention_mask"].dtype == np.int64
    assert arrays["attention_mask"][0].tolist() == [1, 1, 1, 0]


def test_torch_token_tensors_and_sequence_labels_are_accepted():
    ids = torch.randint(0, 50, (5, 8))
    arrays = load_npz(tokens_to_npz({"input_ids": ids, "labels": torch.tensor([0, 1, 0, 1, 1])}))
    np.testing.assert_array_equal(arrays["input_ids"], ids.numpy())
    assert arrays["labels"].shape == (5,)


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        ({"input_ids": np.zeros(4, dtype=np.int64)}, r"\[N, T\]"),
        ({"input_ids": np.zeros((2, 3), dtype=np.float32)}, "must hold integers"),
        ({"input_ids": np.array([[1, 2], [3]], dtype=object)}, "unequal length"),
        ({"input_ids": -np.ones((2, 3), dtype=np.int64)}, "negative token id"),
        ({"input_ids": np.zeros((2, 3), dtype=np.int64), "attention_mask": np.ones((2, 4))}, "attention_mask"),
        ({"input_ids": np.zeros((2, 3), dtype=np.int64), "attention_mask": 2 * np.ones((2, 3), dtype=np.int64)},
         "only 0"),
        ({"input_ids": np.zeros((2, 3), dtype=np.int64), "labels": np.zeros((3,), dtype=np.int64)}, "'labels' has shape"),
        ({"input_ids": np.zeros((2, 3), dtype=np.int64), "token_type_ids": np.zeros((2, 3))}, "unexpected keys"),
    ],
)
def test_token_dict_errors_name_the_problem(tokens, message):  # noqa: ANN001
    with pytest.raises(ValueError, match=message):
        tokens_to_npz(tokens)


def test_hf_dataset_sends_only_its_token_columns():
    import datasets

    dataset = datasets.Dataset.from_dict(
        {"text": ["a b", "c d"], "input_ids": [[1, 2, 3], [4, 5, 6]], "attention_mask": [[1, 1, 1], [1, 1, 0]]}
    )
    tokens = hf_dataset_to_tokens(dataset)
    assert sorted(tokens) == ["attention_mask", "input_ids"]
    call = first_call(op_upload_dataset(dataset, "tiny"))
    filename, data = sent_bytes(call)
    assert filename.endswith(".npz") and call.data == {"name": "tiny"}
    np.testing.assert_array_equal(load_npz(data)["input_ids"], [[1, 2, 3], [4, 5, 6]])


def test_hf_dataset_refusals_say_what_to_do():
    import datasets

    text_only = datasets.Dataset.from_dict({"text": ["a", "b"]})
    with pytest.raises(ValueError, match="needs an 'input_ids' column"):
        tokens_to_npz(text_only)
    ragged = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3], [4]]})
    with pytest.raises(ValueError, match="padding='max_length'"):
        tokens_to_npz(ragged)
    with pytest.raises(ValueError, match="upload one split"):
        tokens_to_npz(datasets.DatasetDict({"train": ragged}))


def test_an_x_y_dataset_still_goes_as_safetensors():
    call = first_call(op_upload_dataset({"x": np.zeros((2, 3), np.float32), "y": np.zeros(2, np.int64)}, None))
    filename, data = sent_bytes(call)
    assert filename.endswith(".safetensors") and data[8:9] == b"{"


# -- steps from folder and file names ---------------------------------------------------------------


def test_step_from_path_reads_folder_names_whole(tmp_path: Path):
    for folder, step in (("step1000", 1000), ("checkpoint-500", 500), ("run.v2-step_0", 0), ("ckpt.2048", 2048)):
        (tmp_path / folder).mkdir()
        assert step_from_path(tmp_path / folder) == step
    (tmp_path / "final").mkdir()
    with pytest.raises(ValueError, match="no step number in folder name 'final'"):
        step_from_path(tmp_path / "final")
    assert step_from_path(tmp_path / "model.step7.safetensors") == 7  # files: as before, without the extension


# -- save_pretrained folders and PreTrainedModels -------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hf") / "step16"
    tiny_gpt_neox().save_pretrained(folder)
    (folder / "optimizer.pt").write_bytes(b"not sent")
    (folder / "tokenizer.json").write_text("{}")
    return folder


def tar_members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}


def test_folder_tar_holds_only_config_and_safetensors_weights(pretrained_folder: Path):
    buffer = io.BytesIO()
    write_pretrained_tar(pretrained_folder, buffer)
    members = tar_members(buffer.getvalue())
    assert sorted(members) == ["config.json", "model.safetensors"]
    assert members["config.json"] == (pretrained_folder / "config.json").read_bytes()


def test_folder_tar_stores_symlinked_files_as_files(pretrained_folder: Path, tmp_path: Path):
    linked = tmp_path / "snapshot"  # as a Hugging Face cache snapshot: links to blobs
    linked.mkdir()
    for name in ("config.json", "model.safetensors"):
        (linked / name).symlink_to(pretrained_folder / name)
    buffer = io.BytesIO()
    write_pretrained_tar(linked, buffer)
    with tarfile.open(fileobj=io.BytesIO(buffer.getvalue())) as archive:
        assert all(member.isfile() for member in archive.getmembers())


def test_folders_that_are_no_checkpoint_are_refused_before_upload(tmp_path: Path):
    with pytest.raises(ValueError, match="no config.json"):
        pretrained_files(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="pytorch_model.bin: pickle files"):
        pretrained_files(tmp_path)


def test_folder_upload_sends_a_tar_with_the_form_fields(pretrained_folder: Path):
    call = first_call(op_upload_checkpoint(str(pretrained_folder), None, "run", 16, None, "causal_lm"))
    filename, data = sent_bytes(call)
    assert filename == "step16.tar"
    assert call.data == {"collection": "run", "step": "16", "task": "causal_lm", "name": "step16"}
    assert sorted(tar_members(data)) == ["config.json", "model.safetensors"]
    with pytest.raises(ValueError, match="leave out architecture"):
        first_call(op_upload_checkpoint(pretrained_folder, {"kind": "mlp"}, None, None, None))


def test_pretrained_model_upload_sends_what_save_pretrained_writes():
    model = tiny_gpt_neox(seed=3)
    assert is_pretrained_model(model) and not is_pretrained_model(nn.Linear(2, 2))
    call = first_call(op_upload_checkpoint(model, None, "run", 0, None, None))
    assert call.data == {"collection": "run", "step": "0", "name": "GPTNeoXForCausalLM"}
    call = first_call(op_upload_checkpoint(model, None, "run", 0, "init", None))
    filename, data = sent_bytes(call)
    assert filename == "GPTNeoXForCausalLM.tar" and call.data == {"collection": "run", "step": "0", "name": "init"}
    members = tar_members(data)
    from safetensors.torch import load

    weights = load(members["model.safetensors"])
    assert torch.equal(weights["gpt_neox.embed_in.weight"], model.gpt_neox.embed_in.weight.detach())


# -- torch.export programs and torchvision models ----------------------------------------------------


def test_exported_program_is_sent_as_a_pt2_archive():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    program = torch.export.export(model, (torch.randn(5, 3),))
    call = first_call(op_upload_checkpoint(program, None, "exported", 1, None))
    filename, data = sent_bytes(call)
    assert filename == "program.pt2" and call.data == {"collection": "exported", "step": "1"}
    loaded = torch.export.load(io.BytesIO(data))
    x = torch.randn(5, 3)
    torch.testing.assert_close(loaded.module()(x), model(x))
    with pytest.raises(ValueError, match="torch.export program"):
        first_call(op_upload_checkpoint(program, {"kind": "mlp"}, None, None, None))


def test_an_unrecognised_torchvision_model_names_the_architecture_to_give():
    class ChangedHead(nn.Module):  # a torchvision-module class no builder reproduces (torchvision may be absent)
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

    ChangedHead.__module__ = "torchvision.models.resnet"
    with pytest.raises(ValueError, match='"kind": "torchvision", "name": "resnet18"'):
        first_call(op_upload_checkpoint(ChangedHead(), None, None, None, None))


def test_torchvision_model_uploads_state_dict_with_its_architecture():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    call = first_call(op_upload_checkpoint(model, None, None, None, None))  # the architecture is inferred
    import json

    assert json.loads(call.data["architecture"])["name"] == "resnet18"
    from safetensors.torch import load

    assert set(load(sent_bytes(call)[1])) == set(model.state_dict())


# -- the upload command's step parsing (no server needed: it fails before connecting) -------------------


def run_upload(*args: str) -> subprocess.CompletedProcess:
    """``lambdahat upload ARGS`` against a port where nothing listens: these refusals come first."""
    return subprocess.run([*lambdahat_command(), "upload", *args, "--url", "http://127.0.0.1:9"],
                          env=process_env(Path("/nonexistent"), COLUMNS="200"), capture_output=True, text=True,
                          timeout=120)


def test_cli_refuses_a_folder_without_a_step_number_before_uploading(pretrained_folder: Path, tmp_path: Path):
    final = tmp_path / "final"
    final.mkdir()
    for name in ("config.json", "model.safetensors"):
        (final / name).write_bytes((pretrained_folder / name).read_bytes())
    result = run_upload(str(pretrained_folder), str(final), "--collection", "c", "--step-from-filename")
    assert result.returncode == 2, result.stderr
    assert "no step number in folder name 'final'" in result.stderr and "Traceback" not in result.stderr
    result = run_upload(str(tmp_path))
    assert result.returncode == 2 and "has no config.json" in result.stderr, result.stderr
