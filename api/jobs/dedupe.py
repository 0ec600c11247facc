"""Identical work is not repeated: a job whose fingerprint matches a succeeded job of the same owner
is answered from that job's result (unless the request says ``force``).

The fingerprint is the sha256 of (checkpoint sha256, dataset sha256, loss, the requested config with
the estimator's constant defaults filled in). The API cannot resolve every default without torch
(epsilon comes from the curvature at w*, nbeta from n, num_draws from the warm-up), but those are
deterministic functions of exactly what is fingerprinted: the weights, the data, the loss and the
rest of the config, seed included. So ``{}`` and ``{"seed": 0, "sampler": "sgld"}`` are the same
work, while a different seed, sampler or any explicit setting is different work. What the
fingerprint cannot see: the worker's device when the config says ``device: auto`` and the
estimator's code version; ``force: true`` re-runs in those cases.

Only the owner's own jobs are ever reused: results never cross owners.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from backend.models import Checkpoint, Dataset, Job, JobStatus, utcnow
from estimator.config import constant_defaults

# Fields left out of a config take these values; fields defaulting to None are resolved by the worker
# from the fingerprinted inputs, so they are left out.
CONSTANT_DEFAULTS: dict[str, Any] = constant_defaults()


def canonical_config(config: dict[str, Any]) -> dict[str, Any]:
    """The requested config with constant defaults filled in and numbers in one form (4 == 4.0)."""
    filled = {**CONSTANT_DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
    return {k: _canonical_value(v) for k, v in sorted(filled.items())}


def _canonical_value(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list | tuple):
        return [_canonical_value(v) for v in value]
    return value


def fingerprint(checkpoint: Checkpoint, dataset: Dataset, loss: str, config: dict[str, Any]) -> str:
    payload = {"checkpoint_sha256": checkpoint.sha256, "dataset_sha256": dataset.sha256, "loss": loss,
               "config": canonical_config(config)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()



def reused_job(source: Job, **fields: Any) -> Job:
    """A new, already-succeeded job row carrying ``source``'s result; its traces are read from ``source``."""
    now = utcnow()
    return Job(
        **fields,
        resolved_config=source.resolved_config,
        status=JobStatus.succeeded.value,
        progress=1.0,
        draws_done=source.draws_done,
        started_at=now,
        finished_at=now,
        heartbeat_at=None,
        result=source.result,
        llc_mean=source.llc_mean,
        llc_std=source.llc_std,
        reused_from=source.id,
        worker=None,
    )
