"""Figures of LLC results, shared by the SDK, the CLI and the server's ``plot.png`` endpoints. matplotlib + numpy only.

Each function returns PNG bytes. Figures are built with matplotlib's object API on the Agg canvas
(never pyplot), so they are safe to render from server threads and leave no global state behind.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Chains beyond this many are drawn without individual legend entries.
MAX_LABELLED_CHAINS = 8
MAX_WARNING_LINES = 4
FOOTER_CHARS = 150  # characters per footer line at the default size (about 170 fit in 1000 px)
# mathtext: a combining circumflex ("λ̂") does not render in matplotlib's text engine.
LAMBDA_HAT = r"$\hat{\lambda}$"


def _as_chains(values: Any, what: str) -> np.ndarray:
    """A (chains, draws) float array from a 1-D or 2-D array-like (ragged rows padded with NaN)."""
    if isinstance(values, np.ndarray):
        array = values.astype(np.float64, copy=False)
    else:
        rows = list(values)
        if rows and all(isinstance(r, Iterable) and not isinstance(r, str | bytes) for r in rows):
            width = max((len(r) for r in rows), default=0)
            array = np.full((len(rows), width), np.nan)
            for i, row in enumerate(rows):
                array[i, : len(row)] = [np.nan if v is None else float(v) for v in row]
        else:
            array = np.asarray([np.nan if v is None else float(v) for v in rows], dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"{what} must have shape (chains, draws), got {array.shape}")
    return array


def _png(figure: Figure, dpi: int) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _format_number(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.3g}"
    return str(value)


def diagnostics_summary(diagnostics: Mapping[str, Any] | None, limit: int = 6) -> str:
    """``key=value`` for the scalar entries of a diagnostics dict (lists are summarised by their range)."""
    if not diagnostics:
        return ""
    parts = []
    for key, value in diagnostics.items():
        if isinstance(value, bool | int | float):
            parts.append(f"{key}={_format_number(value)}")
        elif isinstance(value, Sequence) and not isinstance(value, str) and value:
            numbers = [v for v in value if isinstance(v, int | float) and not isinstance(v, bool)]
            if numbers and len(numbers) == len(value):
                low, high = min(numbers), max(numbers)
                parts.append(f"{key}={_format_number(low)}" if low == high else f"{key}∈[{_format_number(low)}, {_format_number(high)}]")
        elif isinstance(value, str) and len(value) <= 24:
            parts.append(f"{key}={value}")
        if len(parts) >= limit:
            break
    return ", ".join(parts)


def _warning_line(warning: Any) -> str:
    if isinstance(warning, Mapping):
        message = warning.get("message") or warning.get("msg") or ""
        code = warning.get("code") or ""
        chain = warning.get("chain")
        prefix = f"[{code}{'' if chain is None else f' chain {chain}'}] " if code or chain is not None else ""
        return prefix + str(message)
    return str(warning)


def plot_job_traces(
    loss: Any,
    llc: Any,
    init_loss: float | None,
    diagnostics: Mapping[str, Any] | None = None,
    warnings: Sequence[Any] | None = None,
    *,
    title: str | None = None,
    width: float = 10.0,
    height: float = 7.5,
    dpi: int = 100,
) -> bytes:
    """One job as a PNG: the loss trace of every chain with the ``L_n(w*)`` line (top) and the running
    λ̂ of every chain with the mean estimate (bottom); diagnostics and warnings below.

    ``loss`` and ``llc`` are (chains, draws) arrays (NaN marks draws a chain never made)."""
    loss_chains = _as_chains(loss, "loss")
    llc_chains = _as_chains(llc, "llc")
    footer_lines = _footer_lines(diagnostics, list(warnings or []))
    figure = Figure(figsize=(width, height), layout="constrained")
    ratios = [1.0, 1.0] + ([0.08 + 0.07 * len(footer_lines)] if footer_lines else [])
    grid = figure.add_gridspec(len(ratios), 1, height_ratios=ratios)
    ax_loss = figure.add_subplot(grid[0])
    ax_llc = figure.add_subplot(grid[1], sharex=ax_loss)
    colours = [f"C{i % 10}" for i in range(max(loss_chains.shape[0], llc_chains.shape[0]))]
    _draw_loss_traces(ax_loss, loss_chains, init_loss, colours)
    headline = _draw_running_llc(ax_llc, llc_chains, colours, num_draws=loss_chains.shape[1])
    figure.suptitle(f"{title} — {headline}" if title else headline)
    if footer_lines:
        ax_text = figure.add_subplot(grid[2])
        ax_text.axis("off")
        footer = ax_text.text(0.0, 1.0, "\n".join(footer_lines), transform=ax_text.transAxes, va="top", ha="left",
                              fontsize="small")
        footer.set_in_layout(False)  # its height is reserved by the grid row; its width must not squeeze the axes
    return _png(figure, dpi)


def _footer_lines(diagnostics: Mapping[str, Any] | None, warnings: list[Any]) -> list[str]:
    diag_text = diagnostics_summary(diagnostics)
    lines = (textwrap.wrap(f"diagnostics: {diag_text}", width=FOOTER_CHARS) if diag_text else []) + [
        textwrap.shorten(f"warning: {_warning_line(w)}", width=FOOTER_CHARS) for w in warnings[:MAX_WARNING_LINES]
    ]
    if len(warnings) > MAX_WARNING_LINES:
        lines.append(f"… and {len(warnings) - MAX_WARNING_LINES} more warnings")
    return lines


def _draw_loss_traces(ax: Any, loss_chains: np.ndarray, init_loss: float | None, colours: list[str]) -> None:
    num_chains, num_draws = loss_chains.shape
    draws = np.arange(num_draws)
    for chain in range(num_chains):
        label = f"chain {chain}" if num_chains <= MAX_LABELLED_CHAINS else None
        ax.plot(draws, loss_chains[chain], color=colours[chain], linewidth=0.8, alpha=0.85, label=label)
    if init_loss is not None and math.isfinite(init_loss):
        ax.axhline(init_loss, color="black", linestyle="--", linewidth=1.2, label=f"$L_n(w^*)$ = {init_loss:.4g}")
    ax.set_ylabel("sampled loss $L(w)$")
    ax.set_title("loss traces per chain")
    if num_chains > MAX_LABELLED_CHAINS:
        ax.plot([], [], color="grey", label=f"{num_chains} chains")
    ax.legend(loc="best", fontsize="small", ncols=2)


def _draw_running_llc(ax: Any, llc_chains: np.ndarray, colours: list[str], num_draws: int) -> str:
    """Every chain's running λ̂ and the mean of their final values; returns the figure's headline."""
    finals = []
    for chain in range(llc_chains.shape[0]):
        series = llc_chains[chain]
        ax.plot(np.arange(series.shape[0]), series, color=colours[chain], linewidth=0.9)
        finite = series[np.isfinite(series)]
        if finite.size:
            finals.append(finite[-1])
    if finals:
        mean, std = float(np.mean(finals)), float(np.std(finals, ddof=1)) if len(finals) > 1 else 0.0
        ax.axhline(mean, color="black", linestyle="--", linewidth=1.2, label=rf"{LAMBDA_HAT} = {mean:.4g} ± {std:.2g}")
        ax.axhspan(mean - std, mean + std, color="grey", alpha=0.15)
        ax.legend(loc="best", fontsize="small")
        headline = rf"{LAMBDA_HAT} = {mean:.4g} ± {std:.2g} ({len(finals)} of {llc_chains.shape[0]} chains, {num_draws} draws)"
    else:
        headline = rf"no finite {LAMBDA_HAT} estimate"
        ax.text(0.5, 0.5, "no draws recorded", transform=ax.transAxes, ha="center", va="center")
    ax.set_ylabel(rf"running {LAMBDA_HAT}")
    ax.set_xlabel("draw")
    ax.set_title(rf"running {LAMBDA_HAT} per chain")
    return headline


def series_from_rows(rows: Iterable[Mapping[str, Any]]) -> list[tuple[int | None, float | None, float | None]]:
    """(step, llc_mean, llc_std) from results rows (a batch's ``results``); unfinished rows keep None."""
    return [(row.get("step"), row.get("llc_mean"), row.get("llc_std")) for row in rows]


def plot_llc_over_training(
    series: Mapping[str, Sequence[tuple[int | None, float | None, float | None]]],
    *,
    title: str = r"$\hat{\lambda}$ over training",
    log_steps: bool | None = None,
    width: float = 9.0,
    height: float = 5.5,
    dpi: int = 100,
) -> bytes:
    """λ̂ ± std against training step, one line per named series (collection) on one axis, as a PNG.

    Points without a step or a finite λ̂ (unfinished or failed jobs) are left out and counted in the
    legend. ``log_steps`` (default: when positive steps span more than two decades) uses a log x axis."""
    figure = Figure(figsize=(width, height), layout="constrained")
    ax = figure.add_subplot()
    all_steps: list[float] = []
    plotted = 0
    for index, (name, points) in enumerate(series.items()):
        usable = sorted(
            (float(step), float(mean), 0.0 if std is None or not math.isfinite(std) else float(std))
            for step, mean, std in points
            if step is not None and mean is not None and math.isfinite(mean)
        )
        missing = len(points) - len(usable)
        label = f"{name} ({missing} without a result)" if missing else str(name)
        colour = f"C{index % 10}"
        if not usable:
            ax.plot([], [], color=colour, label=label)
            continue
        steps, means, stds = (np.asarray(column) for column in zip(*usable, strict=True))
        ax.plot(steps, means, marker="o", markersize=4, color=colour, label=label)
        ax.fill_between(steps, means - stds, means + stds, color=colour, alpha=0.2, linewidth=0)
        all_steps.extend(steps.tolist())
        plotted += 1
    positive = [s for s in all_steps if s > 0]
    if log_steps is None:
        log_steps = len(positive) == len(all_steps) and bool(positive) and max(positive) / min(positive) > 100
    if log_steps:
        ax.set_xscale("log")
    if not plotted:
        ax.text(0.5, 0.5, "no finished results yet", transform=ax.transAxes, ha="center", va="center")
    ax.set_xlabel("training step")
    ax.set_ylabel(rf"{LAMBDA_HAT} (mean ± std over chains)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if series:
        ax.legend(loc="best", fontsize="small")
    return _png(figure, dpi)
