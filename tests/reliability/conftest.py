"""Fixtures for the reliability tests: the service fixtures of tests/helpers.py plus seeded artifacts."""

from __future__ import annotations

import pytest

from tests.helpers import api, code_api, make_api, other_api, service_settings  # noqa: F401
from tests.jobs.seed import seed_artifacts


@pytest.fixture
def seeded(api):  # noqa: ANN001, F811
    """A checkpoint (small tanh MLP classifier) and a dataset (n=64) owned by ``api``'s owner."""
    return seed_artifacts(api.settings, api.owner)


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: these tests are about processes, not speed
    yield
    torch.set_num_threads(threads)
