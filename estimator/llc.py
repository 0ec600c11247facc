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

Where each part lives: the resolved problem, L_n(w*) and the chain mode in problem.py; curvature in
curvature.py; the step size in stepsize.py (its rules in tuning.py); the chains and one step of
them in chains.py (kernels in samplers/); burn-in and sampling in phases.py; the result in report.py.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from . import hf, tuning
from . import problem as problems
from .chains import ChainSet
from .config import LLCConfig
from .curvature import Curvature
from .data import materialise, to_device
from .functional import FlatModel
from .losses import LossFn, resolve_loss
from .phases import AllDiverged, BurnIn, Progress, RunParts, Sampling, Stopped
from .problem import ChainMode, Notes, Problem
from .report import RunRecord, build_report
from .result import LLCResult, ProgressEvent
from .stepsize import StepSize
from .tokens import is_token_data, model_inputs, token_data

ProgressCallback = Callable[[ProgressEvent], Any]


def estimate_llc(
    model: torch.nn.Module,
    data,
    loss: str | LossFn = "cross_entropy",
    config: LLCConfig | None = None,
    progress: ProgressCallback | None = None,
) -> LLCResult:
    """Estimate the local learning coefficient of ``model`` at its current weights.

    Args:
        model: any ``torch.nn.Module`` (also the module of a ``torch.export`` program), or a
            transformers ``PreTrainedModel`` (its ``.logits`` are scored, with eager attention
            during the run; estimator/hf.py). Its weights are never modified; ordinary modules are
            put in eval mode while sampling and restored.
        data: an ``(inputs, targets)`` pair of tensors, a ``torch.utils.data.Dataset`` of pairs, or
            token data: a dict ``{"input_ids", "attention_mask"?, "labels"?}`` (tensors or numpy
            arrays) or a Hugging Face ``datasets.Dataset`` with an ``input_ids`` column
            (estimator/tokens.py; ``causal_lm`` derives its labels from input_ids).
        loss: "cross_entropy", "mse", "nll", "bce_with_logits", "causal_lm", "masked_lm", or
            ``(outputs, targets) -> mean loss``.
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
    # bfloat16: the chains (w, noise, updates) stay float32; only the model runs under autocast.
    dtype = torch.float64 if config.dtype == "float64" else torch.float32
    autocast_dtype = torch.bfloat16 if config.dtype == "bfloat16" else None
    hf_model = hf.is_hf_model(model)
    if is_token_data(data):
        tokens = token_data(data, loss_name)
        if hf_model:
            hf.check_token_data(model, tokens.input_ids)
        inputs, targets = model_inputs(tokens, pack_attention_mask=hf_model), tokens.labels
    else:
        inputs, targets = materialise(data)
    device, device_reason = _resolve_device(config, model, int(inputs.shape[0]))
    inputs, targets = to_device(inputs, targets, loss_name, device, dtype)

    attention = hf.eager_attention(model) if hf_model else contextlib.nullcontext()
    with _sampling_mode(model), attention as user_attention, torch.random.fork_rng(devices=[]):
        sampled = hf.HFLogits(model) if hf_model else model
        flat = FlatModel(sampled, loss_fn, device, dtype, autocast_dtype)
        notes = Notes()
        problem = problems.make_problem(flat, inputs, targets, config, device_reason, notes)
        result = _run(problem, notes, progress, started)
    if hf_model:
        result.extras.update({
            "model_type": str(model.config.model_type),
            "attn_implementation": hf.SAMPLED_ATTENTION,
            "attn_implementation_model": user_attention,
            "sampled_parameters": problem.num_params,
        })
    return result


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


def _run(problem: Problem, notes: Notes, callback: ProgressCallback | None, started: float) -> LLCResult:
    """The run, top-down: L_n(w*) and the chain mode, the curvature and ε, burn-in, sampling, report."""
    config, timings = problem.config, {}
    t0 = time.perf_counter()
    init_loss, init_loss_samples = problems.init_loss(problem, notes)
    mode = problems.choose_chain_mode(problem, notes)
    timings["init_loss_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    # One independent stream for the run's own choices (curvature probes), one pair per chain.
    seeds = np.random.SeedSequence(config.seed).spawn(1 + problem.num_chains)
    generator = torch.Generator(device=problem.device)
    generator.manual_seed(int(seeds[0].generate_state(1)[0]))
    curvature = Curvature(problem, mode.kernels, generator)
    if problem.epsilon_given:
        # A given ε needs no curvature: skip the Hessian-vector products (they cost more than a
        # short run's sampling on large models). Curvature diagnostics are then absent.
        step = StepSize(problem, init_loss, h_star=float("nan"), h_near=None)
    else:
        h_star = curvature.at_w_star()
        step = StepSize(problem, init_loss, h_star, curvature.near_w_star(h_star))
    timings["curvature_s"] = time.perf_counter() - t0

    chains = ChainSet(problem, mode.kernels, mode.chunk_size, seeds[1:], init_loss, step.step)
    try:
        # With automatic draws the number is decided after warm-up (from the settle stage's
        # autocorrelation); until then progress reports a provisional figure.
        num_draws = config.num_draws if config.num_draws is not None else tuning.PROVISIONAL_DRAWS
        num_burnin = config.num_burnin_steps if config.num_burnin_steps is not None else 0
        total = num_burnin + tuning.sampling_steps(num_draws, config.num_steps_bw_draws)
        progress = Progress(callback, started, problem.num_chains, num_draws, total)
        parts = RunParts(problem, chains, curvature, step, progress, notes)
        burnin, sampling = BurnIn(parts), Sampling(parts)
        stopped = _run_phases(parts, burnin, sampling, timings)
    finally:
        chains.close()
    timings["total_s"] = time.perf_counter() - started
    busy = timings["burnin_s"] + timings["sampling_s"]
    timings["steps_per_s"] = chains.steps_done / busy if busy > 0 else float("nan")
    timings["chain_steps_per_s"] = timings["steps_per_s"] * problem.num_chains
    return build_report(_record(parts, mode, burnin, sampling, init_loss, init_loss_samples, timings, stopped))


def _run_phases(parts: RunParts, burnin: BurnIn, sampling: Sampling, timings: dict[str, float]) -> bool:
    """Burn-in, then sampling; True if the progress callback stopped the run."""
    stopped = False
    t_burnin = time.perf_counter()
    t_sampling = None
    try:
        burnin.run()
        if parts.problem.config.num_draws is None:
            parts.progress.num_draws = burnin.automatic_num_draws()
        t_sampling = time.perf_counter()
        sampling.run()
    except Stopped:
        stopped = True
    except AllDiverged:
        pass
    t_end = time.perf_counter()
    timings["burnin_s"] = (t_sampling or t_end) - t_burnin
    timings["sampling_s"] = t_end - t_sampling if t_sampling is not None else 0.0
    return stopped


def _record(parts: RunParts, mode: ChainMode, burnin: BurnIn, sampling: Sampling, init_loss: float,
            init_loss_samples: int, timings: dict[str, float], stopped: bool) -> RunRecord:
    p, step, chains = parts.problem, parts.step, parts.chains
    return RunRecord(
        config=p.config, n=p.n, num_params=p.num_params, num_chains=p.num_chains, nbeta=p.nbeta,
        gamma=p.gamma, batch_size=p.batch_size, device=str(p.device), device_reason=p.device_reason,
        chain_mode=mode.mode, chain_mode_reason=problems.describe_kernels(mode), chunk_size=mode.chunk_size,
        init_loss=init_loss, init_loss_samples=init_loss_samples, epsilon=step.epsilon,
        h_star=step.h_star, h_seen=step.h_seen, h_typ=step.h_typ, trace_typ=step.trace_typ,
        llc_warm=step.llc_warm, num_draws=parts.progress.num_draws, num_burnin=burnin.num_burnin,
        explore_steps=burnin.explore_steps, settle_steps=burnin.settle_steps,
        burnin_restarts=burnin.restarts, steps_done=chains.steps_done,
        sample_losses=sampling.losses.cpu().numpy(), sample_steps_done=sampling.steps_done,
        mala_sum=chains.mala_sum.cpu().numpy(), mala_count=chains.mala_count.cpu().numpy(),
        diverged=parts.diverged, notes=tuple(parts.notes), timings=dict(timings), stopped=stopped,
    )
