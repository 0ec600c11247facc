"""λ̂ over training of a small GPT-NeoX-style language model, scored as one batch by the service.

The stagewise-development experiment at laptop scale: a 2-layer GPT-NeoX (transformers'
``GPTNeoXForCausalLM``: hidden 64, 4 heads, context 64) is trained on a real text corpus that every
machine has offline, the Python standard library's own ``.py`` files, tokenized with a byte-level
BPE tokenizer trained on that corpus with ``tokenizers`` (vocabulary 512). ``save_pretrained``
checkpoints at log-spaced steps (0, 8, 16, ..., 1024) are uploaded as one collection to an embedded
``lambdahat serve`` (SQLite, local job processes, no Redis), a token dataset (``input_ids`` [N, 64])
is uploaded from a dict, one batch scores every checkpoint with loss ``causal_lm``, and λ̂ ± std is
plotted beside the training and held-out loss.

    .venv/bin/python -m examples.lm_over_training --out docs/img/lm_over_training.png

``--quick`` runs the same code path on a few files, 64 training steps, three checkpoints and a tiny
LLC config (a smoke test, under 90 s).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from examples.digits_sgd_vs_adam import free_port, start_server, stop_server, wait_healthy

COLLECTION = "neox-tiny-stdlib"
MODEL_CONFIG: dict[str, Any] = {
    "vocab_size": 512, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "intermediate_size": 256, "max_position_embeddings": 64, "rotary_pct": 0.25,
}
CONTEXT = 64
TRAIN_BATCH = 16
LEARNING_RATE = 3e-3
WARMUP_STEPS = 32
CHECKPOINT_STEPS = (0, 8, 16, 32, 64, 128, 256, 512, 1024)
NUM_FILES = None  # every top-level .py file of the standard library (~4.7 MB, ~2 M tokens)
HELDOUT_EVERY = 10  # every 10th file is held out: its loss is the generalisation check
NUM_SCORED_SEQUENCES = 1024  # the LLC dataset: this many training sequences of CONTEXT tokens, spread
# A fixed step size and localisation for every checkpoint, so λ̂ is comparable along training (the
# automatic ε is chosen per checkpoint from its curvature); nβ is the estimator's default n / log n.
# ε = 2e-4 drew mala_acceptance warnings (acceptance 0.66 at step 64); 1e-4 moves the estimate at
# step 64 by 1 (114.7 -> 113.7) and leaves only ess_low there.
LLC_CONFIG: dict[str, Any] = {"num_chains": 2, "num_burnin_steps": 200, "num_draws": 300, "batch_size": 16,
                              "epsilon": 1e-4, "gamma": 300.0, "seed": 0}

QUICK_STEPS = (0, 16, 64)
QUICK_NUM_FILES = 12
QUICK_NUM_SCORED_SEQUENCES = 64
QUICK_LLC_CONFIG: dict[str, Any] = {**LLC_CONFIG, "num_chains": 1, "num_burnin_steps": 5, "num_draws": 10}


@dataclass
class Snapshot:
    step: int
    path: Path
    train_loss: float
    heldout_loss: float


# -- corpus and tokenizer ----------------------------------------------------------------------------


def stdlib_sources(num_files: int | None) -> list[str]:
    """The text of the standard library's top-level ``.py`` files, in name order (the same on every run)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"))[:num_files]
    if not files:
        raise RuntimeError(f"no .py files in {stdlib}")
    return [path.read_text(encoding="utf-8", errors="replace") for path in files]


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:  # noqa: ANN401 - tokenizers.Tokenizer
    """A byte-level BPE tokenizer trained on ``texts`` (every byte is in its alphabet: no unknown tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def token_blocks(tokenizer: Any, texts: list[str], context: int) -> Any:  # noqa: ANN401 - np.ndarray [N, context]
    """The texts' tokens, concatenated and cut into rows of ``context`` (the tail is dropped)."""
    import numpy as np

    ids = np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in tokenizer.encode_batch(texts)])
    usable = len(ids) // context * context
    return ids[:usable].reshape(-1, context)


