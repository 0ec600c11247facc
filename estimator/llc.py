"""``estimate_llc``: the local learning coefficient of a model at its current weights.

    λ̂(w*) = nβ (E_w[L_n(w)] - L_n(w*)),  w ~ exp(-nβ L_n(w) - γ/2 ||w - w*||²)

The run, top-down:

1. Resolve data, loss, device and dtype; flatten the model's trainable parameters into w*.
2. ``L_n(w*)`` over the whole dataset (batched, no grad), or a stated subsample when n is huge.
3. Pick the chain mode: ``vmap`` over chains if the model can be traced, else sequential autograd.
4. Curvature: the top Hessian eigenvalue at w* by Hessian-vector-product power iteration.
5. Burn-in (warm-up). With the automatic step size, the curvature is measured again at the chains'
   positions on a doubling schedule and ε only ever decreases, so the sampling phase runs with a
   fixed ε that is safe for the region the chains actually visit.
6. Sampling with fixed ε: the minibatch loss at every step goes into a preallocated buffer; draws
   are every ``num_steps_bw_draws``-th step. A few steps also measure the MALA acceptance.
7. Diagnostics and warnings (estimator/report.py).

Chains are processed in lockstep, chunk by chunk within each step, so every decision (ε changes,
divergence checks, stops) sees all chains at the same step and results do not depend on chunking.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import tuning
from .config import LLCConfig
from .data import materialise, to_device
from .functional import FlatModel, probe_vmap
from .losses import LossFn, resolve_loss
from .report import RunRecord, build_report
from .result import LLCResult, ProgressEvent
from .samplers import KERNELS

ProgressCallback = Callable[[ProgressEvent], Any]

PROGRESS_INTERVAL_S = 0.5
# Above this many samples L_n(w*) is computed on a fixed random subsample of this size (stated in the result).
MAX_INIT_LOSS_SAMPLES = 2_000_000


def estimate_llc(
    model: torch.nn.Module,
    data,
    loss: str | LossFn = "cross_entropy",
    config: LLCConfig | None = None,
    progress: ProgressCallback | None = None,
) -> LLCResult:
    """Estimate the local learning coefficient of ``model`` at its current weights.

    Args:
        model: any ``torch.nn.Module`` (also the module of a ``torch.export`` program). Its weights
            are never modified; ordinary modules are put in eval mode while sampling and restored.
        data: an ``(inputs, targets)`` pair of tensors, or a ``torch.utils.data.Dataset`` of pairs.
        loss: "cross_entropy", "mse", "nll", "bce_with_logits", or ``(outputs, targets) -> mean loss``.
        config: an :class:`LLCConfig`; ``None`` means ``LLCConfig()`` (automatic settings).
        progress: called with a :class:`ProgressEvent` at most every 0.5 s; returning ``False``
            stops sampling and returns the draws completed so far (``result.stopped`` is True).
    """
    started = time.perf_counter()
    if config is None:
        config = LLCConfig()
    if not isinstance(config, LLCConfig):
        raise ValueError(f"config must be an LLCConfig; got {type(config).__name__}")
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if progress is not None and not callable(progress):
        raise ValueError("progress must be a callable taking a ProgressEvent, or None")
    loss_name, loss_fn = resolve_loss(loss)
    dtype = torch.float64 if config.dtype == "float64" else torch.float32
    inputs, targets = materialise(data)
    device, device_reason = _resolve_device(config, model, int(inputs.shape[0]))
    inputs, targets = to_device(inputs, targets, loss_name, device, dtype)

    with _sampling_mode(model), torch.random.fork_rng(devices=[]):
        flat = FlatModel(model, loss_fn, device, dtype)
        run = _Run(flat, inputs, targets, config, progress, started, device_reason)
        return run.execute()


def _resolve_device(config: LLCConfig, model: torch.nn.Module, n: int) -> tuple[torch.device, str]:
    """The sampling device and why. "auto" takes CUDA when there is one and a step is big enough
    for a GPU to be faster than a CPU core (tuning.CUDA_MIN_WORK); tiny models stay on the CPU."""
    name = config.device
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu"), "auto: no CUDA device is available"
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        batch = min(config.batch_size or tuning.batch_size(n), n)
        work = tuning.step_work(config.num_chains, params, batch)
        if work < tuning.CUDA_MIN_WORK:
            return torch.device("cpu"), (
                f"auto: CPU although CUDA is available, because a step is too small for a GPU to pay off "
                f"(chains x params x batch = {work:,} < {tuning.CUDA_MIN_WORK:,}; GPU steps this small "
                "are bound by kernel-launch latency); pass device='cuda' to use it anyway"
            )
        return torch.device("cuda", torch.cuda.current_device()), (
            f"auto: CUDA (chains x params x batch = {work:,} >= {tuning.CUDA_MIN_WORK:,})"
        )
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"LLCConfig.device is {name!r} but CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(
            f"LLCConfig.device is {name!r} but only {torch.cuda.device_count()} CUDA device(s) exist"
        )
    return device, f"requested (device={name!r})"


@contextlib.contextmanager
def _sampling_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode while sampling (dropout off, batch-norm statistics frozen), restored afterwards.

    The module of a ``torch.export`` program refuses ``.train()/.eval()``; it was exported in the
    mode it runs in, so it is left alone.
    """
    was_training = model.training
    switched = False
    try:
        model.eval()
        switched = True
    except (NotImplementedError, RuntimeError):
        pass
    try:
        yield
    finally:
        if switched:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                model.train(was_training)


class _Stopped(Exception):
    """Raised inside the loop when the progress callback asks to stop."""


class _AllDiverged(Exception):
    """Raised inside the loop when no healthy chain is left."""


