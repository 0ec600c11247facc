"""Test helpers and fixtures for anything that talks to the service.

Import fixtures into a conftest.py or test module to use them::

    from tests.helpers import api, other_api, code_api, service_settings  # noqa: F401  (fixtures)
    from tests.helpers import write_checkpoint, write_dataset, MLP

- ``service_settings``: ``settings`` (from tests/conftest.py: own data dir, SQLite or PostgreSQL)
  with the migrations applied.
- ``api``: a ``TestClient`` for ``create_app(service_settings, run_dispatcher=False)`` (lifespan
  run), authenticated as owner "alice". ``api.key`` is the key, ``api.owner`` the owner,
  ``backend.settings`` the settings, ``api.app`` the app.
- ``other_api``: the same app as owner "bob" (another owner's ids must answer 404).
- ``code_api``: the same app as owner "alice" with a key holding the ``run-code`` scope.
- ``make_api(run_dispatcher=...)``: a factory fixture when a test needs the embedded dispatcher.
- ``serve_in_thread(settings)``: a context manager running the app on a real uvicorn server; yields its URL.

Plain functions (no torch needed): ``create_key``, ``write_checkpoint`` (random weights matching a
built-in architecture, safetensors or npz-free), ``write_dataset`` (safetensors or npz).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

MLP: dict[str, Any] = {"kind": "mlp", "in_features": 4, "hidden": [8], "out_features": 3, "activation": "relu"}


# ---------------------------------------------------------------------------------------------
# Keys and clients


def create_key(settings, name: str, *, owner: str | None = None, scopes: list[str] | None = None) -> str:  # noqa: ANN001
    """Create an API key directly in the database; returns the plaintext key."""
    from api.auth.keys import create_key as _create
    from backend.db import session_scope

    with session_scope(settings) as session:
        _, plaintext = _create(session, name=name, owner=owner, scopes=scopes or [])
    return plaintext


def migrate(settings) -> None:  # noqa: ANN001
    from backend.migrate import upgrade

    upgrade(settings)


def api_client(app, settings, key: str, owner: str):  # noqa: ANN001
    """A TestClient that sends ``key`` on every request (not entered: no lifespan of its own)."""
    from fastapi.testclient import TestClient

    client = TestClient(app, headers={"Authorization": f"Bearer {key}"})
    client.key = key  # type: ignore[attr-defined]
    client.owner = owner  # type: ignore[attr-defined]
    client.settings = settings  # type: ignore[attr-defined]
    return client


@contextmanager
def running_app(settings, *, run_dispatcher: bool = False) -> Iterator[Any]:  # noqa: ANN001
    """``create_app(settings)`` with its lifespan running (startup and shutdown)."""
    from fastapi.testclient import TestClient

    from api.app import create_app

    app = create_app(settings, run_dispatcher=run_dispatcher)
    with TestClient(app):
        yield app


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_in_thread(settings, *, run_dispatcher: bool = False) -> Iterator[str]:  # noqa: ANN001
    """The app on a real uvicorn server (in a thread, lifespan on); yields its base URL."""
    import threading
    import time

    import uvicorn

    from api.app import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, run_dispatcher=run_dispatcher), host="127.0.0.1",
                                           port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture
def service_settings(settings):  # noqa: ANN001
    """``settings`` with the schema migrated (both databases)."""
    migrate(settings)
    return settings


@pytest.fixture
def make_api(service_settings) -> Iterator[Callable[..., Any]]:  # noqa: ANN001
    """``make_api(owner="alice", scopes=(), run_dispatcher=False)``: an authenticated client of one app.

    The app (and its lifespan) is created on the first call; later calls add clients of other owners
    or scopes to the same app.
    """
    from contextlib import ExitStack

    state: dict[str, Any] = {}
    with ExitStack() as stack:

        def make(owner: str = "alice", scopes: tuple[str, ...] | list[str] = (), run_dispatcher: bool = False):  # noqa: ANN202
            if "app" not in state:
                state["app"] = stack.enter_context(running_app(service_settings, run_dispatcher=run_dispatcher))
            key = create_key(service_settings, f"{owner}-{'-'.join(scopes) or 'plain'}", owner=owner, scopes=list(scopes))
            return api_client(state["app"], service_settings, key, owner)

        yield make


@pytest.fixture
def api(make_api):  # noqa: ANN001
    return make_api("alice")


@pytest.fixture
def other_api(api, make_api):  # noqa: ANN001
    return make_api("bob")


@pytest.fixture
def code_api(api, make_api):  # noqa: ANN001
    return make_api("alice", scopes=("run-code",))


# ---------------------------------------------------------------------------------------------
# Files


def random_state_dict(architecture: dict[str, Any], seed: int = 0, dtype: str = "float32") -> dict[str, np.ndarray]:
    """Random weights with exactly the state_dict of a built-in architecture (numpy, no torch)."""
    from estimator.architectures import normalize, state_dict_spec

    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for key, spec in state_dict_spec(normalize(architecture)).items():
        if spec.integer:
            out[key] = np.zeros(spec.shape, dtype=np.int64)
        else:
            out[key] = (rng.standard_normal(spec.shape) * 0.1).astype(dtype)
    return out


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> Path:
    """Write safetensors with numpy only (the format is an 8-byte length, a JSON header, raw bytes)."""
    names = {np.dtype("float64"): "F64", np.dtype("float32"): "F32", np.dtype("float16"): "F16",
             np.dtype("int64"): "I64", np.dtype("int32"): "I32", np.dtype("int16"): "I16",
             np.dtype("int8"): "I8", np.dtype("uint8"): "U8", np.dtype("bool"): "BOOL"}
    header: dict[str, Any] = {}
    blobs = []
    offset = 0
    for key, array in tensors.items():
        array = np.ascontiguousarray(array)
        data = array.astype(array.dtype.newbyteorder("<")).tobytes()
        header[key] = {"dtype": names[array.dtype], "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = Path(path)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for blob in blobs:
            f.write(blob)
    return path


def write_checkpoint(path: Path, architecture: dict[str, Any] | None = None, seed: int = 0) -> Path:
    """A safetensors checkpoint with random weights for ``architecture`` (default: the small MLP)."""
    return write_safetensors(path, random_state_dict(architecture or MLP, seed))


def make_regression_data(n: int = 64, in_features: int = 4, out_features: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, in_features)).astype(np.float32)
    w = rng.standard_normal((in_features, out_features)).astype(np.float32)
    y = (x @ w + 0.1 * rng.standard_normal((n, out_features))).astype(np.float32)
    return x, y


def write_dataset(path: Path, n: int = 64, in_features: int = 4, out_features: int = 3, *, fmt: str = "safetensors",
                  seed: int = 0, x: np.ndarray | None = None, y: np.ndarray | None = None, compressed: bool = False) -> Path:
    """A regression dataset (x: [n, in_features], y: [n, out_features]) as safetensors or npz."""
    if x is None or y is None:
        x, y = make_regression_data(n, in_features, out_features, seed)
    path = Path(path)
    if fmt == "safetensors":
        return write_safetensors(path, {"x": x, "y": y})
    with open(path, "wb") as f:  # a file object keeps numpy from appending ".npz" to the name
        (np.savez_compressed if compressed else np.savez)(f, x=x, y=y)
    return path


def upload_checkpoint(client, path: Path, architecture: dict[str, Any] | None = None, **fields: Any):  # noqa: ANN001, ANN201
    """POST /v1/checkpoints; returns the response."""
    data = {k: (json.dumps(v) if k == "architecture" else str(v)) for k, v in fields.items() if v is not None}
    if architecture is not None:
        data["architecture"] = json.dumps(architecture)
    with open(path, "rb") as f:
        return client.post("/v1/checkpoints", files={"file": (Path(path).name, f)}, data=data)


def upload_dataset(client, path: Path, **fields: Any):  # noqa: ANN001, ANN201
    with open(path, "rb") as f:
        return client.post("/v1/datasets", files={"file": (Path(path).name, f)}, data={k: str(v) for k, v in fields.items()})


# ---------------------------------------------------------------------------------------------
# What is stored


def stored_files(settings) -> list[str]:  # noqa: ANN001
    """Every file under the artifact dir (staging included), relative, except the lock file."""
    root = Path(settings.artifact_dir)
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != ".lock")


def row_counts(settings) -> dict[str, int]:  # noqa: ANN001
    from sqlalchemy import func, select

    from backend.db import session_scope
    from backend.models import Checkpoint, Dataset

    with session_scope(settings) as session:
        return {
            "datasets": session.scalar(select(func.count()).select_from(Dataset)),
            "checkpoints": session.scalar(select(func.count()).select_from(Checkpoint)),
        }


def assert_nothing_stored(settings) -> None:  # noqa: ANN001
    """No artifact rows and no files (stored or staged) exist: a refused upload left nothing behind."""
    assert row_counts(settings) == {"datasets": 0, "checkpoints": 0}
    assert stored_files(settings) == []
