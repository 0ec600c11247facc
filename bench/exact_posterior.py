"""Reference values for the validation battery: the exact expectation E[nβ (L_n(w) - L_n(w*))] under
the localized tempered posterior of a deep linear network / reduced rank regression case, by
full-batch Metropolis-adjusted Langevin (MALA): no discretisation or minibatch bias, only Monte Carlo
error. It separates the estimator's sampling error from the finite-n gap between the posterior and
its n -> ∞ limit λ (docs/estimator.md, "Choices, and what they measured").

    .venv/bin/python bench/exact_posterior.py 3,3,3,3 0             # widths, true rank r
    .venv/bin/python bench/exact_posterior.py 10,5,5,10 0 --n 100000 --gamma 0.5

For a noise-free teacher with the MSE loss, L_n(W) = tr((P - P*) Σ̂ (P - P*)^T) / N with P the
product of the layers and Σ̂ the inputs' second moment, so each step costs O(widths³) regardless of n:
many chains (default 128) run as one batch, in float64. The step size adapts per chain towards an
acceptance of 0.6 during burn-in and is then fixed.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from estimator import validation_cases as vc  # noqa: E402


def exact_posterior(widths, r, n, gamma, chains=128, burnin=5000, steps=5000, seed=0, target=0.6):
    dtype = torch.float64
    case = vc.dln_case(widths, r, n)
    model, (x, _) = case.build(seed)
    x = x.to(dtype)
    second_moment = x.T @ x / n
    layers = [layer.weight.detach().to(dtype) for layer in model]
    teacher = layers[0]
    for w in layers[1:]:
        teacher = w @ teacher
    outputs = widths[-1]
    nbeta = n / math.log(n)
    w_star = [w.unsqueeze(0).repeat(chains, 1, 1) for w in layers]
    gen = torch.Generator().manual_seed(seed)

    def energy_and_grad(ws):
        ws = [w.detach().requires_grad_(True) for w in ws]
        product = ws[0]
        for w in ws[1:]:
            product = w @ product
        diff = product - teacher
        loss = ((diff @ second_moment) * diff).sum((1, 2)) / outputs
        local = sum(((w - w0) ** 2).sum((1, 2)) for w, w0 in zip(ws, w_star, strict=True))
        energy = nbeta * loss + gamma / 2 * local
        grads = torch.autograd.grad(energy.sum(), ws)
        return [w.detach() for w in ws], energy.detach(), loss.detach(), grads

    current, energy, loss, grads = energy_and_grad([w.clone() for w in w_star])
    eps = torch.full((chains,), 1e-4, dtype=dtype)
    losses, accepted = [], []
    for t in range(burnin + steps):
        e = eps.view(chains, 1, 1)
        proposal = [
            w - e / 2 * g + e.sqrt() * torch.randn(w.shape, generator=gen, dtype=dtype)
            for w, g in zip(current, grads, strict=True)
        ]
        proposal, energy2, loss2, grads2 = energy_and_grad(proposal)

        def log_q(to, frm, g_frm, e=e, eps=eps):
            total = sum(
                ((a - b + e / 2 * g) ** 2).sum((1, 2)) for a, b, g in zip(to, frm, g_frm, strict=True)
            )
            return -total / (2 * eps)

        log_alpha = energy - energy2 + log_q(current, proposal, grads2) - log_q(proposal, current, grads)
        accept = torch.rand(chains, generator=gen, dtype=dtype).log() < log_alpha
        a = accept.view(chains, 1, 1)
        current = [torch.where(a, p, c) for p, c in zip(proposal, current, strict=True)]
        grads = [torch.where(a, g2, g) for g, g2 in zip(grads, grads2, strict=True)]
        energy = torch.where(accept, energy2, energy)
        loss = torch.where(accept, loss2, loss)
        if t < burnin:
            eps = eps * torch.exp(0.05 * (accept.to(dtype) - target))
        else:
            losses.append(loss.clone())
            accepted.append(accept.to(dtype).mean())
    per_chain = nbeta * torch.stack(losses).mean(0)
    return {
        "case": case.name,
        "llc": float(case.llc),
        "n": n,
        "gamma": gamma,
        "mean": float(per_chain.mean()),
        "sem": float(per_chain.std() / math.sqrt(chains)),
        "acceptance": float(torch.stack(accepted).mean()),
        "epsilon_median": float(eps.median()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("widths", help="comma-separated widths, input first, e.g. 3,3,3,3")
    parser.add_argument("rank", type=int)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--gamma", type=float, default=1.0)
    parser.add_argument("--chains", type=int, default=128)
    parser.add_argument("--burnin", type=int, default=5000)
    parser.add_argument("--steps", type=int, default=5000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    out = exact_posterior(
        tuple(int(v) for v in args.widths.split(",")),
        args.rank,
        args.n,
        args.gamma,
        chains=args.chains,
        burnin=args.burnin,
        steps=args.steps,
    )
    rel = (out["mean"] - out["llc"]) / out["llc"]
    print(
        f"{out['case']} n={out['n']} γ={out['gamma']}: exact posterior {out['mean']:.4f} ± {out['sem']:.4f} "
        f"(λ = {out['llc']:.4g}, {rel:+.1%}); MALA acceptance {out['acceptance']:.2f}, "
        f"ε {out['epsilon_median']:.2e}, {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
