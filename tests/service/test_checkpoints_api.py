"""Checkpoints through HTTP, on SQLite and PostgreSQL: upload (safetensors, .pt, .pt2), list, get,
delete, and every bad input — each refused upload leaves no row and no file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from backend.models import Job
from tests.helpers import (
    MLP,
    assert_nothing_stored,
    random_state_dict,
    stored_files,
    upload_checkpoint,
    upload_dataset,
    write_checkpoint,
    write_dataset,
    write_safetensors,
)

MLP_NORMALIZED = {**MLP, "bias": True}
MLP_PARAMS = 4 * 8 + 8 + 8 * 3 + 3


class _WriteFile:
    """A pickle payload that, if ever unpickled, creates a file: proof that code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.fixture(scope="module")
def torch_files(tmp_path_factory):
    """.pt / .pt2 files for the tests, written once (torch is slow to import and export)."""
    import torch

    from estimator.architectures import build_model

    d = tmp_path_factory.mktemp("torch-files")
    torch.manual_seed(0)
    model = build_model(MLP).eval()
    torch.save(model.state_dict(), d / "model.pt")
    torch.export.save(torch.export.export(model, (torch.randn(2, 4),)), d / "model.pt2")
    torch.save({"state_dict": model.state_dict()}, d / "nested.pt")
    torch.save({**model.state_dict(), "epoch": 3}, d / "extra.pt")
    bad = model.state_dict()
    bad["0.weight"][1, 2] = float("nan")
    torch.save(bad, d / "nan.pt")
    raw = (d / "model.pt").read_bytes()
    (d / "truncated.pt").write_bytes(raw[: len(raw) - 200])
    # The same malicious payload twice: one is uploaded, the other proves that the payload is real.
    torch.save({"0.weight": _WriteFile(str(d / "uploaded-payload-ran"))}, d / "evil.pt")
    torch.save({"0.weight": _WriteFile(str(d / "control-payload-ran"))}, d / "evil-control.pt")
    return d


def test_malicious_payload_is_real(torch_files):
    """Control: unpickled without weights_only, the payload does write its file."""
    code = f"import torch; torch.load({str(torch_files / 'evil-control.pt')!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, timeout=120)
    assert (torch_files / "control-payload-ran").exists()


def _check_roundtrip(api, body):
    assert api.get(f"/v1/checkpoints/{body['id']}").json() == body
    assert "storage_key" not in body and "owner" not in body
    assert stored_files(api.settings) == [f"checkpoints/{body['sha256'][:2]}/{body['sha256']}"]
    assert api.delete(f"/v1/checkpoints/{body['id']}").status_code == 204
    assert api.get(f"/v1/checkpoints/{body['id']}").status_code == 404
    assert_nothing_stored(api.settings)


def test_upload_safetensors(api, tmp_path):
    path = write_checkpoint(tmp_path / "weights.bin")
    r = upload_checkpoint(api, path, MLP, collection="run-1", step=100, name="mlp@100")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["format"] == "safetensors" and body["num_params"] == MLP_PARAMS
    assert body["architecture"] == MLP_NORMALIZED
    assert (body["collection"], body["step"], body["name"]) == ("run-1", 100, "mlp@100")
    _check_roundtrip(api, body)


def test_upload_pt_state_dict(api, torch_files):
    r = upload_checkpoint(api, torch_files / "model.pt", MLP, step=0)
    assert r.status_code == 201, r.text
    assert r.json()["format"] == "pt" and r.json()["num_params"] == MLP_PARAMS
    _check_roundtrip(api, r.json())


def test_upload_pt2_with_run_code_scope(code_api, torch_files):
    r = upload_checkpoint(code_api, torch_files / "model.pt2", collection="exported")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["format"] == "pt2" and body["architecture"] is None and body["num_params"] == MLP_PARAMS
    _check_roundtrip(code_api, body)


def test_pt2_without_run_code_is_403(api, torch_files):
    r = upload_checkpoint(api, torch_files / "model.pt2")
    assert r.status_code == 403
    assert "run-code" in r.json()["detail"]
    assert_nothing_stored(api.settings)


def test_pt2_with_architecture_is_422(code_api, torch_files):
    r = upload_checkpoint(code_api, torch_files / "model.pt2", MLP)
    assert r.status_code == 422 and "does not apply to .pt2" in r.json()["detail"]
    assert_nothing_stored(code_api.settings)


def test_malicious_pickle_is_refused_with_no_side_effect(api, torch_files):
    r = upload_checkpoint(api, torch_files / "evil.pt", MLP)
    assert r.status_code == 422, r.text
    assert "refused by the weights-only loader" in r.json()["detail"] and "posix.system" in r.json()["detail"]
    assert not (torch_files / "uploaded-payload-ran").exists()
    assert_nothing_stored(api.settings)


