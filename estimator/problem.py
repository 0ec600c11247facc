"""What a run samples and how: the resolved problem, ``L_n(w*)``, and the chain mode.

Everything here is decided once, before the first step, and does not change during the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from . import tuning
from .config import LLCConfig
from .functional import FlatModel, probe_vmap

# Above this many samples L_n(w*) is computed on a fixed random subsample of this size (stated in the result).
MAX_INIT_LOSS_SAMPLES = 2_000_000


class Notes(list):
    """The warnings raised while running, in order: ``{"code", "message", "chain"}`` dicts."""

    def add(self, code: str, message: str, chain: int | None = None) -> None:
        self.append({"code": code, "message": message, "chain": chain})


@dataclass(frozen=True)
class Problem:
    """The model, data and resolved posterior constants of a run."""

    flat: FlatModel
    x: torch.Tensor
    y: torch.Tensor
    config: LLCConfig
    device_reason: str
    n: int
    num_params: int
    num_chains: int
    nbeta: float
    gamma: float
    batch_size: int  # rows of every minibatch (the export's fixed batch, if it has one)
    static_batch: int | None  # the only batch size a torch.export module accepts, if any
    shared_batch: bool  # the minibatch is the whole dataset: every chain uses the same one

    @property
    def device(self) -> torch.device:
        return self.flat.w_star.device

    @property
    def dtype(self) -> torch.dtype:
        return self.flat.w_star.dtype

    @property
    def epsilon_given(self) -> bool:
        return self.config.epsilon is not None


def make_problem(flat: FlatModel, x, y, config: LLCConfig, device_reason: str, notes: Notes) -> Problem:
    """Resolve nβ, γ and the batch size (an export with a fixed batch size imposes its own)."""
    n = int(x.shape[0])
    batch_size = min(config.batch_size or tuning.batch_size(n), n)
    static_batch = flat.static_batch
    if static_batch is not None:
        if n < static_batch:
            raise ValueError(
                f"the exported model only accepts batches of {static_batch} samples but the data has {n}; "
                "export it with dynamic_shapes for the batch dimension"
            )
        if config.batch_size is not None and config.batch_size != static_batch:
            notes.add(
                "static_batch",
                f"the exported model only accepts batches of {static_batch} samples, so batch_size "
                f"{config.batch_size} was replaced by {static_batch}; export with dynamic_shapes to choose",
            )
        batch_size = static_batch
    return Problem(
        flat=flat,
        x=x,
        y=y,
        config=config,
        device_reason=device_reason,
        n=n,
        num_params=flat.num_params,
        num_chains=config.num_chains,
        nbeta=float(config.nbeta) if config.nbeta is not None else tuning.nbeta(n),
        gamma=float(config.gamma) if config.gamma is not None else tuning.GAMMA,
        batch_size=batch_size,
        static_batch=static_batch,
        shared_batch=batch_size == n,
    )


@torch.no_grad()
def init_loss(problem: Problem, notes: Notes) -> tuple[float, int]:
    """L_n(w*) over all samples (or a fixed subsample when n is huge), in batches; and the sample count."""
    n, device = problem.n, problem.device
    idx = None
    count = n
    if n > MAX_INIT_LOSS_SAMPLES:
        gen = torch.Generator().manual_seed(problem.config.seed)
        idx = torch.randperm(n, generator=gen)[:MAX_INIT_LOSS_SAMPLES].to(device)
        count = MAX_INIT_LOSS_SAMPLES
        notes.add(
            "init_loss_subsample",
            f"L_n(w*) was computed on a fixed random subsample of {count:,} of the {n:,} samples",
        )
    # As many samples per evaluation as one vectorised step of all chains holds (no more
    # activation memory than sampling; independent of chunking, so the result is too).
    eval_batch = max(1, problem.batch_size * problem.num_chains)
    if problem.static_batch is not None:
        # A static-batch export: whole batches only (the last n mod b samples are left out, stated).
        eval_batch = problem.static_batch
        count = (count // eval_batch) * eval_batch
    total = torch.zeros((), dtype=torch.float64, device=device)
    x, y, flat = problem.x, problem.y, problem.flat
    for start in range(0, count, eval_batch):
        stop = min(count, start + eval_batch)
        if idx is None:
            xb, yb = x[start:stop], y[start:stop]
        else:
            xb, yb = x[idx[start:stop]], y[idx[start:stop]]
        total += flat.loss(flat.w_star, xb, yb).double() * (stop - start)
    loss = float(total / count)
    if not math.isfinite(loss):
        raise ValueError(f"the loss at the given weights is not finite ({loss}); check the model, data and loss")
    return loss, count


@dataclass(frozen=True)
class ChainMode:
    mode: str  # "vmap" or "sequential"
    reason: str
    chunk_size: int  # chains per vectorised call
    kernels: Any  # functional.Kernels: the gradient and Hessian-vector-product kernels
    vmappable: bool


_INEXACT = (
    "; on this model vmap's batched kernels round differently from single-chain ones, "
    "so vmap and sequential results differ in the last bits"
)


def choose_chain_mode(problem: Problem, notes: Notes) -> ChainMode:
    """vmap or sequential, decided without timing so that the same call always runs the same way.

    The probe runs the eager vectorised gradient on two chains with different minibatches,
    together and the second one alone. Where a chain's result does not depend on the others in the
    call (linear layers, elementwise ops: "chain-exact"), vmap and sequential give bit-identical
    results and vmap is used. Where it does (a BLAS whose batched matmul rounds differently for
    some shapes; convolutions, which become grouped convolutions under vmap), "auto" runs large
    models sequentially on CPU (per-chain kernels are faster there and the same for every
    chunking) and vmap otherwise (on GPU for throughput, on CPU for small models whose time is
    per-call overhead); the reason then says that vmap and sequential differ in rounding.
    """
    mode = problem.config.chain_mode
    m = problem.static_batch or problem.batch_size
    x, y, C = problem.x, problem.y, problem.num_chains
    w = problem.flat.w_star.unsqueeze(0).expand(2, -1)  # a view: the probe makes its only copy
    second = slice(m, 2 * m) if problem.n >= 2 * m else slice(0, m)
    xb = torch.stack([x[:m], x[second]])
    yb = torch.stack([y[:m], y[second]])
    probe = probe_vmap(problem.flat, w, xb, yb, trace=tuning.TRACE_KERNELS)
    if probe.failure is not None:
        if mode != "sequential":
            notes.add(
                "vmap_unavailable",
                f"chains ran sequentially because torch.func.vmap failed on this model: {probe.failure}",
            )
        reason = f"the model cannot be vmapped, so chains run one at a time ({probe.failure})"
        return ChainMode("sequential", reason, 1, probe.kernels, vmappable=False)
    if mode == "sequential":
        reason = "requested (chain_mode='sequential'); the vmapped kernel runs one chain at a time"
        return ChainMode("sequential", reason + ("" if probe.chain_exact else _INEXACT), 1, probe.kernels, True)
    if mode == "auto" and not probe.chain_exact and tuning.prefer_sequential(problem.device.type, problem.num_params, m):
        reason = (
            "auto: on CPU a model this large runs faster one chain at a time, with results "
            "independent of chunking" + _INEXACT
        )
        return ChainMode("sequential", reason, 1, probe.kernels, True)
    chunk_size = min(
        C, problem.config.max_chains_per_chunk or tuning.chunk_size(C, problem.num_params, problem.dtype.itemsize)
    )
    reason = "requested (chain_mode='vmap')" if mode == "vmap" else "auto: the model supports torch.func.vmap"
    if chunk_size < C:
        reason += f"; chains run in chunks of {chunk_size} to bound memory"
    reason += "; bit-identical to chain_mode='sequential'" if probe.chain_exact else _INEXACT
    return ChainMode("vmap", reason, chunk_size, probe.kernels, True)


def describe_kernels(chain_mode: ChainMode) -> str:
    """The chain mode's reason, plus whether the gradient kernel ran as a traced graph and if not why."""
    reason = chain_mode.reason
    if not chain_mode.vmappable:
        return reason
    kernels = chain_mode.kernels
    if kernels.traced:
        reason += "; gradient kernel replayed as a traced aten graph"
        if kernels.grad_and_values.reused:
            reason += " (traced by an earlier call on a model of the same structure)"
    elif tuning.TRACE_KERNELS and kernels.grad_and_values.fallback_reason:
        reason += f"; eager gradient kernel: {kernels.grad_and_values.fallback_reason}"
    return reason
