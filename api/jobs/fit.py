"""Submit-time checks that a job can run at all: the dataset fits the loss and the model, and the
model fits the worker's memory. Plain Python (the stored metadata only), so a job that would fail
in the worker is refused with a 422 that names the numbers, before it is queued.

- A token dataset needs a loss that reads token data: ``causal_lm`` (labels optional, [N, T]),
  ``masked_lm`` (labels [N, T] required) or ``cross_entropy`` (labels [N], one class per sequence,
  and a model that classifies sequences: an ``hf`` architecture with task ``sequence_classification``).
- Token ids and LM labels must be below the model's vocabulary size and T at most its context length
  (``architectures.token_limits``).
- Memory: ``estimate_memory_bytes(params, chains, bytes, activations, eval_activations)`` against the
  worker's device (``worker_memory_bytes``; in embedded mode the host's RAM). That is the run with
  one chain at a time (the state of every chain is held whatever the chain mode, so chains cost
  memory even then; the chain-mode probe's two chains and the L_n(w*) evaluation's larger batches
  are counted too, as ``estimator.memory`` describes);
  when it does not fit the job is refused. When it fits but all chains in one vectorised call
  (each adding a gradient row and its own activations) would not, the job's
  ``max_chains_per_chunk`` is set to the most chains per call that fit, unless the request set it.
"""

from __future__ import annotations

import os
from typing import Any

from api.errors import Unprocessable
from backend.models import Checkpoint, Dataset
from backend.settings import Settings
from estimator import architectures, memory
from estimator.config import LLCConfig

TOKEN_LOSSES = ("causal_lm", "masked_lm", "cross_entropy")
BYTES_PER_DTYPE = {"float32": 4, "float64": 8, "bfloat16": 4}  # bfloat16 keeps the chain state in float32
DEFAULT_BATCH = 512  # LLCConfig's batch_size None: min(n, 512)
_HIDDEN_FIELDS = ("hidden_size", "n_embd", "d_model")
_LAYER_FIELDS = ("num_hidden_layers", "n_layer", "n_layers")


def check_fits(settings: Settings, checkpoint: Checkpoint, dataset: Dataset, loss: str, config: dict[str, Any]) -> None:
    """Raise Unprocessable when the job cannot run: data/loss/model mismatch, or not enough memory.
    May set ``config["max_chains_per_chunk"]`` so that vectorised chains fit the worker's memory."""
    if dataset.kind == "tokens":
        _check_token_data(checkpoint, dataset, loss)
    _check_memory(settings, checkpoint, dataset, config)


def _check_token_data(checkpoint: Checkpoint, dataset: Dataset, loss: str) -> None:
    tensors = dataset.tensors or {}
    labels = tensors.get("labels")
    n, seq_len = dataset.n, dataset.seq_len
    what = f"dataset '{dataset.id}'"
    if loss not in TOKEN_LOSSES:
        raise Unprocessable(f"loss {loss!r} does not apply to the token {what}; use one of {', '.join(TOKEN_LOSSES)}")
    if loss == "masked_lm" and (labels is None or labels["shape"] != [n, seq_len]):
        raise Unprocessable(f"loss masked_lm needs 'labels' [N, T] = {[n, seq_len]} in the {what} (the true tokens at "
                            "the masked positions, -100 elsewhere)")
    if loss == "causal_lm" and labels is not None and labels["shape"] != [n, seq_len]:
        raise Unprocessable(f"loss causal_lm needs 'labels' of shape [N, T] = {[n, seq_len]} (or none: the input "
                            f"ids are the targets); the {what} has labels {labels['shape']}")
    architecture = checkpoint.architecture
    if loss == "cross_entropy":
        if labels is None or labels["shape"] != [n]:
            raise Unprocessable(f"loss cross_entropy on tokens needs 'labels' [N] = {[n]} (one class per sequence) "
                                f"in the {what}")
        if architecture is not None and not (architecture.get("kind") == "hf"
                                             and architecture.get("task") == "sequence_classification"):
            raise Unprocessable(f"loss cross_entropy on a token dataset needs a sequence classifier (an hf checkpoint "
                                f"with task sequence_classification); checkpoint '{checkpoint.id}' is "
                                f"{_describe(architecture)}")
    if architecture is None:
        return  # a .pt2 archive: its input shapes are its own
    limits = architectures.token_limits(architecture)
    if limits is None:
        raise Unprocessable(f"the token {what} needs a model that reads token ids (kind hf or transformer); "
                            f"checkpoint '{checkpoint.id}' is {_describe(architecture)}")
    vocab, context = limits
    max_id = dataset.max_token_id if dataset.max_token_id is not None else 0
    if max_id >= vocab:
        raise Unprocessable(f"the {what} holds token id {max_id}, but the model's vocabulary has {vocab} entries "
                            f"(ids 0..{vocab - 1})")
    if seq_len is not None and seq_len > context:
        raise Unprocessable(f"the {what} has sequences of T={seq_len} tokens, more than the model's context "
                            f"length of {context}")
    if labels is not None and loss in ("causal_lm", "masked_lm") and labels["max"] >= vocab:
        raise Unprocessable(f"the {what} holds label {labels['max']}, but the model's vocabulary has {vocab} entries "
                            f"(labels 0..{vocab - 1}, or -100)")
    if labels is not None and loss == "cross_entropy":
        classes = _num_labels(architecture)
        if classes is not None and labels["max"] >= classes:
            raise Unprocessable(f"the {what} holds class {labels['max']}, but the model has {classes} labels "
                                f"(classes 0..{classes - 1})")


