"""The chains of a run: their positions, randomness and kernel states, and one step of all of them.

Chains are rows of ``(chains, P)`` tensors, grouped in chunks that each go through one vectorised
gradient call. Each chain has its own generators (minibatch order, noise) seeded from the run's
seed, and all chains advance in lockstep, so no chain's numbers depend on how chains are chunked.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import tuning
from .problem import Problem
from .samplers import KERNELS
from .samplers.base import localized_drift, select_chains


@dataclass
class Chunk:
    """A group of chains that run through one vectorised call."""

    chains: list[int]  # global chain indices, ascending
    rows: torch.Tensor  # the same, as a device tensor (for index_copy_ into the loss record)
    w: torch.Tensor  # (chains, P): this chunk's parameters
    state: Any  # the kernel state over {"w": w}
    perms: torch.Tensor | None  # (chains, n): this epoch's minibatch order of each chain
    data_gens: list[torch.Generator]
    noise_gens: list[torch.Generator]


class ChainSet:
    def __init__(
        self,
        problem: Problem,
        kernels,
        chunk_size: int,
        seeds: list[np.random.SeedSequence],
        init_loss: float,
        epsilon: float,
    ):
        """``kernels``: the model's gradient kernels; ``seeds``: one per chain; ``epsilon``: the first step."""
        self.problem = problem
        self.kernels = kernels
        self.chunk_size = chunk_size
        p = problem
        # Read at every step: kept here rather than looked up through the problem.
        self.x, self.y, self.batch_size, self.shared_batch = p.x, p.y, p.batch_size, p.shared_batch
        # A loss above this is an explosion (tuning.explosion_margin).
        self.loss_limit = init_loss + tuning.explosion_margin(p.num_params) / p.nbeta
        self.sampler = KERNELS[p.config.sampler].build(p.gamma, p.nbeta, {"w": p.flat.w_star})
        self.noise_pool = _noise_thread() if tuning.prefetch_noise(p.device.type, chunk_size, p.num_params) else None
        self.chunks = [self._chunk(chains, seeds) for chains in _groups(p.num_chains, chunk_size)]
        # One noise buffer shared by all chunks: each chunk's noise is drawn, used and done with
        # within its own part of a step, so memory is one chunk's worth, not C·P.
        self.noise_buf = torch.empty((chunk_size, p.num_params), device=p.device, dtype=p.dtype)
        self.init_states(epsilon)
        self.batch_pos = p.n  # forces a fresh permutation at the first step
        self.steps_done = 0
        self.mala_sum = torch.zeros(p.num_chains, dtype=torch.float64, device=p.device)
        self.mala_count = torch.zeros(p.num_chains, dtype=torch.float64, device=p.device)

    def _chunk(self, chains: list[int], seeds: list[np.random.SeedSequence]) -> Chunk:
        device = self.problem.device
        data_gens, noise_gens = [], []
        for c in chains:
            data_seed, noise_seed = seeds[c].generate_state(2)
            data_gens.append(torch.Generator(device=device).manual_seed(int(data_seed)))
            noise_gens.append(torch.Generator(device=device).manual_seed(int(noise_seed)))
        w = self.problem.flat.w_star.unsqueeze(0).repeat(len(chains), 1)
        rows = torch.tensor(chains, device=device)
        return Chunk(chains, rows, w, state=None, perms=None, data_gens=data_gens, noise_gens=noise_gens)

    def close(self) -> None:
        if self.noise_pool is not None:
            self.noise_pool.shutdown(wait=True)

    # ------------------------------------------------------------------ state
    def init_states(self, epsilon: float) -> None:
        """Every chunk's kernel state at its current positions, with a first draw of noise."""
        for chunk in self.chunks:
            noise = self._noise_view(chunk)
            _draw_normals(noise, chunk.noise_gens)
            chunk.state = self.sampler.init({"w": chunk.w}, {"w": noise}, epsilon)

    def restart(self, epsilon: float) -> None:
        """Every chain back at w*, with a fresh kernel state."""
        for chunk in self.chunks:
            chunk.w.copy_(self.problem.flat.w_star.expand_as(chunk.w))
        self.init_states(epsilon)

    def freeze(self) -> None:
        for chunk in self.chunks:
            self.sampler.freeze(chunk.state)

    def positions(self) -> list[torch.Tensor]:
        return [chunk.w for chunk in self.chunks]

    def drop(self, chains: set[int] | dict[int, Any]) -> None:
        """Stop the given chains: they leave their chunks (empty chunks go), the others go on."""
        for chunk in self.chunks:
            keep = [i for i, c in enumerate(chunk.chains) if c not in chains]
            if len(keep) < len(chunk.chains):
                self._select_rows(chunk, keep)
        self.chunks = [chunk for chunk in self.chunks if chunk.chains]

    def _select_rows(self, chunk: Chunk, keep: list[int]) -> None:
        index = torch.tensor(keep, dtype=torch.long, device=self.problem.device)
        old_w = chunk.w
        chunk.chains = [chunk.chains[i] for i in keep]
        chunk.rows = chunk.rows[index]
        chunk.w = old_w[index].clone()
        chunk.data_gens = [chunk.data_gens[i] for i in keep]
        chunk.noise_gens = [chunk.noise_gens[i] for i in keep]
        if chunk.perms is not None:
            chunk.perms = chunk.perms[index]
        chunk.state = select_chains(chunk.state, index, old_w.shape[0], {"w": chunk.w})

    def bad_chains(self, block: torch.Tensor, start: int, stopped: dict[int, Any]) -> dict[int, int]:
        """{chain: first bad step} for chains not in ``stopped`` whose loss went non-finite or
        exploded in ``block``, the losses of steps ``start, start+1, ...`` (steps × chains)."""
        if block.numel() == 0:
            return {}
        bad_steps = ~torch.isfinite(block) | (block > self.loss_limit)
        if not bool(bad_steps.any()):
            return {}
        out = {}
        for c in torch.nonzero(bad_steps.any(dim=0)).flatten().tolist():
            if c not in stopped:
                out[c] = start + int(torch.nonzero(bad_steps[:, c])[0, 0])
        return out

    # ------------------------------------------------------------------ stepping
    def _noise_view(self, chunk: Chunk) -> torch.Tensor:
        return self.noise_buf[: len(chunk.chains)]

    def _draw_noise(self, chunk: Chunk) -> tuple[torch.Tensor, Any]:
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
        p = self.problem
        if self.batch_pos + p.batch_size > p.n:
            for chunk in self.chunks:
                chunk.perms = torch.stack([torch.randperm(p.n, generator=g, device=p.device) for g in chunk.data_gens])
            self.batch_pos = 0
        pos = self.batch_pos
        self.batch_pos += p.batch_size
        return pos

    def _batch(self, chunk: Chunk, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        # One flat index_select per tensor: 3x cheaper than advanced indexing with a 2-D index.
        x, y, size = self.x, self.y, self.batch_size
        idx = chunk.perms[:, pos : pos + size].reshape(-1)
        rows = (len(chunk.chains), size)
        return x.index_select(0, idx).view(*rows, *x.shape[1:]), y.index_select(0, idx).view(*rows, *y.shape[1:])

    def step(self, record: torch.Tensor, epsilon: float, mala: bool = False) -> None:
        """One step of size ε of every chain; the loss at the pre-step weights goes into ``record``."""
        shared = self.shared_batch
        pos = None if shared else self._next_batch_position()
        for chunk in self.chunks:
            noise, drawing = self._draw_noise(chunk)
            xb, yb = (self.x, self.y) if pos is None else self._batch(chunk, pos)
            grads, losses = self.kernels.grad_and_loss(chunk.w, xb, yb, shared)
            record.index_copy_(0, chunk.rows, losses.to(record.dtype))
            if drawing is not None:
                drawing.result()
            if mala:
                self._mala_step(chunk, xb, yb, grads, losses, noise, epsilon)
            else:
                self.sampler.update(chunk.state, {"w": grads}, {"w": noise}, epsilon)
        self.steps_done += 1

    def _mala_step(self, chunk: Chunk, xb, yb, grads, losses, noise, eps: float) -> None:
        """The ordinary update, plus the Metropolis-adjusted Langevin log acceptance of the move.

        Written for memory: besides the step's own buffers it holds the old weights, the new
        gradient and one scratch buffer at a time (worked in place; its float64 sums go block by
        block), so a MALA step peaks little above a plain one.
        """
        p = self.problem
        nbeta, gamma, w_star = p.nbeta, p.gamma, p.flat.w_star
        w_old = chunk.w.clone()
        scale = self.sampler.drift_scale(chunk.state)
        m = None if scale is None else scale["w"]
        self.sampler.update(chunk.state, {"w": grads}, {"w": noise}, eps)
        new_grads, new_losses = self.kernels.grad_and_loss(chunk.w, xb, yb, p.shared_batch)

        def energy(w, loss):
            # nβ L_B(w) + γ/2 |w - w*|²
            return nbeta * loss.double() + 0.5 * gamma * _row_sum_of_squares(torch.sub(w, w_star))

        def log_q(to, frm, g_frm):
            # log density (up to a constant) of proposing ``to`` from ``frm``: a Gaussian around the
            # drifted point frm - (ε/2) M ∇U(frm), covariance ε M.
            diff = localized_drift(g_frm, frm, w_star, nbeta, gamma)
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


def _groups(count: int, size: int) -> list[list[int]]:
    return [list(range(start, min(count, start + size))) for start in range(0, count, size)]


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


def _draw_normals(out: torch.Tensor, generators: list[torch.Generator]) -> None:
    for row, gen in zip(out, generators, strict=True):
        row.normal_(generator=gen)


def _noise_thread() -> concurrent.futures.ThreadPoolExecutor:
    # With a spare core the noise thread runs there at normal priority; without one it must not
    # take a core from the compute threads.
    spare_core = torch.get_num_threads() < len(_usable_cpus())
    return concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="llc-noise", initializer=None if spare_core else _yield_to_compute_threads
    )


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
