"""Smoke test of examples/digits_sgd_vs_adam.py: its whole code path (training, an embedded server,
two batches, the server's comparison plot, the report) with --quick settings."""

from __future__ import annotations

import io

import matplotlib.image as mpimg
import pytest

pytestmark = pytest.mark.slow


def test_the_example_runs_end_to_end_quickly(tmp_path, capsys):  # noqa: ANN001
    from examples.digits_sgd_vs_adam import QUICK_STEPS, main

    out = tmp_path / "plot.png"
    assert main(["--quick", "--out", str(out), "--concurrency", "1"]) == 0
    image = mpimg.imread(io.BytesIO(out.read_bytes()), format="png")
    assert image.shape[:2] == (550, 900) and image[..., :3].std() > 0.05
    printed = capsys.readouterr().out
    table = [line for line in printed.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [int(line.split("|")[1]) for line in table] == list(QUICK_STEPS)


def test_training_saves_checkpoints_the_service_accepts(tmp_path):  # noqa: ANN001
    from safetensors.numpy import load_file

    from estimator.architectures import normalize, state_dict_spec
    from examples.digits_sgd_vs_adam import ARCHITECTURE, load_digits_split, train

    data = load_digits_split()
    assert data[0].shape == (1437, 64) and data[0].max() <= 1.0
    sgd = train("sgd", (5, 20), tmp_path, data)
    adam = train("adam", (5, 20), tmp_path, data)
    assert [s.step for s in sgd] == [5, 20] and adam[-1].train_loss < sgd[0].train_loss
    spec = state_dict_spec(normalize(ARCHITECTURE))
    weights = load_file(str(sgd[0].path))
    assert {k: list(v.shape) for k, v in weights.items()} == {k: list(s.shape) for k, s in spec.items()}
