"""Fixtures for the batch tests: the service fixtures of tests/helpers.py, plus seeded collections."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.helpers import api, make_api, other_api, random_state_dict, service_settings, write_safetensors  # noqa: F401
from tests.jobs.seed import CLASSIFIER, _store, seed_artifacts

FAST_CONFIG = {"num_chains": 1, "num_draws": 10, "num_burnin_steps": 5, "epsilon": 1e-3, "gamma": 100.0,
               "batch_size": 32, "seed": 1, "device": "cpu"}


def seed_collection(settings, owner: str, collection: str, steps: list[int | None], *,  # noqa: ANN001
                    seed_offset: int = 0) -> list[str]:
    """Checkpoints (distinct random weights) of ``collection`` with these steps, named step-<step>,
    inserted in the given order; returns their ids in that order."""
    from backend.db import session_scope
    from backend.models import Checkpoint
    from estimator.architectures import normalize, num_params

    architecture = normalize(CLASSIFIER)
    tmp = Path(tempfile.mkdtemp(prefix="seed-collection-"))
    rows = []
    try:
        for index, step in enumerate(steps):
            path = write_safetensors(tmp / f"{index}.safetensors",
                                     random_state_dict(architecture, seed=1000 + seed_offset + index))
            key, sha, size = _store(settings, "checkpoints", path)
            rows.append(Checkpoint(owner=owner, sha256=sha, size_bytes=size, format="safetensors",
                                   architecture=architecture, num_params=num_params(architecture), storage_key=key,
                                   collection=collection, step=step, name=f"step-{step}"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with session_scope(settings) as session:
        session.add_all(rows)
        session.flush()
        return [row.id for row in rows]


@pytest.fixture
def seeded(api):  # noqa: ANN001, F811
    """A dataset (n=64) and a single checkpoint owned by ``api``'s owner."""
    return seed_artifacts(api.settings, api.owner)
