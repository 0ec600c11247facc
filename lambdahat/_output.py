"""How the CLI prints things: rich tables for people, CSV and JSON for scripts, live progress on stderr."""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from lambdahat.models import Batch, Checkpoint, Dataset, Job, warning_text


def _console(stream: Any) -> Console:
    # Piped output keeps whole ids and values: rich would otherwise squeeze tables into 80 columns.
    is_terminal = stream.isatty()
    return Console(file=stream, width=None if is_terminal else int(os.environ.get("COLUMNS", "200")), soft_wrap=False)


stdout = _console(sys.stdout)
stderr = _console(sys.stderr)


def jsonable(value: Any) -> Any:
    """JSON-ready data: pydantic models dumped, datetimes as ISO text, NaN/inf as null, arrays as lists."""
    if hasattr(value, "model_dump"):
        return jsonable(value.model_dump(mode="json"))
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(jsonable(value), indent=2) + "\n")


def print_csv(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(c)) for c in columns])


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list):
        return "; ".join(warning_text(v) for v in value)
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    return value


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}g}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> None:
    table = Table(title=title, show_lines=False, header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(fmt(v) for v in row))
    stdout.print(table)


def print_key_values(pairs: Iterable[tuple[str, Any]], title: str | None = None) -> None:
    table = Table(title=title, show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in pairs:
        table.add_row(key, fmt(value))
    stdout.print(table)


# -- objects --------------------------------------------------------------------------------

DATASET_COLUMNS = ["id", "name", "n", "x_shape", "y_shape", "x_dtype", "y_dtype", "format", "created_at"]
CHECKPOINT_COLUMNS = ["id", "name", "collection", "step", "format", "num_params", "created_at"]
JOB_COLUMNS = ["id", "status", "progress", "checkpoint_id", "dataset_id", "loss", "llc_mean", "llc_std", "created_at"]
RESULT_COLUMNS = ["step", "checkpoint_id", "job_id", "status", "llc_mean", "llc_std", "warnings"]


def flat(obj: Dataset | Checkpoint | Job | Batch) -> dict[str, Any]:
    """One level of fields for tables and CSV."""
    row = obj.model_dump()
    if isinstance(obj, Job):
        row["llc_mean"] = obj.result.llc_mean if obj.result else None
        row["llc_std"] = obj.result.llc_std if obj.result else None
        row["created_at"] = obj.timings.created_at
    return row


def print_objects(objects: Sequence[Any], columns: Sequence[str], output_format: str, title: str) -> None:
    if output_format == "json":
        print_json(list(objects))
    elif output_format == "csv":
        print_csv(columns, [flat(o) for o in objects])
    elif output_format == "ids":
        for obj in objects:
            sys.stdout.write(obj.id + "\n")
    else:
        rows = [flat(o) for o in objects]
        print_table(columns, [[row.get(c) for c in columns] for row in rows], title=title)


def job_pairs(job: Job) -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = [
        ("job", job.id),
        ("status", job.status + (" (cancel requested)" if job.cancel_requested and not job.finished else "")),
        ("progress", f"{100 * (job.progress or 0.0):.1f}%"),
        ("checkpoint", job.checkpoint_id),
        ("dataset", job.dataset_id),
        ("loss", job.loss),
        ("config", json.dumps(job.config or {})),
        ("attempts", job.attempts),
        ("worker", job.worker),
        ("queued", job.timings.queued_at),
        ("started", job.timings.started_at),
        ("finished", job.timings.finished_at),
        ("duration", None if job.timings.duration_s is None else f"{job.timings.duration_s:.1f} s"),
    ]
    if job.error:
        pairs.append(("error", job.error))
    result = job.result
    if result is not None:
        pairs.append(("llc", f"{fmt(result.llc_mean)} ± {fmt(result.llc_std)}"))
        if result.llc_per_chain:
            pairs.append(("llc per chain", ", ".join(fmt(v) for v in result.llc_per_chain)))
        pairs += [("init loss L_n(w*)", result.init_loss), ("nbeta", result.nbeta), ("n", result.n)]
        for warning in result.warnings:
            pairs.append(("warning", warning_text(warning)))
    return pairs


def batch_pairs(batch: Batch) -> list[tuple[str, Any]]:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(batch.counts.items()) if v) or "-"
    return [
        ("batch", batch.id),
        ("status", batch.status or ("finished" if batch.finished else "in progress")),
        ("jobs", f"{batch.num_finished}/{batch.num_jobs} finished ({counts})"),
        ("collection", batch.collection),
        ("dataset", batch.dataset_id),
        ("loss", batch.loss),
        ("config", json.dumps(batch.config or {})),
        ("created", batch.created_at),
    ]


# -- live progress --------------------------------------------------------------------------


class LiveProgress:
    """A rich progress bar on stderr fed with Job/Batch snapshots (the SDK's ``wait(progress=callable)``)."""

    def __init__(self, enabled: bool = True) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=stderr,
            transient=False,
            disable=not enabled,
        )
        self.task: TaskID | None = None

    def __enter__(self) -> LiveProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.stop()

    def __call__(self, obj: Job | Batch) -> None:
        if isinstance(obj, Batch):
            total, done = max(obj.num_jobs, 1), obj.num_finished
            status = ", ".join(f"{k} {v}" for k, v in sorted(obj.counts.items()) if v)
            description = f"batch {obj.id[:8]}"
        else:
            total, done = 1000, round(1000 * min(max(obj.progress or 0.0, 0.0), 1.0))
            if obj.succeeded:
                done = total
            status = obj.status + (f", {obj.draws_done} draws" if obj.draws_done else "")
            description = f"job {obj.id[:8]}"
        if self.task is None:
            self.task = self.progress.add_task(description, total=total, status=status)
        self.progress.update(self.task, total=total, completed=done, status=status)


# -- figures (PNG files next to the printed results) -----------------------------------------------


def figure_for(cl: Any, target: Any, rows: list[dict[str, Any]]) -> bytes:
    """λ̂ over training for a batch; the traces figure for a job."""
    from estimator.plots import plot_llc_over_training, series_from_rows

    if isinstance(target, Batch):
        return plot_llc_over_training({target.collection or f"batch {target.id[:8]}": series_from_rows(rows)})
    return job_figure(cl, target)


def job_figure(cl: Any, job: Any) -> bytes:
    from estimator.plots import plot_job_traces

    traces = cl.traces(job)
    result = job.result
    return plot_job_traces(
        traces["loss"],
        traces["llc"],
        traces["init_loss"],
        diagnostics=result.diagnostics if result else None,
        warnings=result.warnings if result else None,
        title=f"job {job.id[:8]}",
    )


def write_png(path: Any, png: bytes) -> None:
    path.write_bytes(png)
    stderr.print(f"wrote {path} ({len(png)} bytes)", highlight=False)
