"""Put a checkpoint and a dataset straight into a deployment (files in the artifact store + rows),
bypassing the upload endpoints, for job tests that are not about uploads. The files are the same
bytes an upload would store (safetensors written with tests.helpers), under content-addressed keys.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tests.helpers import MLP, random_state_dict, write_safetensors

CLASSIFIER = {"kind": "mlp", "in_features": 4, "hidden": [8], "out_features": 3, "activation": "tanh"}


@dataclass(frozen=True)
class Seeded:
    checkpoint_id: str
    dataset_id: str
    checkpoint_path: Path
    dataset_path: Path
    architecture: dict[str, Any]
    n: int


def classification_data(n: int = 64, in_features: int = 4, classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, in_features)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5).astype(np.int64)
    return x, np.minimum(y, classes - 1)


def _store(settings, kind: str, source: Path) -> tuple[str, str, int]:  # noqa: ANN001
    from backend.storage import ArtifactStore

    data = source.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    store = ArtifactStore(settings)
    key = store.key_for(kind, sha)
    target = store.path(key)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        shutil.copyfile(source, target)
    return key, sha, len(data)


def seed_artifacts(settings, owner: str = "alice", *, architecture: dict[str, Any] | None = None,  # noqa: ANN001
                   n: int = 64, seed: int = 0, checkpoint_format: str = "safetensors") -> Seeded:
    from backend.db import session_scope
    from backend.models import Checkpoint, Dataset
    from estimator.architectures import normalize, num_params

    architecture = normalize(architecture or CLASSIFIER)
    tmp = Path(tempfile.mkdtemp(prefix="seed-"))
    try:
        checkpoint_file = write_safetensors(tmp / "model.safetensors", random_state_dict(architecture, seed))
        x, y = classification_data(n, architecture.get("in_features", 4), architecture.get("out_features", 3), seed)
        dataset_file = write_safetensors(tmp / "data.safetensors", {"x": x, "y": y})
        ck_key, ck_sha, ck_size = _store(settings, "checkpoints", checkpoint_file)
        ds_key, ds_sha, ds_size = _store(settings, "datasets", dataset_file)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with session_scope(settings) as session:
        checkpoint = Checkpoint(owner=owner, sha256=ck_sha, size_bytes=ck_size, format=checkpoint_format,
                                architecture=architecture if checkpoint_format != "pt2" else None,
                                num_params=num_params(architecture), storage_key=ck_key, name="seeded")
        dataset = Dataset(owner=owner, sha256=ds_sha, size_bytes=ds_size, format="safetensors", n=n,
                          x_shape=list(x.shape), y_shape=list(y.shape), x_dtype="float32", y_dtype="int64",
                          storage_key=ds_key)
        session.add_all([checkpoint, dataset])
        session.flush()
        ids = checkpoint.id, dataset.id
    from backend.storage import ArtifactStore

    store = ArtifactStore(settings)
    return Seeded(ids[0], ids[1], store.path(ck_key), store.path(ds_key), architecture, n)


__all__ = ["CLASSIFIER", "MLP", "Seeded", "classification_data", "seed_artifacts"]