def corpus(num_files: int | None, vocab_size: int, context: int) -> tuple[Any, Any]:
    """(training blocks, held-out blocks): every HELDOUT_EVERY-th file is held out; the tokenizer is
    trained on the training files only."""
    texts = stdlib_sources(num_files)
    train_texts = [t for i, t in enumerate(texts) if i % HELDOUT_EVERY != HELDOUT_EVERY - 1]
    heldout_texts = [t for i, t in enumerate(texts) if i % HELDOUT_EVERY == HELDOUT_EVERY - 1] or texts[-1:]
    tokenizer = train_tokenizer(train_texts, vocab_size)
    return token_blocks(tokenizer, train_texts, context), token_blocks(tokenizer, heldout_texts, context)


# -- training ------------------------------------------------------------------------------------------


def build_model(seed: int = 0) -> Any:  # noqa: ANN401 - GPTNeoXForCausalLM
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    return GPTNeoXForCausalLM(GPTNeoXConfig(**MODEL_CONFIG))


def spread_rows(blocks: Any, count: int) -> Any:  # noqa: ANN401 - np.ndarray
    """``count`` rows spaced evenly through ``blocks`` (so every part of the corpus is represented)."""
    import numpy as np

    if count >= len(blocks):
        return blocks
    return blocks[np.linspace(0, len(blocks) - 1, count).round().astype(np.int64)]


def mean_loss(model: Any, blocks: Any, count: int = 256) -> float:  # noqa: ANN401
    """Mean next-token cross-entropy over ``count`` rows spread through ``blocks``, as ``causal_lm`` counts it."""
    import torch

    ids = torch.from_numpy(spread_rows(blocks, count))
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


def train(steps: tuple[int, ...], out_dir: Path, train_blocks: Any, heldout_blocks: Any, seed: int = 0) -> list[Snapshot]:  # noqa: ANN401
    """AdamW with linear warm-up, minibatches of TRAIN_BATCH random rows; ``save_pretrained`` at ``steps``."""
    import torch
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # save_pretrained's per-shard bar, nine times over

    model = build_model(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / WARMUP_STEPS))
    generator = torch.Generator().manual_seed(seed)
    data = torch.from_numpy(train_blocks)
    snapshots = []
    for step in range(max(steps) + 1):
        if step in steps:
            model.eval()
            path = out_dir / f"step{step}"
            model.save_pretrained(path)
            snapshots.append(Snapshot(step, path, mean_loss(model, train_blocks), mean_loss(model, heldout_blocks)))
            model.train()
        if step == max(steps):
            break
        batch = data[torch.randint(0, len(data), (TRAIN_BATCH,), generator=generator)]
        optimizer.zero_grad()
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        schedule.step()
    return snapshots


# -- scoring on the service -------------------------------------------------------------------------------


def score(url: str, api_key: str, snapshots: list[Snapshot], scored_blocks: Any, llc_config: dict[str, Any],  # noqa: ANN401
          progress: bool) -> list[dict[str, Any]]:
    """Upload the checkpoints (save_pretrained folders) and the token dataset, score them as one batch."""
    from lambdahat import Client

    with Client(url, api_key, timeout=300) as cl:
        dataset = cl.upload_dataset({"input_ids": scored_blocks}, name="stdlib-tokens")
        for snap in snapshots:
            cl.upload_checkpoint(snap.path, collection=COLLECTION, step=snap.step, name=f"step{snap.step}")
        batch = cl.submit_batch(dataset, loss="causal_lm", config=llc_config, collection=COLLECTION)
        final = cl.wait(batch, progress=progress)
        rows = cl.results(final)
    if not final.succeeded:
        errors = "; ".join(f"step {r['step']}: {r['status']}" for r in rows if r["status"] != "succeeded")
        raise RuntimeError(f"batch {final.id} ended {final.status}: {errors}")
    return rows