@dataclass
class _Chunk:
    """A group of chains that run through one vectorised call."""

    chains: list[int]  # global chain indices, ascending
    rows: torch.Tensor  # the same, as a device tensor (for index_copy_ into the loss record)
    w: torch.Tensor  # (chains, P): this chunk's parameters
    state: Any  # the sampler state over {"w": w}
    perms: torch.Tensor | None  # (chains, n): this epoch's minibatch order of each chain
    data_gens: list[torch.Generator]
    noise_gens: list[torch.Generator]


class _Run:
    def __init__(
        self, flat: FlatModel, inputs, targets, config: LLCConfig, progress, started: float, device_reason: str
    ):
        self.flat = flat
        self.device_reason = device_reason
        self.x = inputs
        self.y = targets
        self.config = config
        self.progress = progress
        self.started = started
        self.device = flat.w_star.device
        self.dtype = flat.w_star.dtype
        self.n = int(inputs.shape[0])
        self.P = flat.num_params
        self.C = config.num_chains
        self.nbeta = float(config.nbeta) if config.nbeta is not None else tuning.nbeta(self.n)
        self.gamma = float(config.gamma) if config.gamma is not None else tuning.GAMMA
        self.batch_size = min(config.batch_size or tuning.batch_size(self.n), self.n)
        self.notes: list[dict[str, Any]] = []  # warnings raised while running
        self.static_batch = flat.static_batch
        if self.static_batch is not None:
            if self.n < self.static_batch:
                raise ValueError(
                    f"the exported model only accepts batches of {self.static_batch} samples but the data has {self.n}; "
                    "export it with dynamic_shapes for the batch dimension"
                )
            if config.batch_size is not None and config.batch_size != self.static_batch:
                self._note(
                    "static_batch",
                    f"the exported model only accepts batches of {self.static_batch} samples, so batch_size "
                    f"{config.batch_size} was replaced by {self.static_batch}; export with dynamic_shapes to choose",
                )
            self.batch_size = self.static_batch
        self.shared_batch = self.batch_size == self.n
        self.timings: dict[str, float] = {}
        self.last_progress = -math.inf
        self.steps_done = 0
        self.total_steps = 0
        self.phase = "burnin"
        self.draws_done = [0] * self.C
        self.num_draws = 0
        self.diverged: dict[int, dict[str, Any]] = {}
        # One independent stream for the run's own choices (curvature probes), one pair per chain.
        self.seed_children = np.random.SeedSequence(config.seed).spawn(1 + self.C)
        self.noise_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.chunks: list[_Chunk] = []

    # ------------------------------------------------------------------ top level
    def execute(self) -> LLCResult:
        try:
            return self._execute()
        finally:
            if self.noise_pool is not None:
                self.noise_pool.shutdown(wait=True)

    def _execute(self) -> LLCResult:
        cfg = self.config
        t0 = time.perf_counter()
        self.init_loss, self.init_loss_samples = self._init_loss()
        if not math.isfinite(self.init_loss):
            raise ValueError(
                f"the loss at the given weights is not finite ({self.init_loss}); check the model, data and loss"
            )
        self._choose_chain_mode()
        self.timings["init_loss_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        aux = torch.Generator(device=self.device)
        aux.manual_seed(int(self.seed_children[0].generate_state(1)[0]))
        self.aux_gen = aux
        self.curv_x, self.curv_y = self._curvature_batch()
        if cfg.epsilon is None:
            h_star, _ = self._top_curvature(
                self.flat.w_star.unsqueeze(0), None, iters=tuning.POWER_ITERS_AT_W_STAR
            )
            self.h_star = float(h_star[0])
            if not math.isfinite(self.h_star):
                raise ValueError(
                    "the Hessian of the loss at the given weights is not finite; check the model and loss"
                )
        else:
            # A given ε needs no curvature: skip the Hessian-vector products (they cost more than
            # a short run's sampling on large models). Curvature diagnostics are then absent.
            self.h_star = float("nan")
        # Largest top curvature met anywhere (bounds ε for stability) and the chains' typical one
        # (their mean top curvature: the quadratic bias is linear in it, so it sets ε for accuracy).
        self.h_seen = self.h_star if cfg.epsilon is None else 0.0
        self.h_typ = self.h_seen
        self.h_typ_history: list[tuple[int, float]] = []
        # Mean Hessian trace at the chains (Hutchinson) and the running λ̂ of warm-up.
        self.trace_typ: float | None = None
        self.trace_history: list[tuple[int, float]] = []
        self.llc_warm: float | None = None
        self.block_history: list[tuple[int, float]] = []
        if cfg.epsilon is None:
            self._probe_initial_curvature()
        self.epsilon = (
            float(cfg.epsilon) if cfg.epsilon is not None else self._epsilon_for(self.h_typ, self.h_seen)
        )
        self.step_epsilon = self.epsilon
        self.timings["curvature_s"] = time.perf_counter() - t0

        if tuning.prefetch_noise(self.device.type, self.chunk_size, self.P):
            # With a spare core the noise thread runs there at normal priority; without one it must
            # not take a core from the compute threads.
            spare_core = torch.get_num_threads() < len(_usable_cpus())
            self.noise_pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="llc-noise",
                initializer=None if spare_core else _yield_to_compute_threads,
            )
        self._make_chunks()
        # With automatic burn-in the length is decided during warm-up; total_steps is updated then.
        self.num_burnin = cfg.num_burnin_steps if cfg.num_burnin_steps is not None else 0
        # With automatic draws the number is decided after warm-up (from the settle stage's
        # autocorrelation); until then progress reports a provisional figure.
        self.num_draws = cfg.num_draws if cfg.num_draws is not None else tuning.PROVISIONAL_DRAWS
        self.total_steps = self.num_burnin + self._sampling_steps()
        stopped = False
        self.sample_steps_done = 0
        self.sample_losses = torch.empty((0, self.C), dtype=torch.float64, device=self.device)
        self.mala_sum = torch.zeros(self.C, dtype=torch.float64, device=self.device)
        self.mala_count = torch.zeros(self.C, dtype=torch.float64, device=self.device)
        self.burnin_restarts = 0
        self.explore_steps = 0
        self.settle_steps = 0
        t_burnin = time.perf_counter()
        t_sampling = None
        try:
            self._burnin()
            if cfg.num_draws is None:
                self.num_draws = self._automatic_num_draws()
            t_sampling = time.perf_counter()
            self._sample()
        except _Stopped:
            stopped = True
        except _AllDiverged:
            pass
        t_end = time.perf_counter()
        self.timings["burnin_s"] = (t_sampling or t_end) - t_burnin
        self.timings["sampling_s"] = t_end - t_sampling if t_sampling is not None else 0.0
        self.timings["total_s"] = time.perf_counter() - self.started
        busy = self.timings["burnin_s"] + self.timings["sampling_s"]
        self.timings["steps_per_s"] = self.steps_done / busy if busy > 0 else float("nan")
        self.timings["chain_steps_per_s"] = self.timings["steps_per_s"] * self.C
        self._describe_kernels()
        return build_report(self._record(stopped))

    def _record(self, stopped: bool) -> RunRecord:
        return RunRecord(
            config=self.config, n=self.n, num_params=self.P, num_chains=self.C, nbeta=self.nbeta,
            gamma=self.gamma, batch_size=self.batch_size, device=str(self.device),
            device_reason=self.device_reason, chain_mode=self.chain_mode,
            chain_mode_reason=self.chain_mode_reason, chunk_size=self.chunk_size,
            init_loss=self.init_loss, init_loss_samples=self.init_loss_samples, epsilon=self.epsilon,
            h_star=self.h_star, h_seen=self.h_seen, h_typ=self.h_typ, trace_typ=self.trace_typ,
            llc_warm=self.llc_warm, num_draws=self.num_draws, num_burnin=self.num_burnin,
            explore_steps=self.explore_steps, settle_steps=self.settle_steps,
            burnin_restarts=self.burnin_restarts, steps_done=self.steps_done,
            sample_losses=self.sample_losses.cpu().numpy(), sample_steps_done=self.sample_steps_done,
            mala_sum=self.mala_sum.cpu().numpy(), mala_count=self.mala_count.cpu().numpy(),
            diverged=self.diverged, notes=tuple(self.notes), timings=dict(self.timings), stopped=stopped,
        )

    def _automatic_num_draws(self) -> int:
        healthy = [c for c in range(self.C) if c not in self.diverged]
        losses = None
        if self.settle_losses is not None and healthy:
            losses = self.settle_losses[:, healthy].cpu().numpy()
        return tuning.num_draws(losses, self.nbeta, self.init_loss, self.config.num_steps_bw_draws)

    def _describe_kernels(self) -> None:
        """Say in chain_mode_reason whether the gradient kernel ran as a traced graph, and if not why."""
        if not self.vmappable:
            return
        if self.kernels.traced:
            self.chain_mode_reason += "; gradient kernel replayed as a traced aten graph"
            if self.kernels.grad_and_values.reused:
                self.chain_mode_reason += " (traced by an earlier call on a model of the same structure)"
        elif tuning.TRACE_KERNELS and self.kernels.grad_and_values.fallback_reason:
            self.chain_mode_reason += (
                f"; eager gradient kernel: {self.kernels.grad_and_values.fallback_reason}"
            )

    # ------------------------------------------------------------------ setup
    @torch.no_grad()
    def _init_loss(self) -> tuple[float, int]:
        """L_n(w*) over all samples (or a fixed subsample when n is huge), in batches."""
        idx = None
        count = self.n
        if self.n > MAX_INIT_LOSS_SAMPLES:
            gen = torch.Generator().manual_seed(self.config.seed)
            idx = torch.randperm(self.n, generator=gen)[:MAX_INIT_LOSS_SAMPLES].to(self.device)
            count = MAX_INIT_LOSS_SAMPLES
            self._note(
                "init_loss_subsample",
                f"L_n(w*) was computed on a fixed random subsample of {count:,} of the {self.n:,} samples",
            )
        # As many samples per evaluation as one vectorised step of all chains holds (no more
        # activation memory than sampling; independent of chunking, so the result is too).
        eval_batch = max(1, self.batch_size * self.C)
        if self.static_batch is not None:
            # A static-batch export: whole batches only (the last n mod b samples are left out, stated).
            eval_batch = self.static_batch
            count = (count // eval_batch) * eval_batch
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for start in range(0, count, eval_batch):
            stop = min(count, start + eval_batch)
            if idx is None:
                xb, yb = self.x[start:stop], self.y[start:stop]
            else:
                xb, yb = self.x[idx[start:stop]], self.y[idx[start:stop]]
            total += self.flat.loss(self.flat.w_star, xb, yb).double() * (stop - start)
        return float(total / count), count

    def _choose_chain_mode(self) -> None:
        """vmap or sequential, decided without timing so that the same call always runs the same way.

        The probe runs the eager vectorised gradient on two chains with different minibatches,
        together and the second one alone. Where a chain's result does not depend on the others in the call (linear
        layers, elementwise ops: "chain-exact"), vmap and sequential give bit-identical results and
        vmap is used. Where it does (a BLAS whose batched matmul rounds differently for some
        shapes; convolutions, which become grouped convolutions under vmap), "auto" runs large
        models sequentially on CPU (per-chain kernels are faster there and the same for every
        chunking) and vmap otherwise (on GPU for throughput, on CPU for small models whose time is
        per-call overhead); the reason then says that vmap and sequential differ in rounding.
        """
        mode = self.config.chain_mode
        m = self.static_batch or self.batch_size
        w = self.flat.w_star.unsqueeze(0).expand(2, -1).clone()
        second = slice(m, 2 * m) if self.n >= 2 * m else slice(0, m)
        xb = torch.stack([self.x[:m], self.x[second]])
        yb = torch.stack([self.y[:m], self.y[second]])
        probe = probe_vmap(self.flat, w, xb, yb, trace=tuning.TRACE_KERNELS)
        self.kernels = probe.kernels
        self.vmappable = probe.failure is None
        self.chunk_size = 1
        inexact = (
            "; on this model vmap's batched kernels round differently from single-chain ones, "
            "so vmap and sequential results differ in the last bits"
        )
        if not self.vmappable:
            self.chain_mode = "sequential"
            self.chain_mode_reason = (
                f"the model cannot be vmapped, so chains run one at a time ({probe.failure})"
            )
            if mode != "sequential":
                self._note(
                    "vmap_unavailable",
                    f"chains ran sequentially because torch.func.vmap failed on this model: {probe.failure}",
                )
            return
        if mode == "sequential" or (
            mode == "auto" and not probe.chain_exact and tuning.prefer_sequential(self.device.type, self.P, self.static_batch or self.batch_size)
        ):
            self.chain_mode = "sequential"
            if mode == "sequential":
                self.chain_mode_reason = (
                    "requested (chain_mode='sequential'); the vmapped kernel runs one chain at a time"
                )
                self.chain_mode_reason += "" if probe.chain_exact else inexact
            else:
                self.chain_mode_reason = (
                    "auto: on CPU a model this large runs faster one chain at a time, with results "
                    "independent of chunking" + inexact
                )
            return
        self.chain_mode = "vmap"
        self.chunk_size = min(self.C, self.config.max_chains_per_chunk or tuning.chunk_size(self.C, self.P, self.dtype.itemsize))
        self.chain_mode_reason = (
            "requested (chain_mode='vmap')" if mode == "vmap" else "auto: the model supports torch.func.vmap"
        )
        if self.chunk_size < self.C:
            self.chain_mode_reason += f"; chains run in chunks of {self.chunk_size} to bound memory"
        if probe.chain_exact:
            self.chain_mode_reason += "; bit-identical to chain_mode='sequential'"
        else:
            self.chain_mode_reason += inexact

    def _curvature_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.static_batch or min(self.n, tuning.CURVATURE_SAMPLES)
        if size == self.n:
            return self.x, self.y
        idx = torch.randperm(self.n, generator=self.aux_gen, device=self.device)[:size]
        return self.x[idx], self.y[idx]

    def _make_chunks(self) -> None:
        seeds = self.seed_children[1:]
        self.chunks = []
        for start in range(0, self.C, self.chunk_size):
            chains = list(range(start, min(self.C, start + self.chunk_size)))
            data_gens, noise_gens = [], []
            for c in chains:
                data_seed, noise_seed = seeds[c].generate_state(2)
                data_gens.append(torch.Generator(device=self.device).manual_seed(int(data_seed)))
                noise_gens.append(torch.Generator(device=self.device).manual_seed(int(noise_seed)))
            w = self.flat.w_star.unsqueeze(0).repeat(len(chains), 1)
            chunk = _Chunk(
                chains=chains,
                rows=torch.tensor(chains, device=self.device),
                w=w,
                state=None,
                perms=None,
                data_gens=data_gens,
                noise_gens=noise_gens,
            )
            self.chunks.append(chunk)
        # One noise buffer shared by all chunks: each chunk's noise is drawn, used and done with
        # within its own part of a step, so memory is one chunk's worth, not C·P.
        self.noise_buf = torch.empty((self.chunk_size, self.P), device=self.device, dtype=self.dtype)
        self._build_sampler()
        for chunk in self.chunks:
            noise = self._noise_view(chunk)
            _draw_normals(noise, chunk.noise_gens)
            chunk.state = self.sampler.init({"w": chunk.w}, {"w": noise})
        self.batch_pos = self.n  # forces a fresh permutation at the first step

    def _build_sampler(self) -> None:
        module = KERNELS[self.config.sampler]
        self.sampler = module.build(self.step_epsilon, self.gamma, self.nbeta, {"w": self.flat.w_star})

    def _epsilon_for(self, h_typ: float, h_max: float) -> float:
        return tuning.sampling_epsilon(
            h_typ, h_max, self.nbeta, self.gamma, self.config.target_bias, self.trace_typ, self.llc_warm
        )

    def _explore_epsilon(self) -> float:
        return tuning.explore_epsilon(
            self.h_typ, self.h_seen, self.nbeta, self.gamma, self.config.target_bias, self.trace_typ, self.llc_warm
        )

    def _sampling_steps(self) -> int:
        return tuning.sampling_steps(self.num_draws, self.config.num_steps_bw_draws)

    # ------------------------------------------------------------------ curvature
    def _hvp(self, w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Hessian-vector products on the curvature batch, in sub-batches of at most batch_size
        samples (memory bounded by one step's activations), weighted into the batch mean."""
        total = self.curv_x.shape[0]
        size = self.static_batch or max(1, self.batch_size)
        if size >= total:
            return self.kernels.hvp(w, v, self.curv_x, self.curv_y)
        out = torch.zeros_like(w)
        for start in range(0, total - (total % size if self.static_batch else 0), size):
            stop = min(total, start + size)
            part = self.kernels.hvp(w, v, self.curv_x[start:stop], self.curv_y[start:stop])
            out.add_(part, alpha=(stop - start) / total)
        return out

    def _top_curvature(
        self, w: torch.Tensor, v0: torch.Tensor | None, iters: int
    ) -> tuple[float, torch.Tensor]:
        """max over rows of |top eigenvalue| of the Hessian of L on the curvature batch at w."""
        if v0 is None:
            v = torch.randn(w.shape, generator=self.aux_gen, device=self.device, dtype=self.dtype)
        else:
            v = v0.clone()
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)
        eig = torch.zeros(w.shape[0], device=self.device, dtype=self.dtype)
        for _ in range(iters):
            hv = self._hvp(w, v)
            eig = (v * hv).sum(dim=1)
            norm = hv.norm(dim=1, keepdim=True)
            if not bool(torch.isfinite(norm).all()):
                return torch.full_like(eig, float("inf")), v
            v = torch.where(norm > 0, hv / norm.clamp_min(1e-30), v)
        return eig.abs(), v

    def _probe_initial_curvature(self) -> None:
        """Make the first exploration steps safe where w* itself is (nearly) flat.

        At a singular point the Hessian at w* can vanish (a deep linear network at the origin), so
        ε from w* alone would be huge and the first steps would throw the chains far out. Probe the
        curvature at w* + (the displacement of the first exploration steps) and shrink ε until it
        is consistent with the curvature found there.
        """
        # Fixed point h = curvature at the distance the exploration step for h travels; that
        # distance shrinks as h grows, so iterate with geometric damping.
        h = self.h_star
        for _ in range(tuning.PROBE_ROUNDS):
            self.h_seen = self.h_typ = h
            radius = tuning.probe_radius(self._explore_epsilon())
            z = torch.randn((1, self.P), generator=self.aux_gen, device=self.device, dtype=self.dtype)
            w = self.flat.w_star.unsqueeze(0) + radius * z
            found = float(self._top_curvature(w, None, iters=tuning.WARMUP_POWER_ITERS)[0][0])
            if not math.isfinite(found):
                break
            h, consistent = tuning.next_probe_curvature(h, found, self.h_star)
            if consistent:
                break
        self.h_seen = self.h_typ = max(h, self.h_star)

    def _measure_chain_curvature(self) -> tuple[float, float, float]:
        """(max, mean) over chains of the top curvature at their positions (warm-started power
        iteration), and the chains' mean Hessian trace (Hutchinson, Rademacher probes)."""
        rows = sum(chunk.w.shape[0] for chunk in self.chunks)
        if self.chain_curv_vec is None or self.chain_curv_vec.shape[0] != rows:
            # Start vectors for all chains in one draw, so chunking cannot change them.
            self.chain_curv_vec = torch.randn(
                (rows, self.P), generator=self.aux_gen, device=self.device, dtype=self.dtype
            )
        probes = tuning.TRACE_PROBES
        signs = torch.randint(0, 2, (probes, rows, self.P), generator=self.aux_gen, device=self.device)
        signs = signs.to(self.dtype).mul_(2).sub_(1)
        values, vecs, traces = [], [], []
        offset = 0
        for chunk in self.chunks:
            k = chunk.w.shape[0]
            v0 = self.chain_curv_vec[offset : offset + k]
            hk, vk = self._top_curvature(chunk.w, v0, iters=tuning.WARMUP_POWER_ITERS)
            values.append(hk)
            vecs.append(vk)
            trace = torch.zeros(k, dtype=torch.float64, device=self.device)
            for p in range(probes):
                z = signs[p, offset : offset + k]
                trace += (z * self._hvp(chunk.w, z)).sum(dim=1).double()
            traces.append(trace / probes)
            offset += k
        self.chain_curv_vec = torch.cat(vecs)
        h = torch.cat(values).double()
        return float(h.max()), float(h.mean()), float(torch.cat(traces).mean())

    # ------------------------------------------------------------------ stepping
    def _noise_view(self, chunk: _Chunk) -> torch.Tensor:
        return self.noise_buf[: len(chunk.chains)]

    def _draw_noise(self, chunk: _Chunk) -> tuple[torch.Tensor, Any]:
        """Start drawing this step's standard normal noise for a chunk (one row per chain).

        With prefetching (large models on CPU) the draw runs on a second thread while the chunk's
        forward/backward runs on this one (torch releases the GIL inside ops); the caller waits on
        the returned future before the update. Each chain's generator is consumed once per step, in
        the same order either way, so results are bit-identical with and without the thread.
        """
        noise = self._noise_view(chunk)
        if self.noise_pool is None:
            _draw_normals(noise, chunk.noise_gens)
            return noise, None
        return noise, self.noise_pool.submit(_draw_normals, noise, chunk.noise_gens)

    def _next_batch_position(self) -> int:
        """Start of this step's minibatch in every chain's current permutation (all chains in lockstep)."""
        if self.batch_pos + self.batch_size > self.n:
            for chunk in self.chunks:
                chunk.perms = torch.stack(
                    [torch.randperm(self.n, generator=g, device=self.device) for g in chunk.data_gens]
                )
            self.batch_pos = 0
        pos = self.batch_pos
        self.batch_pos += self.batch_size
        return pos

    def _batch(self, chunk: _Chunk, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        # One flat index_select per tensor: 3x cheaper than advanced indexing with a 2-D index.
        idx = chunk.perms[:, pos : pos + self.batch_size].reshape(-1)
        rows = (len(chunk.chains), self.batch_size)
        return (
            self.x.index_select(0, idx).view(*rows, *self.x.shape[1:]),
            self.y.index_select(0, idx).view(*rows, *self.y.shape[1:]),
        )

    def _step_all(self, record: torch.Tensor, mala: bool = False) -> None:
        """One sampler step of every chain; the loss at the pre-step weights goes into ``record``."""
        pos = None if self.shared_batch else self._next_batch_position()
        for chunk in self.chunks:
            noise, drawing = self._draw_noise(chunk)
            xb, yb = (self.x, self.y) if pos is None else self._batch(chunk, pos)
            grads, losses = self.kernels.grad_and_loss(chunk.w, xb, yb, self.shared_batch)
            record.index_copy_(0, chunk.rows, losses.to(record.dtype))
            if drawing is not None:
                drawing.result()
            if mala:
                self._mala_step(chunk, xb, yb, grads, losses, noise)
            else:
                self.sampler.update(chunk.state, {"w": grads}, {"w": noise})
        self.steps_done += 1

    def _mala_step(self, chunk: _Chunk, xb, yb, grads, losses, noise) -> None:
        """The ordinary update, plus the Metropolis-adjusted Langevin log acceptance of the move.

        Written for memory: besides the step's own buffers it holds the old weights, the new
        gradient and one scratch buffer at a time (worked in place; its float64 sums go block by
        block), so a MALA step peaks little above a plain one.
        """
        w_old = chunk.w.clone()
        scale = self.sampler.drift_scale(chunk.state)
        m = None if scale is None else scale["w"]
        self.sampler.update(chunk.state, {"w": grads}, {"w": noise})
        new_grads, new_losses = self.kernels.grad_and_loss(chunk.w, xb, yb, self.shared_batch)
        w_star = self.flat.w_star
        eps = self.step_epsilon

        def energy(w, loss):
            # nβ L_B(w) + γ/2 |w - w*|²
            return self.nbeta * loss.double() + 0.5 * self.gamma * _row_sum_of_squares(torch.sub(w, w_star))

        def log_q(to, frm, g_frm):
            # log density (up to a constant) of proposing ``to`` from ``frm``: a Gaussian around the
            # drifted point frm - (ε/2) M ∇U(frm), ∇U = nβ g + γ (frm - w*), covariance ε M.
            diff = torch.sub(frm, w_star).mul_(self.gamma).add_(g_frm, alpha=self.nbeta)
            if m is not None:
                diff.mul_(m)
            diff.mul_(0.5 * eps).add_(to).sub_(frm)
            return -_row_sum_of_squares(diff, m) / (2 * eps)

        log_alpha = (
            energy(w_old, losses)
            - energy(chunk.w, new_losses)
            + log_q(w_old, chunk.w, new_grads)
            - log_q(chunk.w, w_old, grads)
        )
        accept = torch.exp(torch.clamp(log_alpha, max=0.0))
        self.mala_sum.index_add_(0, chunk.rows, accept)
        self.mala_count.index_add_(0, chunk.rows, torch.ones_like(accept))

    # ------------------------------------------------------------------ phases
    def _burnin(self) -> None:
        """Warm-up. With the automatic ε it has two stages:

        explore: ε_step = EXPLORE_FACTOR × ε (a 10× larger step, still far from the stability limit),
            so the chains spread into the flat, localizer-bounded directions of a singular model in a
            tenth of the steps; the curvature is re-measured at the chains on a doubling schedule
            and ε only ever shrinks. Its length is a number of relaxation times 2/(ε_step γ) of
            the flattest direction, within [MIN_EXPLORE, MAX_EXPLORE] (or 70 % of an explicit
            ``num_burnin_steps``).
        settle: ε_step = ε, the sampling step, so that the directions with curvature relax to the
            sampling phase's distribution before any draw is recorded.
        With a user-given ε the whole burn-in runs at that ε.
        """
        self.phase = "burnin"
        self.block_losses = torch.full(
            (tuning.CHECK_EVERY, self.C), float("nan"), dtype=torch.float64, device=self.device
        )
        self.chain_curv_vec = None
        self.settle_losses: torch.Tensor | None = None
        auto_eps = self.config.epsilon is None
        explicit = self.config.num_burnin_steps is not None
        self.eps_safety = 1.0
        self.explore_steps = 0
        self.settle_steps = 0
        exploring = auto_eps
        self._set_step_epsilon(exploring)
        next_check = 1 if auto_eps else None
        since_check = 0
        t = 0  # steps of the current stage
        while True:
            if exploring:
                target = self._explore_length(explicit)
                if t >= target:
                    exploring = False
                    self.explore_steps = t
                    self._adapt_epsilon(exploring=False)
                    t = 0
                    next_check = tuning.CURVATURE_CHECK_PERIOD
                    continue
            else:
                if t >= self._settle_length(explicit):
                    break
                if self.settle_losses is None:
                    self.settle_losses = torch.full(
                        (self._settle_length(explicit), self.C),
                        float("nan"),
                        dtype=torch.float64,
                        device=self.device,
                    )
            record = self.block_losses[since_check] if exploring else self.settle_losses[t]
            self._step_all(record)
            t += 1
            since_check += 1
            if since_check >= tuning.CHECK_EVERY:
                recorded = (
                    self.block_losses[:since_check] if exploring else self.settle_losses[t - since_check : t]
                )
                bad = self._bad_chains(recorded, t - since_check)
                block_mean = float(recorded.nanmean())
                if not bad and math.isfinite(block_mean):
                    self.block_history.append((self.steps_done, block_mean))
                since_check = 0
                planned = (self._explore_length(explicit) if exploring else self.explore_steps) + (
                    self._settle_length(explicit) if not exploring or explicit else 0
                )
                self.total_steps = max(self.steps_done, planned) + self._sampling_steps()
                self.block_losses.fill_(float("nan"))
                if bad:
                    if auto_eps and self.burnin_restarts < tuning.MAX_BURNIN_RESTARTS:
                        self._restart_burnin(sorted(bad))
                        exploring = True
                        self.settle_losses = None
                        t = 0
                        next_check = 1
                        continue
                    self._mark_diverged(bad, phase="burnin")
                self._report_progress()
            if next_check is not None and t >= next_check:
                self._adapt_epsilon(exploring)
                # Doubling at first (the chains spread fastest early), then periodically.
                next_check = tuning.next_curvature_check(next_check)
        if since_check:
            recorded = self.settle_losses[t - since_check : t]
            bad = self._bad_chains(recorded, t - since_check)
            if bad:
                self._mark_diverged(bad, phase="burnin")
        self.settle_steps = t
        self.num_burnin = self.explore_steps + self.settle_steps
        if hasattr(self.sampler, "freeze"):
            for chunk in self.chunks:
                self.sampler.freeze(chunk.state)
        self._report_progress(force=True)

    def _explore_length(self, explicit: bool) -> int:
        return tuning.explore_length(self.config.num_burnin_steps, self.step_epsilon, self.gamma)

    def _settle_length(self, explicit: bool) -> int:
        return tuning.settle_length(
            self.config.num_burnin_steps, self.explore_steps, self.config.epsilon is not None, self.epsilon, self.gamma
        )

    def _set_step_epsilon(self, exploring: bool) -> None:
        if self.config.epsilon is None:
            self.epsilon = self._epsilon_for(self.h_typ, self.h_seen) * self.eps_safety
            self.step_epsilon = self._explore_epsilon() * self.eps_safety if exploring else self.epsilon
        else:
            self.step_epsilon = self.epsilon
        self._build_sampler()

    def _adapt_epsilon(self, exploring: bool) -> None:
        """Measure the curvature at the chains and re-derive ε from it and the running λ̂."""
        h_max, h_mean, trace = self._measure_chain_curvature()
        if not (math.isfinite(h_max) and math.isfinite(h_mean)):
            return
        self.h_seen = max(self.h_seen, h_max)
        # Typical values once the chains have spread: means over the checks (and loss blocks) of the
        # later half of warm-up so far; early ones see chains still bunched at w*.
        self.h_typ_history.append((self.steps_done, h_mean))
        self.h_typ = tuning.recent_mean(self.h_typ_history, self.steps_done)
        if math.isfinite(trace):
            self.trace_history.append((self.steps_done, trace))
            self.trace_typ = tuning.recent_mean(self.trace_history, self.steps_done)
        if self.block_history:
            self.llc_warm = self.nbeta * (tuning.recent_mean(self.block_history, self.steps_done) - self.init_loss)
        self._set_step_epsilon(exploring)

    def _restart_burnin(self, bad: list[int]) -> None:
        """A chain blew up during warm-up: shrink ε, put every chain back at w*, start warm-up again."""
        self.burnin_restarts += 1
        self.eps_safety /= tuning.RESTART_SHRINK
        self._set_step_epsilon(exploring=True)
        self._note(
            "burnin_restart",
            f"chain(s) {bad} diverged during warm-up; restarted every chain at w* with the step size reduced to "
            f"{self.step_epsilon:.3g} (sampling ε {self.epsilon:.3g})",
        )
        for chunk in self.chunks:
            chunk.w.copy_(self.flat.w_star.expand_as(chunk.w))
            noise = self._noise_view(chunk)
            _draw_normals(noise, chunk.noise_gens)
            chunk.state = self.sampler.init({"w": chunk.w}, {"w": noise})
        self.chain_curv_vec = None

    def _sample(self) -> None:
        self.phase = "sampling"
        steps = self._sampling_steps()
        bw = self.config.num_steps_bw_draws
        self.sample_losses = torch.full(
            (steps, self.C), float("nan"), dtype=torch.float64, device=self.device
        )
        self.mala_sum = torch.zeros(self.C, dtype=torch.float64, device=self.device)
        self.mala_count = torch.zeros(self.C, dtype=torch.float64, device=self.device)
        mala_every = tuning.mala_every(steps, self.config.sampler)
        since_check = 0
        self.sample_steps_done = 0
        for t in range(steps):
            mala = mala_every is not None and t % mala_every == mala_every // 2
            self._step_all(self.sample_losses[t], mala=mala)
            self.sample_steps_done = t + 1
            since_check += 1
            if since_check >= tuning.CHECK_EVERY or t == steps - 1:
                block = self.sample_losses[t + 1 - since_check : t + 1]
                bad = self._bad_chains(block, t + 1 - since_check)
                if bad:
                    self._mark_diverged(bad, phase="sampling")
                since_check = 0
                done = t // bw + 1
                self.draws_done = [
                    self.diverged[c]["draws_done"] if c in self.diverged else done for c in range(self.C)
                ]
                self._report_progress(force=t == steps - 1)

    # ------------------------------------------------------------------ health
    def _bad_chains(self, block: torch.Tensor, start: int) -> dict[int, int]:
        """{chain: first bad step} for chains whose loss went non-finite or exploded in ``block``.

        ``block`` holds the losses of steps ``start, start+1, ...`` (steps × chains).
        """
        if block.numel() == 0:
            return {}
        limit = self.init_loss + tuning.explosion_margin(self.P) / self.nbeta
        bad_steps = ~torch.isfinite(block) | (block > limit)
        if not bool(bad_steps.any()):
            return {}
        out = {}
        for c in torch.nonzero(bad_steps.any(dim=0)).flatten().tolist():
            if c not in self.diverged:
                out[c] = start + int(torch.nonzero(bad_steps[:, c])[0, 0])
        return out

    def _mark_diverged(self, bad: dict[int, int], phase: str) -> None:
        """Stop the chains in ``bad`` ({chain: first bad step of the phase}); keep the draws before it."""
        bw = self.config.num_steps_bw_draws
        suggestion = self._suggested_epsilon()
        for c, step in sorted(bad.items()):
            # Draws are the losses at steps 0, bw, 2bw, ...: those before the bad step are kept.
            draws = 0 if phase == "burnin" else (step + bw - 1) // bw
            self.diverged[c] = {
                "chain": c,
                "phase": phase,
                "step": int(step),
                "draws_done": int(min(draws, self.num_draws)),
                "suggested_epsilon": suggestion,
            }
            if self.config.epsilon is None:
                curvature = (
                    f" (top Hessian eigenvalue seen ≈ {self.h_seen:.3g}, so ε·(nβ·h + γ)/4 = "
                    f"{self.step_epsilon * (self.nbeta * self.h_seen + self.gamma) / 4:.3g})"
                )
            else:
                curvature = ""
            self._note(
                "diverged",
                (
                    f"chain {c} diverged during {phase} at step {step} (loss became non-finite or exploded): "
                    f"the step size ε = {self.step_epsilon:.3g} is too large for the curvature the chain met"
                    f"{curvature}; try epsilon ≤ {suggestion:.3g}"
                ),
                chain=c,
            )
        # Drop the diverged chains from their chunks: they stop, the healthy ones go on.
        for chunk in self.chunks:
            keep = [i for i, c in enumerate(chunk.chains) if c not in self.diverged]
            if len(keep) == len(chunk.chains):
                continue
            self._select_rows(chunk, keep)
        self.chunks = [chunk for chunk in self.chunks if chunk.chains]
        if not self.chunks:
            raise _AllDiverged

    def _select_rows(self, chunk: _Chunk, keep: list[int]) -> None:
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        old_w = chunk.w
        chunk.chains = [chunk.chains[i] for i in keep]
        chunk.rows = chunk.rows[index]
        chunk.w = old_w[index].clone()
        chunk.data_gens = [chunk.data_gens[i] for i in keep]
        chunk.noise_gens = [chunk.noise_gens[i] for i in keep]
        if chunk.perms is not None:
            chunk.perms = chunk.perms[index]
        chunk.state = _select_state(chunk.state, index, old_w.shape[0], {"w": chunk.w})

    def _suggested_epsilon(self) -> float:
        return tuning.suggested_epsilon(
            self.step_epsilon, self.h_seen, self.nbeta, self.gamma, self.config.target_bias,
            epsilon_given=self.config.epsilon is not None,
        )

    def _note(self, code: str, message: str, chain: int | None = None) -> None:
        self.notes.append({"code": code, "message": message, "chain": chain})

    # ------------------------------------------------------------------ progress
    def _report_progress(self, force: bool = False) -> None:
        if self.progress is None:
            return
        now = time.perf_counter()
        if not force and now - self.last_progress < PROGRESS_INTERVAL_S:
            return
        self.last_progress = now
        event = ProgressEvent(
            phase=self.phase,
            draws_done=list(self.draws_done),
            num_draws=self.num_draws,
            num_chains=self.C,
            steps_done=self.steps_done,
            total_steps=self.total_steps,
            elapsed_s=now - self.started,
        )
        if self.progress(event) is False:
            raise _Stopped


# Columns per block of _row_sum_of_squares: bounds its float64 scratch whatever the model's size.
_SUM_BLOCK = 1 << 16


def _row_sum_of_squares(x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_j x_ij² (/ weight_ij) per row, accumulated in float64 block by block of columns, so that no
    float64 copy of the whole (chains, P) tensor is ever made. Row results do not depend on how many
    rows there are, so chunking cannot change them."""
    out = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[1], _SUM_BLOCK):
        block = x[:, start : start + _SUM_BLOCK].to(torch.float64, copy=True)
        squares = block.mul_(block)
        if weight is not None:
            squares.div_(weight[:, start : start + _SUM_BLOCK])
        out += squares.sum(1)
    return out


def _usable_cpus() -> set[int]:
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def _yield_to_compute_threads() -> None:
    """Run this thread (the noise thread) only where no compute thread wants the core.

    With torch's default thread count the compute threads occupy every core. A noise thread of
    equal priority then preempts one of them in the middle of a parallel region, and the whole
    region waits at its barrier for the preempted thread (docs/benchmarks.md, "Torch's default
    thread count"). At the idle scheduling class (or, where that is refused, the lowest nice
    value) the noise runs in the cores' idle moments, or else while the main thread waits for it,
    as if drawn inline. Results do not depend on it: each chain's generator is consumed in the
    same order either way.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # this thread only (Linux)
    except (AttributeError, OSError):
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _draw_normals(out: torch.Tensor, generators: list[torch.Generator]) -> None:
    for row, gen in zip(out, generators, strict=True):
        row.normal_(generator=gen)


def _select_state(state: Any, index: torch.Tensor, rows: int, params: dict[str, torch.Tensor]) -> Any:
    """The sampler state restricted to some chains (tensors whose leading dim is the chain dim)."""

    def pick(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == rows:
            return value[index].clone()
        if isinstance(value, dict):
            return {k: pick(v) for k, v in value.items()}
        return value

    fields = {name: pick(getattr(state, name)) for name in state._fields}
    fields["params"] = params
    return type(state)(**fields)