# Content checks that do not touch the database: SQLite only (each .pt inspection starts a subprocess).
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("truncated.pt", "corrupt or truncated zip"),
        ("nested.pt", "save model.state_dict(), not a dict that contains it"),
        ("extra.pt", "'epoch' is a int, not a tensor"),
        ("nan.pt", "non-finite values (NaN or inf): 0.weight (1)"),
    ],
)
def test_bad_pt_files(api, torch_files, name, message):
    r = upload_checkpoint(api, torch_files / name, MLP)
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]
    assert_nothing_stored(api.settings)


def _weights(**changes):
    state = random_state_dict(MLP)
    for key, value in changes.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    return state


def _bad_checkpoints(tmp_path):
    """case -> (file bytes, architecture form value (None: omitted), expected message)."""
    good = write_checkpoint(tmp_path / "good").read_bytes()
    arch = json.dumps(MLP)

    def st(state):
        return write_safetensors(tmp_path / "x", state).read_bytes()

    nan = random_state_dict(MLP)
    nan["2.bias"][1] = np.nan
    return {
        "architecture missing": (good, None, "'architecture' is required for safetensors"),
        "architecture not JSON": (good, "{kind: mlp}", "'architecture' is not valid JSON"),
        "architecture not an object": (good, "[1, 2]", "invalid architecture: architecture must be a JSON object"),
        "unknown kind": (good, json.dumps({"kind": "lstm"}), "'kind' must be one of"),
        "bad field": (good, json.dumps({**MLP, "hidden": [-1]}), "every entry of 'hidden' must be between 1"),
        "shape mismatch": (good, json.dumps({**MLP, "hidden": [9]}), "shape mismatches: 0.weight: expected [9, 4], got [8, 4]"),
        "missing key": (st(_weights(**{"2.bias": None})), arch, "missing keys: 2.bias"),
        "unexpected key": (st(_weights(**{"3.weight": np.zeros(2, np.float32)})), arch, "unexpected keys: 3.weight"),
        "integer weights": (st(_weights(**{"0.bias": np.zeros(8, np.int32)})), arch, "0.bias: int32"),
        "nan weights": (st(nan), arch, "non-finite values (NaN or inf): 2.bias (1)"),
        "truncated": (good[:-7], arch, "truncated safetensors file"),
        "random bytes": (os.urandom(512).replace(b"\x80", b"\x00").replace(b"PK", b"pk"), arch, "unrecognised file format"),
        "npz": (write_dataset(tmp_path / "d", fmt="npz").read_bytes(), arch, "npz is a dataset format"),
    }


@pytest.mark.parametrize(
    "case",
    ["architecture missing", "architecture not JSON", "architecture not an object", "unknown kind", "bad field",
     "shape mismatch", "missing key", "unexpected key", "integer weights", "nan weights", "truncated",
     "random bytes", "npz"],
)
def test_bad_checkpoint_is_422_and_leaves_nothing(api, tmp_path, case):
    content, architecture, message = _bad_checkpoints(tmp_path)[case]
    data = {"architecture": architecture} if architecture is not None else {}
    r = api.post("/v1/checkpoints", files={"file": ("model.safetensors", content)}, data=data)
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"], r.json()
    assert_nothing_stored(api.settings)


def test_missing_and_unexpected_keys_are_named_together(api, tmp_path):
    state = _weights(**{"0.bias": None, "2.bias": None, "head.weight": np.zeros((3, 8), np.float32)})
    r = upload_checkpoint(api, write_safetensors(tmp_path / "c", state), MLP)
    detail = r.json()["detail"]
    assert r.status_code == 422
    assert "missing keys: 0.bias, 2.bias" in detail and "unexpected keys: head.weight" in detail


@pytest.mark.parametrize(("step", "message"), [("ten", "'step' must be a non-negative integer"), ("-1", "between 0 and")])
def test_bad_step(api, tmp_path, step, message):
    r = upload_checkpoint(api, write_checkpoint(tmp_path / "c"), MLP, step=step)
    assert r.status_code == 422 and message in r.json()["detail"]
    assert_nothing_stored(api.settings)


def test_oversize_is_413(api, tmp_path):
    api.settings.max_upload_bytes = 200
    r = upload_checkpoint(api, write_checkpoint(tmp_path / "c"), MLP)
    assert r.status_code == 413 and "limit is 200 bytes" in r.json()["detail"]
    assert_nothing_stored(api.settings)


