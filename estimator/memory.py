"""A rough memory estimate of one run, before anything is built (pure Python: the API imports it).

A run's memory peaks in one of three phases, and the estimate is the largest of them (P parameters
of ``bytes_per_param`` bytes each, C chains; ``activation_bytes`` is one minibatch's forward and
backward, ``eval_activation_bytes`` the forward pass alone of the L_n(w*) evaluation batch):

    sampling          P × (C + 4) × bytes + activation_bytes
    chain-mode probe  P × 5 × bytes + 2 × activation_bytes
    L_n(w*)           P × 1 × bytes + eval_activation_bytes

Sampling: one row of the (chains, P) state per chain, plus four P-sized vectors that every run
holds whatever the chain count (w*, the noise or update of the step, and the gradient twice: at the
end of the backward pass autograd's per-parameter gradients and their concatenation into one
vector coexist; measured, a one-chain gradient call peaks at about 2 × P × bytes + activations).
In the sequential chain mode that bound is close; vmapped chunks hold one gradient row per chain of
the chunk instead, which ``max_chains_per_chunk`` bounds.

The chain-mode probe (``functional.probe_vmap``, run before the chains exist, in every chain mode)
computes two chains' gradients in one vectorised call: w*, the two moved-off rows and their
gradient, with two chains' activations alive at once. With few chains and large activations (a
language model's logits) this phase is the peak.

L_n(w*) is evaluated in batches of batch_size × C samples (``problem.init_loss``; forward only, no
autograd graph): for a language model its C-times-larger logits can be the peak with many chains
(they grow with C × batch_size × seq_len × vocab, whatever the chain mode or chunk size).

Vectorised chunks of k chains add (k - 1) × (P × bytes + activation_bytes) to the sampling phase
only (:func:`sampling_bytes`), not to the other two.

The activation figures are per-step estimates of what a transformer keeps alive
(:func:`activation_bytes_estimate`, :func:`eval_activation_bytes_estimate`); for other models pass
your own figures (0 is an underestimate, not an error).

Measured against this: the resident memory of a process also holds what glibc's allocator keeps
after ``free`` (heap it does not return to the system, and fragments between live blocks), which
can add a third or more to the peak; a process that fixes ``M_MMAP_THRESHOLD`` (mallopt, e.g. at
128 KiB) returns large blocks on free and measures close to the estimate.
"""

from __future__ import annotations

BYTES_PER_DTYPE = {"float64": 8, "float32": 4, "bfloat16": 4}  # bfloat16 runs keep float32 chains

# P-sized vectors the chain-mode probe holds at its peak: w*, two moved-off rows, their gradient.
PROBE_PARAM_COPIES = 5
# P-sized vectors sampling holds besides the chains: w*, the step's noise, the gradient twice.
SAMPLING_PARAM_COPIES = 4
PROBE_CHAINS = 2


def estimate_memory_bytes(num_params: int, num_chains: int, bytes_per_param: int, activation_bytes: int = 0,
                          eval_activation_bytes: int = 0) -> int:
    """Bytes of one run: the largest of sampling (``P × (C + 4) × bytes + activation_bytes``), the
    chain-mode probe (``P × 5 × bytes + 2 × activation_bytes``) and the L_n(w*) evaluation
    (``P × bytes + eval_activation_bytes``); see the module docstring."""
    for name, value in (("num_params", num_params), ("num_chains", num_chains), ("bytes_per_param", bytes_per_param)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
    for name, value in (("activation_bytes", activation_bytes), ("eval_activation_bytes", eval_activation_bytes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0; got {value!r}")
    sampling = sampling_bytes(num_params, num_chains, bytes_per_param, activation_bytes)
    probe = num_params * PROBE_PARAM_COPIES * bytes_per_param + PROBE_CHAINS * activation_bytes
    init_loss = num_params * bytes_per_param + eval_activation_bytes
    return max(sampling, probe, init_loss)


def sampling_bytes(num_params: int, num_chains: int, bytes_per_param: int, activation_bytes: int = 0) -> int:
    """The sampling phase alone, chains one at a time: ``P × (C + 4) × bytes + activation_bytes``."""
    return num_params * (num_chains + SAMPLING_PARAM_COPIES) * bytes_per_param + activation_bytes


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {value!r}")


def activation_bytes_estimate(batch_size: int, seq_len: int, hidden: int, layers: int, vocab: int, bytes: int) -> int:
    """Activations a transformer keeps for the backward pass of one minibatch, roughly.

    Per layer and token: about 16 hidden-sized tensors (attention inputs and outputs, the 4×-wide
    MLP's two sides, layer norms, residuals), plus eager attention's scores and probabilities,
    2 × heads × seq_len, with heads taken as hidden / 64 (the usual head width; at least 1). The
    logits and their softmax add 2 × vocab per token. Counted once per minibatch: chains in the
    sequential mode run one after another (a vmapped chunk of k chains holds k times the
    activations; the chain-mode probe two chains'). A rough figure for a memory check, not a bound.
    """
    _check_sizes(batch_size=batch_size, seq_len=seq_len, hidden=hidden, layers=layers, vocab=vocab, bytes=bytes)
    tokens = batch_size * seq_len
    heads = max(1, hidden // 64)
    per_layer = tokens * (16 * hidden + 2 * heads * seq_len)
    return (layers * per_layer + tokens * 2 * vocab) * bytes


def eval_activation_bytes_estimate(batch_size: int, num_chains: int, seq_len: int, hidden: int, vocab: int,
                                   bytes: int) -> int:
    """Activations of the L_n(w*) evaluation's forward pass (no autograd graph), roughly.

    Its batches hold batch_size × num_chains samples (C times a sequential step's). Without a graph
    only one layer's tensors are alive at a time: at the widest point about 12 hidden-sized tensors
    per token (the residual stream, the attention output, the 4×-wide MLP's input and activation,
    its output) and the attention scores; at the end the logits, their shifted copy and their
    log-softmax, 3 × vocab per token, which dominate for a language model.
    """
    _check_sizes(batch_size=batch_size, num_chains=num_chains, seq_len=seq_len, hidden=hidden, vocab=vocab,
                 bytes=bytes)
    tokens = batch_size * num_chains * seq_len
    heads = max(1, hidden // 64)
    return tokens * (12 * hidden + 2 * heads * seq_len + 3 * vocab) * bytes
