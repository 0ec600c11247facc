"""Client-side serialisation, architecture inference, key/URL resolution and response parsing (no server)."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest
import torch
from safetensors.numpy import load as load_numpy
from safetensors.torch import load as load_torch
from torch import nn

from lambdahat import NotFound, ServerError, Unauthorized, ValidationFailed
from lambdahat._http import check_response, data_dir, resolve_api_key, resolve_url
from lambdahat._ops import object_id, parse_traces
from lambdahat.models import Job, warning_text
from lambdahat.serialize import (
    dataset_to_safetensors,
    infer_architecture,
    state_dict_to_safetensors,
    step_from_filename,
)

# -- datasets and state_dicts as safetensors ------------------------------------------------


def test_numpy_dataset_round_trips_through_safetensors():
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    y = np.array([0, 1, 2, 0, 1, 2], dtype=np.int64)
    loaded = load_numpy(dataset_to_safetensors({"x": x, "y": y}))
    np.testing.assert_array_equal(loaded["x"], x)
    np.testing.assert_array_equal(loaded["y"], y)
    assert loaded["y"].dtype == np.int64


def test_torch_dataset_round_trips_and_non_contiguous_tensors_are_accepted():
    x = torch.arange(12, dtype=torch.float32).reshape(2, 6).T  # a non-contiguous view
    y = torch.tensor([1, 0, 1, 0, 1, 0])
    loaded = load_torch(dataset_to_safetensors({"x": x, "y": y}))
    assert torch.equal(loaded["x"], x) and torch.equal(loaded["y"], y)


def test_dataset_dict_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"missing \['y'\]"):
        dataset_to_safetensors({"x": np.zeros((3, 2))})
    with pytest.raises(ValueError, match="'y' has dtype"):
        dataset_to_safetensors({"x": np.zeros((2, 1)), "y": np.array(["a", "b"])})
    with pytest.raises(TypeError, match="dict of arrays"):
        dataset_to_safetensors([1, 2, 3])


def test_state_dict_with_tied_weights_serialises():
    model = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))
    model[1].weight = model[0].weight  # shared storage: safetensors refuses it unless copied apart
    loaded = load_torch(state_dict_to_safetensors(model.state_dict()))
    assert torch.equal(loaded["0.weight"], model[0].weight.detach())
    assert torch.equal(loaded["1.weight"], model[0].weight.detach())
    with pytest.raises(TypeError, match="not a tensor"):
        state_dict_to_safetensors({"a": 1.0})


# -- architecture inference -----------------------------------------------------------------


def test_mlp_architecture_is_inferred_from_a_sequential():
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 8), nn.Tanh(), nn.Linear(8, 3))
    assert infer_architecture(model) == {
        "kind": "mlp",
        "in_features": 16,
        "hidden": [32, 8],
        "out_features": 3,
        "activation": "tanh",
        "bias": True,
    }
    single = infer_architecture(nn.Sequential(nn.Linear(4, 2)))
    assert single["hidden"] == [] and single["in_features"] == 4


def test_bias_free_linear_stack_is_a_deep_linear_network():
    model = nn.Sequential(nn.Linear(10, 5, bias=False), nn.Linear(5, 5, bias=False), nn.Linear(5, 10, bias=False))
    assert infer_architecture(model) == {"kind": "dln", "widths": [10, 5, 5, 10]}


def test_bias_free_mlp_keeps_bias_false():
    model = nn.Sequential(nn.Linear(4, 6, bias=False), nn.ReLU(), nn.Linear(6, 2, bias=False))
    assert infer_architecture(model)["bias"] is False


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (nn.Conv2d(1, 2, 3), "cannot infer the architecture of a Conv2d"),
        (nn.Sequential(nn.Linear(4, 4), nn.ReLU()), "none after the last"),
        (nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.ReLU(), nn.Linear(4, 2)), "one activation between"),
        (nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)), "mixed activations"),
        (nn.Sequential(nn.Linear(4, 4), nn.LeakyReLU(), nn.Linear(4, 2)), "LeakyReLU is not one of"),
        (nn.Sequential(nn.Linear(4, 4), nn.GELU(approximate="tanh"), nn.Linear(4, 2)), "exact GELU"),
        (nn.Sequential(nn.Linear(4, 4, bias=False), nn.ReLU(), nn.Linear(4, 2)), "some Linear layers have biases"),
        (nn.Sequential(nn.ReLU()), "no Linear layer"),
    ],
)
def test_unrecognised_models_ask_for_an_explicit_architecture(model, message):
    with pytest.raises(ValueError, match=message) as info:
        infer_architecture(model)
    assert "architecture=" in str(info.value) or "chain" in str(info.value)


def test_inferred_architectures_match_the_servers_state_dict_layout():
    """Cross-check with the server's registry (tests may import server code; the SDK never does)."""
    architectures = pytest.importorskip("estimator.architectures")
    models = [
        nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3)),
        nn.Sequential(nn.Linear(5, 7), nn.GELU(), nn.Linear(7, 7), nn.GELU(), nn.Linear(7, 1)),
        nn.Sequential(nn.Linear(3, 4, bias=False), nn.SiLU(), nn.Linear(4, 2, bias=False)),
        nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 4, bias=False)),
        nn.Sequential(nn.Linear(4, 2)),
    ]
    for model in models:
        config = architectures.normalize(infer_architecture(model))
        spec = architectures.state_dict_spec(config)
        assert {k: tuple(v.shape) for k, v in spec.items()} == {k: tuple(v.shape) for k, v in model.state_dict().items()}


