"""A rough memory estimate of one run, before anything is built (pure Python: the API imports it).

    total = num_params × (num_chains + 3) × bytes_per_param + activation_bytes

The parameter term: one row of the (chains, P) state per chain, plus three P-sized vectors that
every run holds whatever the chain count (w*, the gradient of the current chunk, the noise or
update of the step). In the sequential chain mode that bound is close; vmapped chunks hold one
gradient row per chain of the chunk instead, which ``max_chains_per_chunk`` bounds.

The activation term is a per-step estimate of what a transformer's forward and backward keep alive
at one minibatch (:func:`activation_bytes_estimate`); for other models pass your own figure (0 is
an underestimate, not an error).
"""

from __future__ import annotations

BYTES_PER_DTYPE = {"float64": 8, "float32": 4, "bfloat16": 4}  # bfloat16 runs keep float32 chains


def estimate_memory_bytes(num_params: int, num_chains: int, bytes_per_param: int, activation_bytes: int = 0) -> int:
    """Bytes of one run: ``num_params × (num_chains + 3) × bytes_per_param + activation_bytes``."""
    for name, value in (("num_params", num_params), ("num_chains", num_chains), ("bytes_per_param", bytes_per_param)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
    if not isinstance(activation_bytes, int) or isinstance(activation_bytes, bool) or activation_bytes < 0:
        raise ValueError(f"activation_bytes must be an integer >= 0; got {activation_bytes!r}")
    return num_params * (num_chains + 3) * bytes_per_param + activation_bytes


def activation_bytes_estimate(batch_size: int, seq_len: int, hidden: int, layers: int, vocab: int, bytes: int) -> int:
    """Activations a transformer keeps for the backward pass of one minibatch, roughly.

    Per layer and token: about 16 hidden-sized tensors (attention inputs and outputs, the 4×-wide
    MLP's two sides, layer norms, residuals), plus eager attention's scores and probabilities,
    2 × heads × seq_len, with heads taken as hidden / 64 (the usual head width; at least 1). The
    logits and their softmax add 2 × vocab per token. Counted once per minibatch: chains in the
    sequential mode run one after another (a vmapped chunk of k chains holds k times the
    activations). A rough figure for a memory check, not a bound.
    """
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len), ("hidden", hidden), ("layers", layers),
                        ("vocab", vocab), ("bytes", bytes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
    tokens = batch_size * seq_len
    heads = max(1, hidden // 64)
    per_layer = tokens * (16 * hidden + 2 * heads * seq_len)
    return (layers * per_layer + tokens * 2 * vocab) * bytes