def plot(rows: list[dict[str, Any]], snapshots: list[Snapshot], out: Path) -> None:
    """Two panels over the training step (symmetric log axis: step 0 is shown): the losses, then λ̂ ± std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [s.step for s in snapshots]
    by_step = {r["step"]: r for r in rows}
    llc = [by_step[s]["llc_mean"] for s in steps]
    llc_std = [by_step[s]["llc_std"] or 0.0 for s in steps]
    figure, (loss_axis, llc_axis) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True, constrained_layout=True)
    loss_axis.plot(steps, [s.train_loss for s in snapshots], "o-", label="training loss")
    loss_axis.plot(steps, [s.heldout_loss for s in snapshots], "s--", label="held-out loss")
    loss_axis.axhline(math.log(MODEL_CONFIG["vocab_size"]), color="grey", lw=0.8, ls=":", label="log V (uniform)")
    loss_axis.set_ylabel("next-token cross-entropy (nats)")
    loss_axis.legend()
    loss_axis.grid(alpha=0.3)
    llc_axis.errorbar(steps, llc, yerr=llc_std, fmt="o-", color="C3", capsize=3, label="λ̂ ± std over chains")
    warned = [s for s in steps if by_step[s]["warnings"]]
    if warned:
        llc_axis.plot(warned, [by_step[s]["llc_mean"] for s in warned], "x", color="k", ms=9,
                      label="job has estimator warnings")
    llc_axis.set_ylabel("λ̂")
    llc_axis.set_xlabel("training step")
    llc_axis.set_xscale("symlog", linthresh=8)
    llc_axis.set_xticks(steps, [str(s) for s in steps])
    llc_axis.minorticks_off()
    llc_axis.legend()
    llc_axis.grid(alpha=0.3)
    figure.suptitle("GPT-NeoX, 2 layers, hidden 64, on the Python standard library (BPE vocab 512)")
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)


def warning_codes(warnings: list[Any]) -> str:
    """The distinct codes of a job's warnings (``ess_low``, ...), in the order they first appear."""
    codes = [w.get("code", "?") if isinstance(w, dict) else str(w).split(":")[0] for w in warnings]
    return ", ".join(dict.fromkeys(codes))


def report(rows: list[dict[str, Any]], snapshots: list[Snapshot]) -> str:
    by_step = {r["step"]: r for r in rows}
    lines = ["| step | training loss | held-out loss | λ̂ ± std | warnings |", "|---:|---:|---:|---:|---|"]
    for snap in snapshots:
        row = by_step[snap.step]
        lines.append(f"| {snap.step} | {snap.train_loss:.3f} | {snap.heldout_loss:.3f} | "
                     f"{row['llc_mean']:.1f} ± {row['llc_std'] or 0.0:.1f} | {warning_codes(row['warnings'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("lm_over_training.png"), help="where to write the PNG")
    parser.add_argument("--quick", action="store_true", help="few files, 64 steps, a tiny LLC config (smoke test)")
    parser.add_argument("--port", type=int, default=0, help="port for the embedded server (default: a free one)")
    parser.add_argument("--concurrency", type=int, default=max(1, min(2, os.cpu_count() or 1)),
                        help="jobs the embedded server runs at once")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)  # the jobs run beside training's tail; more threads only contend on 2 cores
    steps = QUICK_STEPS if args.quick else CHECKPOINT_STEPS
    llc_config = QUICK_LLC_CONFIG if args.quick else LLC_CONFIG
    num_scored = QUICK_NUM_SCORED_SEQUENCES if args.quick else NUM_SCORED_SEQUENCES
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="lambdahat-lm-example-"))
    data_dir = scratch / "service"
    data_dir.mkdir()
    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(data_dir, port, args.concurrency)  # starts while the model trains
    try:
        train_blocks, heldout_blocks = corpus(QUICK_NUM_FILES if args.quick else NUM_FILES,
                                              MODEL_CONFIG["vocab_size"], CONTEXT)
        print(f"corpus: {train_blocks.size:,} training tokens, {heldout_blocks.size:,} held out "
              f"({time.monotonic() - started:.0f} s)", flush=True)
        snapshots = train(steps, scratch, train_blocks, heldout_blocks)
        print(f"trained to step {max(steps)} ({time.monotonic() - started:.0f} s)", flush=True)
        api_key = wait_healthy(url, server, data_dir)
        rows = score(url, api_key, snapshots, spread_rows(train_blocks, num_scored), llc_config, progress=sys.stderr.isatty())
    finally:
        stop_server(server)
        shutil.rmtree(scratch, ignore_errors=True)
    plot(rows, snapshots, args.out)
    print(report(rows, snapshots))
    print(f"\nLLC config: {llc_config}; scored on {num_scored} sequences of {CONTEXT} tokens"
          f"\nplot: {args.out}  ({time.monotonic() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