def _describe(architecture: dict[str, Any]) -> str:
    kind = architecture.get("kind")
    return f"kind {kind}" + (f" with task {architecture.get('task')}" if kind == "hf" else "")


def _num_labels(architecture: dict[str, Any]) -> int | None:
    config = architecture.get("config") or {}
    if isinstance(config.get("id2label"), dict) and config["id2label"]:
        return len(config["id2label"])
    value = config.get("num_labels")
    return value if isinstance(value, int) and value > 0 else None


# ---------------------------------------------------------------------------------------------
# Memory


def worker_memory_bytes(settings: Settings) -> int | None:
    """The memory one job may use on its device: the setting, else (embedded mode, where the job runs
    on this machine) the host's RAM; None when unknown (a broker's workers, not configured)."""
    if settings.worker_memory_bytes:
        return settings.worker_memory_bytes
    if not settings.embedded:
        return None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _check_memory(settings: Settings, checkpoint: Checkpoint, dataset: Dataset, config: dict[str, Any]) -> None:
    available = worker_memory_bytes(settings)
    if available is None:
        return
    defaults = LLCConfig()
    chains = int(config.get("num_chains") or defaults.num_chains)
    dtype = str(config.get("dtype") or defaults.dtype)
    per_value = BYTES_PER_DTYPE.get(dtype, 4)
    batch = int(config.get("batch_size") or min(dataset.n, DEFAULT_BATCH))
    activations, eval_activations = _activation_bytes(checkpoint.architecture, batch, chains, dataset, per_value)
    params = max(int(checkpoint.num_params), 1)  # the estimate takes at least one parameter
    one_at_a_time = memory.estimate_memory_bytes(params, chains, per_value, activations, eval_activations)
    if one_at_a_time > available:
        raise Unprocessable(
            f"the job needs about {_gib(one_at_a_time)} even with one chain at a time ({params} parameters x "
            f"({chains} chains + {memory.SAMPLING_PARAM_COPIES}) x {per_value} bytes + {_gib(activations)} of activations at batch size {batch}, "
            f"or the chain-mode probe's two chains or the L_n(w*) evaluation if larger), "
            f"more than the worker's {_gib(available)}; use fewer chains or a smaller batch_size, "
            "or a worker with more memory (LAMBDAHAT_WORKER_MEMORY_BYTES)"
        )
    if config.get("max_chains_per_chunk") is None and chains > 1:
        # Each further chain in a vectorised call holds its own gradient row and activations.
        # They add to the sampling phase only (the probe and L_n(w*) come before it).
        per_extra_chain = params * per_value + activations
        sampling = memory.sampling_bytes(params, chains, per_value, activations)
        fitting = 1 + (available - sampling) // max(1, per_extra_chain)
        if fitting < chains:
            config["max_chains_per_chunk"] = int(fitting)


def _activation_bytes(
    architecture: dict[str, Any] | None, batch: int, chains: int, dataset: Dataset, per_value: int
) -> tuple[int, int]:
    """Activations of one forward/backward at ``batch``, and of the L_n(w*) evaluation's forward pass
    at ``batch x chains``, for sequence models (others: 0, as their activations are small next to
    (chains + 4) copies of the parameters)."""
    if architecture is None or dataset.kind != "tokens":
        return 0, 0
    config = architecture.get("config") if architecture.get("kind") == "hf" else architecture
    config = config or {}
    hidden = next((config[f] for f in _HIDDEN_FIELDS if isinstance(config.get(f), int)), None)
    layers = next((config[f] for f in _LAYER_FIELDS if isinstance(config.get(f), int)), None)
    limits = architectures.token_limits(architecture)
    if hidden is None or layers is None or limits is None:
        return 0, 0
    seq_len = dataset.seq_len or 1
    return (
        memory.activation_bytes_estimate(batch, seq_len, hidden, layers, limits[0], per_value),
        memory.eval_activation_bytes_estimate(batch, chains, seq_len, hidden, limits[0], per_value),
    )


def _gib(value: int) -> str:
    """A byte count for people: GiB from 1 GiB up, MiB below, KiB below that."""
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value / 1024:.1f} KiB"
