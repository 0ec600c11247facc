"""The loss's curvature, where the step size needs it: at w*, near w*, and at the chains.

Hessian-vector products on a fixed batch (``tuning.CURVATURE_SAMPLES`` samples) give the top
eigenvalue by power iteration and the trace by Hutchinson's estimator. Every random vector comes
from the run's own generator and is drawn for all chains at once, so chunking cannot change it.
"""

from __future__ import annotations

import math

import torch

from . import tuning
from .problem import Problem


class Curvature:
    def __init__(self, problem: Problem, kernels, generator: torch.Generator):
        self.problem = problem
        self.kernels = kernels
        self.generator = generator
        self.x, self.y = self._batch()
        # The chains' power-iteration vectors, kept between checks (warm starts).
        self.chain_vectors: torch.Tensor | None = None

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.problem
        size = p.static_batch or min(p.n, tuning.CURVATURE_SAMPLES)
        if size == p.n:
            return p.x, p.y
        idx = torch.randperm(p.n, generator=self.generator, device=p.device)[:size]
        return p.x[idx], p.y[idx]

    def _randn(self, shape) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, device=self.problem.device, dtype=self.problem.dtype)

    def hvp(self, w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Hessian-vector products on the curvature batch, in sub-batches of at most batch_size
        samples (memory bounded by one step's activations), weighted into the batch mean."""
        total = self.x.shape[0]
        static = self.problem.static_batch
        size = static or max(1, self.problem.batch_size)
        if size >= total:
            return self.kernels.hvp(w, v, self.x, self.y)
        out = torch.zeros_like(w)
        for start in range(0, total - (total % size if static else 0), size):
            stop = min(total, start + size)
            part = self.kernels.hvp(w, v, self.x[start:stop], self.y[start:stop])
            out.add_(part, alpha=(stop - start) / total)
        return out

    def top(self, w: torch.Tensor, v0: torch.Tensor | None, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
        """|top eigenvalue| of the Hessian of L on the curvature batch at each row of w, and the
        power iteration's vectors."""
        v = self._randn(w.shape) if v0 is None else v0.clone()
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)
        eig = torch.zeros(w.shape[0], device=self.problem.device, dtype=self.problem.dtype)
        for _ in range(iters):
            hv = self.hvp(w, v)
            eig = (v * hv).sum(dim=1)
            norm = hv.norm(dim=1, keepdim=True)
            if not bool(torch.isfinite(norm).all()):
                return torch.full_like(eig, float("inf")), v
            v = torch.where(norm > 0, hv / norm.clamp_min(1e-30), v)
        return eig.abs(), v

    def at_w_star(self) -> float:
        w_star = self.problem.flat.w_star.unsqueeze(0)
        h_star = float(self.top(w_star, None, iters=tuning.POWER_ITERS_AT_W_STAR)[0][0])
        if not math.isfinite(h_star):
            raise ValueError("the Hessian of the loss at the given weights is not finite; check the model and loss")
        return h_star

    def near_w_star(self, h_star: float) -> float:
        """The top curvature the first exploration steps meet, for ε where w* itself is (nearly) flat.

        At a singular point the Hessian at w* can vanish (a deep linear network at the origin), so
        ε from w* alone would be huge and the first steps would throw the chains far out. Probe the
        curvature at w* + (the displacement of the first exploration steps) and shrink ε until it
        is consistent with the curvature found there (tuning.next_probe_curvature).
        """
        p = self.problem
        h = h_star
        for _ in range(tuning.PROBE_ROUNDS):
            step = tuning.explore_epsilon(h, h, p.nbeta, p.gamma, p.config.target_bias)
            radius = tuning.probe_radius(step)
            w = p.flat.w_star.unsqueeze(0) + radius * self._randn((1, p.num_params))
            found = float(self.top(w, None, iters=tuning.WARMUP_POWER_ITERS)[0][0])
            if not math.isfinite(found):
                break
            h, consistent = tuning.next_probe_curvature(h, found, h_star)
            if consistent:
                break
        return max(h, h_star)

    def at_chains(self, positions: list[torch.Tensor]) -> tuple[float, float, float]:
        """(max, mean) over chains of the top curvature at their positions (one (chains, P) tensor
        per chunk; warm-started power iteration), and the chains' mean Hessian trace (Hutchinson,
        Rademacher probes)."""
        p = self.problem
        rows = sum(w.shape[0] for w in positions)
        if self.chain_vectors is None or self.chain_vectors.shape[0] != rows:
            self.chain_vectors = self._randn((rows, p.num_params))
        probes = tuning.TRACE_PROBES
        signs = torch.randint(0, 2, (probes, rows, p.num_params), generator=self.generator, device=p.device)
        signs = signs.to(p.dtype).mul_(2).sub_(1)
        values, vecs, traces = [], [], []
        offset = 0
        for w in positions:
            k = w.shape[0]
            hk, vk = self.top(w, self.chain_vectors[offset : offset + k], iters=tuning.WARMUP_POWER_ITERS)
            values.append(hk)
            vecs.append(vk)
            trace = torch.zeros(k, dtype=torch.float64, device=p.device)
            for i in range(probes):
                z = signs[i, offset : offset + k]
                trace += (z * self.hvp(w, z)).sum(dim=1).double()
            traces.append(trace / probes)
            offset += k
        self.chain_vectors = torch.cat(vecs)
        h = torch.cat(values).double()
        return float(h.max()), float(h.mean()), float(torch.cat(traces).mean())