def test_list_filters_and_pages(api, other_api, tmp_path):
    made = {}
    for i, collection in enumerate(["a", "b", "a", "a", None]):
        body = upload_checkpoint(api, write_checkpoint(tmp_path / f"c{i}", seed=i), MLP, collection=collection, step=i).json()
        made.setdefault(collection, []).append(body["id"])
    upload_checkpoint(other_api, write_checkpoint(tmp_path / "bob", seed=99), MLP, collection="a")

    everything = api.get("/v1/checkpoints").json()
    assert len(everything["items"]) == 5 and everything["next_cursor"] is None
    first = api.get("/v1/checkpoints", params={"collection": "a", "limit": 2}).json()
    second = api.get("/v1/checkpoints", params={"collection": "a", "limit": 2, "cursor": first["next_cursor"]}).json()
    assert [c["id"] for c in first["items"] + second["items"]] == made["a"][::-1]
    assert second["next_cursor"] is None
    assert [c["step"] for c in first["items"]] == [3, 2]
    assert api.get("/v1/checkpoints", params={"collection": "zzz"}).json()["items"] == []


def test_other_owner_gets_404(api, other_api, tmp_path):
    body = upload_checkpoint(api, write_checkpoint(tmp_path / "c"), MLP).json()
    for method in ("get", "delete"):
        r = getattr(other_api, method)(f"/v1/checkpoints/{body['id']}")
        assert r.status_code == 404 and r.json() == {"detail": f"checkpoint {body['id']} not found"}
    assert api.get(f"/v1/checkpoints/{body['id']}").status_code == 200


def test_wrong_key_is_401_before_the_body_is_stored(api, tmp_path):
    from fastapi.testclient import TestClient

    intruder = TestClient(api.app, headers={"Authorization": "Bearer lh_not-a-key"})
    r = upload_checkpoint(intruder, write_checkpoint(tmp_path / "c"), MLP)
    assert r.status_code == 401
    assert intruder.get("/v1/checkpoints").status_code == 401
    assert_nothing_stored(api.settings)


def test_delete_refused_while_jobs_use_it(api, tmp_path):
    from backend.db import session_scope

    checkpoint = upload_checkpoint(api, write_checkpoint(tmp_path / "c"), MLP).json()
    dataset = upload_dataset(api, write_dataset(tmp_path / "d")).json()
    with session_scope(api.settings) as session:
        session.add(Job(owner=api.owner, checkpoint_id=checkpoint["id"], dataset_id=dataset["id"], loss="mse", config={}))
    r = api.delete(f"/v1/checkpoints/{checkpoint['id']}")
    assert r.status_code == 409 and "used by 1 job(s)" in r.json()["detail"]
    assert api.get(f"/v1/checkpoints/{checkpoint['id']}").status_code == 200


def test_openapi_documents_the_multipart_forms(api):
    spec = api.get("/openapi.json").json()
    for path, fields in (("/v1/checkpoints", {"file", "architecture", "task", "collection", "step", "name"}),
                         ("/v1/datasets", {"file", "name"})):
        schema = spec["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert set(schema["properties"]) == fields and schema["required"] == ["file"]
        assert schema["properties"]["file"]["format"] == "binary"


def test_zip_member_names_cannot_choose_storage_paths(code_api, tmp_path):
    """Storage is content-addressed: an archive full of path-traversal names is just refused."""
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
        zf.writestr("../../escape/data.pkl", b"x")
    r = upload_checkpoint(code_api, tmp_path / "evil.zip", MLP)
    assert r.status_code == 422
    assert not (tmp_path.parent / "escape").exists()
    assert_nothing_stored(code_api.settings)


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (("get", "/v1/checkpoints/ab%00cd"), 404),
        (("delete", "/v1/checkpoints/ab%00cd"), 404),
        (("get", "/v1/checkpoints/" + "a" * 5000), 404),
        (("get", "/v1/datasets/not-an-id"), 404),
        (("get", "/v1/checkpoints?collection=a%00b"), 422),
        (("get", "/v1/checkpoints?cursor=WyIyMDI2LTAxLTAxIiwgImFcdTAwMDBiIl0"), 422),  # id with a NUL inside
        (("get", "/v1/checkpoints?cursor=%FF%FE"), 422),
    ],
)
def test_hostile_ids_and_parameters_never_reach_the_database(api, request_, status):
    """Strings PostgreSQL refuses (NUL bytes) or that cannot be ids answer 404/422, never 500."""
    method, url = request_
    assert getattr(api, method)(url).status_code == status


def test_nul_in_form_fields_is_422(api, tmp_path):
    r = upload_checkpoint(api, write_checkpoint(tmp_path / "c"), MLP, collection="a\x00b")
    assert r.status_code == 422 and "NUL" in r.json()["detail"]
    assert_nothing_stored(api.settings)