# -- small parsers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "step"),
    [("step_100.safetensors", 100), ("run-3/ckpt-00050.pt", 50), ("model.step2000.pt", 2000), ("e12_s7.pt2", 7)],
)
def test_step_from_filename_takes_the_last_number_of_the_stem(name, step):
    assert step_from_filename(name) == step


def test_step_from_filename_without_a_number_is_an_error():
    with pytest.raises(ValueError, match="no step number"):
        step_from_filename("final.safetensors")


def test_object_id_accepts_ids_objects_and_dicts():
    job = Job(id="abc", status="queued")
    assert object_id("abc", "job") == object_id(job, "job") == object_id({"id": "abc"}, "job") == "abc"
    with pytest.raises(TypeError, match="expected a job id"):
        object_id(3, "job")
    for bad in ("", "../datasets", "abc/def", "a?b=c"):
        with pytest.raises(ValueError, match="not a valid job id"):
            object_id(bad, "job")


def test_api_key_precedence_argument_then_environment_then_key_file(tmp_path, monkeypatch):
    monkeypatch.setenv("LAMBDAHAT_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("LAMBDAHAT_API_KEY", raising=False)
    assert resolve_api_key(None) == (None, "none")
    (tmp_path / "api_key").write_text("lh_from_file\n")
    assert resolve_api_key(None) == ("lh_from_file", str(tmp_path / "api_key"))
    monkeypatch.setenv("LAMBDAHAT_API_KEY", "lh_from_env")
    assert resolve_api_key(None) == ("lh_from_env", "LAMBDAHAT_API_KEY")
    assert resolve_api_key("lh_explicit") == ("lh_explicit", "argument")


def test_data_dir_follows_xdg_when_not_set_explicitly(tmp_path, monkeypatch):
    monkeypatch.delenv("LAMBDAHAT_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert data_dir() == tmp_path / "lambdahat"


def test_url_resolution(monkeypatch):
    monkeypatch.delenv("LAMBDAHAT_URL", raising=False)
    assert resolve_url(None) == "http://127.0.0.1:8000"
    monkeypatch.setenv("LAMBDAHAT_URL", "localhost:9000/")
    assert resolve_url(None) == "http://localhost:9000"
    assert resolve_url("https://lh.example/") == "https://lh.example"


def test_error_responses_become_typed_exceptions_with_the_servers_message():
    validation = httpx.Response(
        422,
        json={"detail": [{"loc": ["body", "config", "num_chains"], "msg": "Input should be greater than or equal to 1"}]},
    )
    with pytest.raises(ValidationFailed) as info:
        check_response(validation, key_source="argument")
    assert info.value.status_code == 422
    assert info.value.message == "config.num_chains: Input should be greater than or equal to 1"

    with pytest.raises(NotFound, match="no such job"):
        check_response(httpx.Response(404, json={"detail": "no such job"}), key_source="argument")
    with pytest.raises(Unauthorized, match="LAMBDAHAT_API_KEY"):  # a hint when no key was configured
        check_response(httpx.Response(401, json={"detail": "missing API key"}), key_source="none")
    with pytest.raises(ServerError, match="Bad Gateway"):
        check_response(httpx.Response(502, text=""), key_source="argument")
    ok = httpx.Response(200, json={})
    assert check_response(ok, key_source="argument") is ok


def test_traces_parse_from_npz_and_from_ragged_json():
    buffer = io.BytesIO()
    np.savez(buffer, loss=np.ones((2, 5), np.float32), llc=np.zeros((2, 5), np.float32), init_loss=np.float64(0.25))
    parsed = parse_traces(httpx.Response(200, content=buffer.getvalue(), headers={"content-type": "application/x-npz"}))
    assert parsed["loss"].shape == (2, 5) and parsed["init_loss"] == 0.25

    body = {"num_chains": 2, "init_loss": 0.5, "loss": [[1.0, 2.0, 3.0], [1.5]], "llc": [[0.1, 0.2, 0.3], [0.1]]}
    parsed = parse_traces(httpx.Response(200, content=json.dumps(body), headers={"content-type": "application/json"}))
    assert parsed["loss"].shape == (2, 3)
    assert np.isnan(parsed["loss"][1, 1:]).all() and parsed["loss"][1, 0] == 1.5

    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ServerError, match="not a readable npz"):
        parse_traces(httpx.Response(200, content=pickled.getvalue()))


def test_warning_text_reads_strings_and_structured_warnings():
    assert warning_text("plain") == "plain"
    assert warning_text({"code": "low_ess", "message": "ESS 12 < 100", "chain": None}) == "low_ess: ESS 12 < 100"


def test_traces_that_are_not_an_npz_archive_are_a_server_error():
    single = io.BytesIO()
    np.save(single, np.ones(3))
    with pytest.raises(ServerError, match="single array"):
        parse_traces(httpx.Response(200, content=single.getvalue()))
    with pytest.raises(ServerError, match="not a readable npz"):
        parse_traces(httpx.Response(200, content=b"garbage"))
