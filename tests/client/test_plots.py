"""The shared plots render real PNGs of the expected size that show the data (decoded and inspected)."""

from __future__ import annotations

import io

import matplotlib.image as mpimg
import numpy as np
import pytest

from estimator.plots import diagnostics_summary, plot_job_traces, plot_llc_over_training, series_from_rows

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def decode(png: bytes) -> np.ndarray:
    assert png[:8] == PNG_SIGNATURE
    return mpimg.imread(io.BytesIO(png), format="png")


def pixels_near(image: np.ndarray, hex_colour: str, tol: float = 0.15) -> int:
    """How many pixels have (about) this colour: matplotlib's C0/C1/... prove a series was drawn."""
    rgb = np.array([int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    return int((np.abs(image[..., :3] - rgb).max(axis=-1) < tol).sum())


C0, C1, C2 = "#1f77b4", "#ff7f0e", "#2ca02c"


def traces(chains: int = 3, draws: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rise = 0.1 * (1 - np.exp(-np.arange(draws) / 20))
    loss = 0.5 + rise[None, :] + 0.01 * rng.standard_normal((chains, draws))
    llc = np.cumsum(loss - 0.5, axis=1) / np.arange(1, draws + 1) * 50
    return loss, llc


def test_job_plot_is_a_png_of_the_requested_size_showing_every_chain():
    loss, llc = traces(chains=3)
    image = decode(plot_job_traces(loss, llc, 0.5, width=10, height=7.5, dpi=100))
    assert image.shape[:2] == (750, 1000)
    assert image[..., :3].std() > 0.05  # not a blank canvas
    for colour in (C0, C1, C2):  # one colour per chain, in both panels
        assert pixels_near(image, colour) > 200, colour
    assert pixels_near(image, "#9467bd") < 20  # no fourth chain was drawn


def test_job_plot_shows_diagnostics_and_warnings_below_the_traces():
    loss, llc = traces()
    plain = decode(plot_job_traces(loss, llc, 0.5))
    annotated = decode(
        plot_job_traces(
            loss,
            llc,
            0.5,
            diagnostics={"r_hat": 1.01, "ess_bulk": [150.0, 170.0], "mala_acceptance": 0.93},
            warnings=[{"code": "not_plateaued", "message": "loss trace still rising", "chain": 1}, "a plain warning"],
        )
    )
    assert plain.shape == annotated.shape
    dark = lambda img: int((img[..., :3].max(axis=-1) < 0.3).sum())  # noqa: E731 - text and axes pixels
    # Three lines of text (about 450 dark pixels each) are added; the axes shrink a little to make room.
    assert dark(annotated) > dark(plain) + 700


def test_job_plot_accepts_ragged_chains_nan_padding_and_a_single_chain():
    loss, llc = traces(chains=2, draws=100)
    loss[1, 60:] = np.nan  # a diverged chain that stopped early
    llc[1, 60:] = np.nan
    assert decode(plot_job_traces(loss, llc, 0.5)).shape[:2] == (750, 1000)
    ragged_loss = [list(loss[0]), list(loss[1, :60])]
    ragged_llc = [list(llc[0]), list(llc[1, :60])]
    assert decode(plot_job_traces(ragged_loss, ragged_llc, 0.5)).shape[:2] == (750, 1000)
    assert decode(plot_job_traces(loss[0], llc[0], None)).shape[:2] == (750, 1000)


def test_job_plot_rejects_three_dimensional_input():
    with pytest.raises(ValueError, match="chains, draws"):
        plot_job_traces(np.zeros((2, 3, 4)), np.zeros((2, 3)), 0.0)


def test_llc_over_training_draws_each_collection_in_its_own_colour():
    series = {
        "sgd": [(s, 5.0 + np.log1p(s), 0.3) for s in (0, 100, 200, 400, 800)],
        "adam": [(s, 3.0 + np.log1p(s) / 2, 0.2) for s in (0, 100, 200, 400)],
    }
    image = decode(plot_llc_over_training(series, width=9, height=5.5, dpi=100))
    assert image.shape[:2] == (550, 900)
    assert pixels_near(image, C0) > 200 and pixels_near(image, C1) > 200
    assert pixels_near(image, C2) < 20


def test_llc_over_training_skips_unfinished_points_and_survives_no_data():
    rows = [
        {"step": 10, "llc_mean": 4.0, "llc_std": 0.1, "status": "succeeded"},
        {"step": 20, "llc_mean": None, "llc_std": None, "status": "failed"},
        {"step": 30, "llc_mean": 5.0, "llc_std": None, "status": "succeeded"},
    ]
    points = series_from_rows(rows)
    assert points == [(10, 4.0, 0.1), (20, None, None), (30, 5.0, None)]
    image = decode(plot_llc_over_training({"run": points}))
    assert pixels_near(image, C0) > 50
    empty = decode(plot_llc_over_training({"run": [(1, None, None)]}))
    assert empty.shape == image.shape


def test_plots_are_deterministic():
    loss, llc = traces()
    assert plot_job_traces(loss, llc, 0.5) == plot_job_traces(loss, llc, 0.5)


def test_diagnostics_summary_keeps_scalars_and_summarises_lists():
    text = diagnostics_summary({"r_hat": 1.0234, "ess": [10, 20], "ok": True, "nested": {"a": 1}, "name": "sgld"})
    assert text == "r_hat=1.02, ess∈[10, 20], ok=true, name=sgld"
    assert diagnostics_summary(None) == ""
