"""The model as a pure function of one flat parameter vector, and the batched kernels built on it.

Every chain's parameters live in one row of a ``(chains, P)`` tensor. The loss of one chain is
``loss(functional_call(model, unflatten(row), x), y)``; ``torch.func.vmap`` runs it for all chains
of a chunk in one call (one fused forward/backward), each chain with its own minibatch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import functional_call, grad, jvp, vmap

from .losses import LossFn


class FlatModel:
    """A module's trainable parameters as one flat vector, and its loss as a function of it.

    Parameters with ``requires_grad=False`` are held fixed (like buffers). The caller's module is
    never modified: parameters and buffers are substituted through ``functional_call``.
    """

    def __init__(self, model: torch.nn.Module, loss_fn: LossFn, device: torch.device, dtype: torch.dtype):
        self.model = model
        self.loss_fn = loss_fn
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("model has no trainable parameters (none with requires_grad=True)")
        self.names = [name for name, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.num_params = sum(self.numels)
        self.w_star = torch.cat([p.detach().reshape(-1).to(device=device, dtype=dtype) for _, p in named])
        # Frozen parameters and buffers go along unchanged (moved to the device, floats in dtype).
        self.fixed: dict[str, torch.Tensor] = {}
        for name, p in model.named_parameters():
            if not p.requires_grad:
                self.fixed[name] = _cast(p.detach(), device, dtype)
        for name, b in model.named_buffers():
            self.fixed[name] = _cast(b.detach(), device, dtype)
        self.static_batch = static_batch_size(model)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        pieces = torch.split(flat, self.numels, dim=-1)
        params = {
            name: piece.view(*flat.shape[:-1], *shape)
            for name, piece, shape in zip(self.names, pieces, self.shapes, strict=True)
        }
        if self.fixed:
            params.update(self.fixed)
        return params

    def loss(self, flat: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        outputs = functional_call(self.model, self.unflatten(flat), (inputs,))
        value = self.loss_fn(outputs, targets)
        if value.dim() != 0:
            raise ValueError(
                f"the loss must return a scalar mean loss; got a tensor of shape {tuple(value.shape)}"
            )
        return value


def static_batch_size(model: torch.nn.Module) -> int | None:
    """The batch size a ``torch.export`` module was specialised to, or None if it accepts any.

    A program exported without ``dynamic_shapes`` only runs on inputs of its example's batch size;
    the estimator then samples with minibatches of exactly that size.
    """
    graph = getattr(model, "graph", None)
    if graph is None:
        return None
    for node in graph.nodes:
        if node.op != "placeholder":
            continue
        val = node.meta.get("val")
        shape = getattr(val, "shape", None)
        if shape is not None and len(shape) > 0:
            return shape[0] if isinstance(shape[0], int) else None
        return None
    return None


def _cast(t: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device=device)


class Kernels:
    """Batched loss / gradient / Hessian-vector kernels over a chunk of chains.

    ``vectorised=True``: one ``vmap`` call per chunk. ``vectorised=False``: plain autograd, one chain
    at a time (for models that ``vmap`` cannot trace). Inputs ``x`` are either per-chain batches
    (``shared_batch=False``: shape ``(chains, m, ...)``) or one batch shared by every chain.
    """

    def __init__(self, flat: FlatModel, vectorised: bool):
        self.flat = flat
        self.vectorised = vectorised
        f = flat.loss
        # Every input is batched along dim 0 (a batch shared by all chains is expanded, not copied):
        # batched matmuls then compute each chain exactly as they would alone, so results do not
        # depend on how many chains share a call. (A shared, unbatched x lets vmap fold the chains
        # into one larger matmul whose rounding depends on the number of chains.)
        # Gradients: vmap for the forward pass, ordinary autograd for the backward pass. Chains are
        # independent, so the gradient of the summed losses w.r.t. the stacked parameters is each
        # chain's own gradient; this is bit-identical to vmap(grad(f)) and about 1.5x cheaper in
        # per-call overhead, which dominates for small models.
        self._value = vmap(f)

        def hvp(w, v, x, y):
            return jvp(lambda u: grad(f)(u, x, y), (w,), (v,))[1]

        self._hvp = vmap(hvp)
        self.vectorised_hvp_failed = False

    @staticmethod
    def _per_chain(rows: int, x: torch.Tensor, y: torch.Tensor, shared_batch: bool):
        if not shared_batch:
            return x, y
        return x.expand(rows, *x.shape), y.expand(rows, *y.shape)

    def grad_and_loss(
        self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, shared_batch: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(gradients (chains, P), mean minibatch losses (chains,)) of the loss at each row of w."""
        if self.vectorised:
            leaf = w.detach().requires_grad_(True)
            with torch.enable_grad():
                values = self._value(leaf, *self._per_chain(w.shape[0], x, y, shared_batch))
                (grads,) = torch.autograd.grad(values.sum(), leaf)
            return grads, values.detach()
        grads, losses = [], []
        for c in range(w.shape[0]):
            xc, yc = (x, y) if shared_batch else (x[c], y[c])
            row = w[c].detach().requires_grad_(True)
            with torch.enable_grad():
                value = self.flat.loss(row, xc, yc)
                (g,) = torch.autograd.grad(value, row)
            grads.append(g)
            losses.append(value.detach())
        return torch.stack(grads), torch.stack(losses)

    @torch.no_grad()
    def loss(self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, shared_batch: bool) -> torch.Tensor:
        if self.vectorised:
            return self._value(w, *self._per_chain(w.shape[0], x, y, shared_batch))
        return torch.stack(
            [self.flat.loss(w[c], *((x, y) if shared_batch else (x[c], y[c]))) for c in range(w.shape[0])]
        )

    def hvp(self, w: torch.Tensor, v: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Hessian-vector products H(w_c) v_c of the loss on one shared batch, for each row c."""
        if self.vectorised and not self.vectorised_hvp_failed:
            try:
                return self._hvp(w, v, *self._per_chain(w.shape[0], x, y, True))
            except Exception:  # noqa: BLE001 - forward-mode AD unsupported by some op: use double backward
                self.vectorised_hvp_failed = True
        out = []
        for c in range(w.shape[0]):
            row = w[c].detach().requires_grad_(True)
            with torch.enable_grad():
                value = self.flat.loss(row, x, y)
                (g,) = torch.autograd.grad(value, row, create_graph=True)
                (hv,) = torch.autograd.grad(g, row, grad_outputs=v[c])
            out.append(hv.detach())
        return torch.stack(out)


def probe_vmap(kernels_factory: Callable[[bool], Kernels], w: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    """Try one vectorised gradient on two chains; return (kernels, reason) with the mode that works."""
    try:
        kernels = kernels_factory(True)
        g, v = kernels.grad_and_loss(w, x, y, shared_batch=False)
        if g.shape != w.shape or v.shape != (w.shape[0],):
            raise RuntimeError(f"unexpected shapes from vmap: grad {tuple(g.shape)}, loss {tuple(v.shape)}")
        return kernels, None
    except Exception as exc:  # noqa: BLE001 - any failure to trace means: fall back to sequential
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return kernels_factory(False), f"{type(exc).__name__}: {first_line[:300]}"
