"""Smoke test of examples/lm_over_training.py: its whole code path (corpus, BPE tokenizer, GPT-NeoX
training with save_pretrained checkpoints, an embedded server, folder and token uploads, one causal_lm
batch, the figure and the report) with --quick settings."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_the_example_runs_end_to_end_quickly(tmp_path, capsys):  # noqa: ANN001
    from examples.lm_over_training import QUICK_STEPS, main

    out = tmp_path / "plot.png"
    assert main(["--quick", "--out", str(out), "--concurrency", "2"]) == 0
    image = mpimg.imread(out)
    assert image.shape[0] > 400 and image[..., :3].std() > 0.05
    printed = capsys.readouterr().out
    table = [line for line in printed.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [int(line.split("|")[1]) for line in table] == list(QUICK_STEPS)


def test_corpus_and_training_give_falling_loss_and_loadable_checkpoints(tmp_path):  # noqa: ANN001
    from transformers import GPTNeoXForCausalLM

    from examples.lm_over_training import CONTEXT, MODEL_CONFIG, corpus, train

    train_blocks, heldout_blocks = corpus(6, MODEL_CONFIG["vocab_size"], CONTEXT)
    assert train_blocks.shape[1] == CONTEXT and train_blocks.dtype == np.int64 and len(heldout_blocks) > 0
    assert 0 <= train_blocks.min() and train_blocks.max() < MODEL_CONFIG["vocab_size"]
    snapshots = train((0, 24), tmp_path, train_blocks, heldout_blocks)
    assert [s.step for s in snapshots] == [0, 24] and snapshots[1].train_loss < snapshots[0].train_loss
    assert sorted(p.name for p in (tmp_path / "step24").iterdir()) == ["config.json", "generation_config.json",
                                                                      "model.safetensors"]
    GPTNeoXForCausalLM.from_pretrained(tmp_path / "step24")
