"""Datasets through HTTP, on SQLite and PostgreSQL: upload, list, get, delete, and every bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest

from backend.models import Job
from tests.helpers import (
    assert_nothing_stored,
    row_counts,
    stored_files,
    upload_dataset,
    write_checkpoint,
    write_dataset,
)


@pytest.mark.parametrize(("fmt", "compressed"), [("safetensors", False), ("npz", False), ("npz", True)])
def test_upload_get_list_delete(api, tmp_path, fmt, compressed):
    x = np.random.default_rng(0).standard_normal((50, 6)).astype(np.float32)
    y = np.arange(50, dtype=np.int64) % 3
    path = write_dataset(tmp_path / "train.data", fmt=fmt, x=x, y=y, compressed=compressed)

    r = upload_dataset(api, path, name="digits")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["n"] == 50 and body["format"] == fmt and body["name"] == "digits"
    assert (body["x_shape"], body["y_shape"], body["x_dtype"], body["y_dtype"]) == ([50, 6], [50], "float32", "int64")
    import hashlib

    assert body["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert body["size_bytes"] == path.stat().st_size
    assert "storage_key" not in body and "owner" not in body
    assert stored_files(api.settings) == [f"datasets/{body['sha256'][:2]}/{body['sha256']}"]

    assert api.get(f"/v1/datasets/{body['id']}").json() == body
    assert [d["id"] for d in api.get("/v1/datasets").json()["items"]] == [body["id"]]

    r = api.delete(f"/v1/datasets/{body['id']}")
    assert r.status_code == 204
    assert api.get(f"/v1/datasets/{body['id']}").status_code == 404
    assert_nothing_stored(api.settings)


def test_name_defaults_to_the_file_name(api, tmp_path):
    r = upload_dataset(api, write_dataset(tmp_path / "mnist-small.npz", fmt="npz"))
    assert r.json()["name"] == "mnist-small.npz"


def test_pagination_with_cursor(api, tmp_path):
    ids = [upload_dataset(api, write_dataset(tmp_path / f"d{i}", seed=i)).json()["id"] for i in range(5)]
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.get("/v1/datasets", params=params).json()
        seen += [d["id"] for d in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]  # newest first, each exactly once
    assert api.get("/v1/datasets", params={"cursor": "not-a-cursor"}).status_code == 422
    assert api.get("/v1/datasets", params={"limit": 0}).status_code == 422


def test_identical_content_is_stored_once_and_removed_with_its_last_row(api, other_api, tmp_path):
    path = write_dataset(tmp_path / "d")
    first = upload_dataset(api, path).json()
    second = upload_dataset(other_api, path).json()
    assert first["id"] != second["id"] and first["sha256"] == second["sha256"]
    assert len(stored_files(api.settings)) == 1
    assert api.delete(f"/v1/datasets/{first['id']}").status_code == 204
    assert len(stored_files(api.settings)) == 1  # bob's row still uses it
    assert other_api.delete(f"/v1/datasets/{second['id']}").status_code == 204
    assert_nothing_stored(api.settings)


def test_other_owner_gets_404_and_cannot_delete(api, other_api, tmp_path):
    body = upload_dataset(api, write_dataset(tmp_path / "d")).json()
    for method in ("get", "delete"):
        r = getattr(other_api, method)(f"/v1/datasets/{body['id']}")
        assert r.status_code == 404
        assert r.json() == {"detail": f"dataset {body['id']} not found"}
    assert other_api.get("/v1/datasets").json()["items"] == []
    assert api.get(f"/v1/datasets/{body['id']}").status_code == 200


def test_delete_refused_while_jobs_use_it(api, tmp_path):
    from backend.db import session_scope
    from tests.helpers import MLP, upload_checkpoint

    dataset = upload_dataset(api, write_dataset(tmp_path / "d")).json()
    checkpoint = upload_checkpoint(api, write_checkpoint(tmp_path / "c"), MLP).json()
    with session_scope(api.settings) as session:
        session.add(Job(owner=api.owner, checkpoint_id=checkpoint["id"], dataset_id=dataset["id"], loss="mse", config={}))
    r = api.delete(f"/v1/datasets/{dataset['id']}")
    assert r.status_code == 409
    assert "used by 1 job(s)" in r.json()["detail"]
    assert api.get(f"/v1/datasets/{dataset['id']}").status_code == 200
    assert len(stored_files(api.settings)) == 2


@pytest.mark.parametrize("header", [None, "Bearer lh_wrong", "Basic abc", "Bearer "])
def test_missing_or_wrong_key_is_401(api, tmp_path, header):
    from fastapi.testclient import TestClient

    anonymous = TestClient(api.app)
    headers = {"Authorization": header} if header else {}
    path = write_dataset(tmp_path / "d")
    with open(path, "rb") as f:
        r = anonymous.post("/v1/datasets", files={"file": f}, headers=headers)
    assert r.status_code == 401 and "API key" in r.json()["detail"]
    assert anonymous.get("/v1/datasets", headers=headers).status_code == 401
    assert_nothing_stored(api.settings)


def test_revoked_key_is_401(api, tmp_path):
    from api.auth.keys import revoke_key
    from backend.db import session_scope

    with session_scope(api.settings) as session:
        revoke_key(session, api.key[:10])
    assert api.get("/v1/datasets").status_code == 401


def _npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _bad_datasets(tmp_path):
    good = write_dataset(tmp_path / "good").read_bytes()
    x = np.ones((10, 2), np.float32)
    nan_x = x.copy()
    nan_x[3, 1] = np.nan
    return {
        "nan": (_npz_bytes(x=nan_x, y=np.zeros(10)), "tensor 'x' contains 1 non-finite value(s)"),
        "inf in y": (_npz_bytes(x=x, y=np.array([np.inf] + [0.0] * 9)), "tensor 'y' contains 1 non-finite"),
        "mismatched n": (_npz_bytes(x=x, y=np.zeros(9)), "x has 10 (shape [10, 2]), y has 9"),
        "missing y": (_npz_bytes(x=x), "no tensor(s) ['y']"),
        "empty": (_npz_bytes(x=np.zeros((0, 2)), y=np.zeros(0)), "empty"),
        "scalar": (_npz_bytes(x=np.float32(1.0), y=np.float32(2.0)), "scalar"),
        "complex": (_npz_bytes(x=x.astype(np.complex64), y=np.zeros(10)), "dtype complex64"),
        "strings": (_npz_bytes(x=np.array(["a"] * 10), y=np.zeros(10)), "dtype str"),
        "object": (_npz_bytes(x=np.array([{"a": 1}] * 10, dtype=object), y=np.zeros(10)), "Python objects"),
        "truncated safetensors": (good[:-10], "truncated"),
        "truncated npz": (_npz_bytes(x=x, y=np.zeros(10))[:300], "corrupt or truncated zip"),
        "random bytes": (bytes(range(256)) * 4, "unrecognised file format"),
        "checkpoint not dataset": (write_checkpoint(tmp_path / "c").read_bytes(), "no tensor(s) ['x', 'y']"),
        "empty file": (b"", "empty"),
    }


@pytest.mark.parametrize(
    "case",
    ["nan", "inf in y", "mismatched n", "missing y", "empty", "scalar", "complex", "strings", "object",
     "truncated safetensors", "truncated npz", "random bytes", "checkpoint not dataset", "empty file"],
)
def test_bad_dataset_is_422_and_leaves_nothing(api, tmp_path, case):
    content, message = _bad_datasets(tmp_path)[case]
    r = api.post("/v1/datasets", files={"file": ("data.npz", content)})
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"], r.json()
    assert_nothing_stored(api.settings)


def test_torch_checkpoint_is_not_a_dataset(api, tmp_path):
    import torch

    torch.save({"x": torch.zeros(3), "y": torch.zeros(3)}, tmp_path / "d.pt")
    r = upload_dataset(api, tmp_path / "d.pt")
    assert r.status_code == 422 and "must be safetensors or npz" in r.json()["detail"]
    assert_nothing_stored(api.settings)


def test_oversize_upload_is_413_and_leaves_nothing(api, tmp_path):
    api.settings.max_upload_bytes = 1000  # the app reads the same Settings object
    path = write_dataset(tmp_path / "big", n=200)
    assert path.stat().st_size > 1000
    r = upload_dataset(api, path)
    assert r.status_code == 413
    assert "limit is 1000 bytes" in r.json()["detail"] and "LAMBDAHAT_MAX_UPLOAD_BYTES" in r.json()["detail"]
    assert_nothing_stored(api.settings)
    small = write_dataset(tmp_path / "small", n=4)
    assert upload_dataset(api, small).status_code == 201


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"content": b"raw bytes", "headers": {"Content-Type": "application/octet-stream"}}, 415, "multipart/form-data"),
        ({"json": {"file": "x"}}, 415, "multipart/form-data"),
        ({"files": {"name": (None, "no file")}}, 422, "form field 'file'"),
        ({"data": {"name": "urlencoded"}}, 415, "multipart/form-data"),
        ({"files": {"file": ("d", b"x"), "colour": (None, "red")}}, 422, "unexpected form field 'colour'"),
        ({"files": [("file", ("a", b"x")), ("file", ("b", b"y"))]}, 422, "sent twice"),
        ({"files": {"file": ("d", b"x"), "name": (None, "n" * 301)}}, 422, "at most 300"),
        ({"files": {"file": ("d", b"x"), "name": (None, "n" * 70000)}}, 422, "longer than 65536 bytes"),
        ({"content": b"--xyz\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc",
          "headers": {"Content-Type": "multipart/form-data; boundary=xyz"}}, 422, "closing boundary"),
    ],
)
def test_malformed_requests(api, kwargs, status, message):
    r = api.post("/v1/datasets", **kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    assert_nothing_stored(api.settings)


def test_row_counts_helper_sees_uploads(api, tmp_path):
    upload_dataset(api, write_dataset(tmp_path / "d"))
    assert row_counts(api.settings) == {"datasets": 1, "checkpoints": 0}
