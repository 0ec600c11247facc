"""The user commands of ``lambdahat``: upload, submit, batch, status, wait, results, traces, ...

They talk to a running server over HTTP through the client SDK and never import server code (see
docs/client.md). The operator commands (serve, worker, db, keys, demo) are added to this same
``app`` by ``ops/cli.py``, the ``lambdahat`` entry point.
"""

from __future__ import annotations

import enum
import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from estimator.config import LOSSES

app = typer.Typer(help="lambdahat: local learning coefficient estimation for PyTorch checkpoints.", no_args_is_help=True)
# Exit codes (documented in docs/client.md; scripts may rely on them):
EXIT_OK = 0
EXIT_JOB_FAILED = 1  # the job (or a job of the batch) finished failed or cancelled
EXIT_USAGE = 2  # bad arguments or local input (missing file, invalid JSON, unknown architecture)
EXIT_SERVER = 3  # server unreachable, HTTP 5xx, or an answer the client cannot read
EXIT_NOT_FOUND = 4  # no such job / batch / checkpoint / dataset (HTTP 404)
EXIT_AUTH = 5  # missing, invalid or revoked API key, or a missing scope (HTTP 401 / 403)
EXIT_REJECTED = 6  # the server refused the request's content (HTTP 400, 409, 413, 422, 429)
EXIT_TIMEOUT = 7  # `wait --timeout` ran out before the job or batch finished
EXIT_INTERRUPTED = 130  # Ctrl-C (the job keeps running on the server)

UrlOption = Annotated[
    str | None,
    typer.Option("--url", envvar="LAMBDAHAT_URL", help="Server URL (default http://127.0.0.1:8000).", show_default=False),
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="LAMBDAHAT_API_KEY",
        help="API key (default: the key file the local server writes, <data dir>/api_key).",
        show_default=False,
    ),
]
ConfigOption = Annotated[
    str | None,
    typer.Option("--config", help="LLCConfig fields as a JSON object, or a path to a JSON file."),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="One config field as key=value (value parsed as JSON, else text). Repeatable."),
]


class OutputFormat(enum.StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


class ListFormat(enum.StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    ids = "ids"


def _exit_code_for(error: Exception) -> int:
    from lambdahat import errors

    if isinstance(error, errors.WaitTimeout):
        return EXIT_TIMEOUT
    if isinstance(error, errors.JobFailed):
        return EXIT_JOB_FAILED
    if isinstance(error, errors.NotFound):
        return EXIT_NOT_FOUND
    if isinstance(error, errors.Unauthorized | errors.Forbidden):
        return EXIT_AUTH
    if isinstance(error, errors.ValidationFailed | errors.Conflict | errors.PayloadTooLarge | errors.RateLimited):
        return EXIT_REJECTED
    return EXIT_SERVER


def _user_command(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn client errors into one line on stderr and a documented exit code (no traceback).

    LAMBDAHAT_DEBUG=1 lets exceptions through, for bug reports."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from lambdahat.errors import LambdahatError

        if os.environ.get("LAMBDAHAT_DEBUG"):
            return func(*args, **kwargs)
        try:
            return func(*args, **kwargs)
        except LambdahatError as exc:
            _error(str(exc))
            raise typer.Exit(_exit_code_for(exc)) from None
        except (FileNotFoundError, IsADirectoryError, PermissionError, ValueError, TypeError) as exc:
            _error(str(exc))
            raise typer.Exit(EXIT_USAGE) from None
        except KeyboardInterrupt:
            _error("interrupted (jobs already submitted keep running on the server; `lambdahat cancel ID` stops one)")
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper


def _error(message: str) -> None:
    from lambdahat._output import stderr

    stderr.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)


def _connect(url: str | None, api_key: str | None) -> Any:
    from lambdahat import Client

    return Client(url=url, api_key=api_key)


def _json_argument(value: str, what: str) -> Any:
    """Inline JSON, or the JSON content of a file."""
    text = value.strip()
    if not text.startswith(("{", "[")):
        path = Path(value).expanduser()
        if not path.is_file():
            raise ValueError(f"{what}: {value!r} is neither a JSON object nor an existing file")
        text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} is not valid JSON: {exc}") from None


def _config(config: str | None, settings: list[str] | None) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    if config:
        parsed = _json_argument(config, "--config")
        if not isinstance(parsed, dict):
            raise ValueError("--config must be a JSON object, e.g. '{\"num_chains\": 4}'")
        merged.update(parsed)
    for setting in settings or []:
        key, sep, raw = setting.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {setting!r}")
        try:
            merged[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            merged[key.strip()] = raw
    return merged


def _wait_and_report(cl: Any, target: Any, timeout: float | None, poll: float, quiet: bool) -> Any:
    from lambdahat._output import LiveProgress

    with LiveProgress(enabled=not quiet) as live:
        return cl.wait(target, progress=live, timeout=timeout, poll=poll)


def _finished_code(obj: Any) -> int:
    return EXIT_OK if obj.succeeded else EXIT_JOB_FAILED


def _print_state(obj: Any, output_format: OutputFormat) -> None:
    from lambdahat import Batch
    from lambdahat._output import batch_pairs, job_pairs, print_json, print_key_values

    if output_format is OutputFormat.json:
        print_json(obj)
    elif output_format is OutputFormat.csv:
        from lambdahat._output import JOB_COLUMNS, flat, print_csv

        print_csv(list(flat(obj)) if isinstance(obj, Batch) else JOB_COLUMNS, [flat(obj)])
    else:
        print_key_values(batch_pairs(obj) if isinstance(obj, Batch) else job_pairs(obj))


@app.command("upload")
@_user_command
def upload(
    paths: Annotated[list[Path], typer.Argument(
        help="Checkpoint files (.safetensors, .pt, .pt2, or a .zip/.tar archive of a save_pretrained folder) or "
             "save_pretrained folders.", show_default=False)],
    architecture: Annotated[
        str | None, typer.Option(help="Architecture JSON (inline or a file); needed for .safetensors and .pt.")
    ] = None,
    collection: Annotated[str | None, typer.Option(help="Collection (e.g. a training run) to file them under.")] = None,
    step: Annotated[int | None, typer.Option(help="Training step (one file only).")] = None,
    step_from_filename: Annotated[
        bool, typer.Option("--step-from-filename",
                           help="Take each step from the last number in its file name (or folder name).")
    ] = False,
    name: Annotated[str | None, typer.Option(help="Name (one file only; default: the file name).")] = None,
    task: Annotated[str | None, typer.Option(
        help="Hugging Face checkpoints: causal_lm, sequence_classification or masked_lm (default: from config.json).",
    )] = None,
    output_format: Annotated[ListFormat, typer.Option("--format", help="Output format.")] = ListFormat.table,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Upload checkpoints. Examples: lambdahat upload run/step_*.safetensors --architecture arch.json
    --collection run-a --step-from-filename; lambdahat upload runs/pythia-tiny/step*/ --collection
    pythia-tiny --step-from-filename (save_pretrained folders, sent as archives)"""
    from lambdahat._output import CHECKPOINT_COLUMNS, print_objects
    from lambdahat.serialize import pretrained_files, step_from_path

    if step is not None and step_from_filename:
        raise typer.BadParameter("give --step or --step-from-filename, not both")
    if len(paths) > 1 and (step is not None or name is not None):
        raise typer.BadParameter("--step and --name apply to a single file; use --step-from-filename for several")
    for path in paths:
        if path.is_dir():
            pretrained_files(path)  # a folder that is no checkpoint fails here, before anything is uploaded
        elif not path.is_file():
            raise FileNotFoundError(f"no such file or folder: {path}")
    arch = _json_argument(architecture, "--architecture") if architecture else None
    if arch is not None and any(p.is_dir() for p in paths):
        raise typer.BadParameter("--architecture is for state_dict files; a save_pretrained folder has its config.json")
    steps = [step_from_path(p) if step_from_filename else step for p in paths]
    uploaded = []
    with _connect(url, api_key) as cl:
        try:
            for path, path_step in zip(paths, steps, strict=True):
                uploaded.append(cl.upload_checkpoint(
                    path, architecture=arch, collection=collection, step=path_step, name=name, task=task))
        finally:
            if uploaded or output_format is not ListFormat.table:
                print_objects(uploaded, CHECKPOINT_COLUMNS, output_format.value, title="uploaded checkpoints")
            if len(uploaded) < len(paths):
                _error(f"uploaded {len(uploaded)} of {len(paths)} files; stopped at {paths[len(uploaded)]}")


@app.command("upload-dataset")
@_user_command
def upload_dataset(
    path: Annotated[Path, typer.Argument(
        help="A .safetensors or .npz file with arrays x and y, or a token dataset (input_ids [N, T], optional "
             "attention_mask and labels).", show_default=False)],
    name: Annotated[str | None, typer.Option(help="Name (default: the file name).")] = None,
    output_format: Annotated[ListFormat, typer.Option("--format", help="Output format.")] = ListFormat.table,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Upload a dataset (arrays x and y with equal first dimension, or token arrays input_ids, ...)."""
    from lambdahat._output import DATASET_COLUMNS, print_objects

    with _connect(url, api_key) as cl:
        dataset = cl.upload_dataset(path, name=name)
    print_objects([dataset], DATASET_COLUMNS, output_format.value, title="uploaded dataset")


@app.command("datasets")
@_user_command
def list_datasets(
    output_format: Annotated[ListFormat, typer.Option("--format", help="Output format.")] = ListFormat.table,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """List your datasets."""
    from lambdahat._output import DATASET_COLUMNS, print_objects

    with _connect(url, api_key) as cl:
        print_objects(cl.datasets(), DATASET_COLUMNS, output_format.value, title="datasets")


@app.command("checkpoints")
@_user_command
def list_checkpoints(
    collection: Annotated[str | None, typer.Option(help="Only this collection.")] = None,
    output_format: Annotated[ListFormat, typer.Option("--format", help="Output format.")] = ListFormat.table,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """List your checkpoints."""
    from lambdahat._output import CHECKPOINT_COLUMNS, print_objects

    with _connect(url, api_key) as cl:
        print_objects(cl.checkpoints(collection=collection), CHECKPOINT_COLUMNS, output_format.value, title="checkpoints")


@app.command("jobs")
@_user_command
def list_jobs(
    status: Annotated[str | None, typer.Option(help="Only jobs in this state (queued, running, succeeded, ...).")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest first).")] = 50,
    output_format: Annotated[ListFormat, typer.Option("--format", help="Output format.")] = ListFormat.table,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """List your jobs, newest first."""
    from lambdahat._output import JOB_COLUMNS, print_objects

    with _connect(url, api_key) as cl:
        print_objects(cl.jobs(status=status, limit=limit), JOB_COLUMNS, output_format.value, title="jobs")


@app.command("submit")
@_user_command
def submit(
    checkpoint_id: Annotated[str, typer.Argument(help="Checkpoint id.", show_default=False)],
    dataset: Annotated[str, typer.Option(help="Dataset id.", show_default=False)],
    loss: Annotated[str, typer.Option(help=" | ".join(LOSSES), show_default=False)],
    config: ConfigOption = None,
    set_: SetOption = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Resubmitting with the same key returns the same job.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the job and show progress.")] = False,
    timeout: Annotated[float | None, typer.Option(help="With --wait: give up after this many seconds.")] = None,
    output_format: Annotated[ListFormat, typer.Option("--format", help="Output format.")] = ListFormat.table,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Queue an LLC job. Example: lambdahat submit CK --dataset DS --loss cross_entropy --set num_chains=4"""
    from lambdahat._output import JOB_COLUMNS, print_objects

    job_config = _config(config, set_)
    with _connect(url, api_key) as cl:
        job = cl.submit(checkpoint_id, dataset, loss=loss, config=job_config, idempotency_key=idempotency_key)
        if wait:
            job = _wait_and_report(cl, job, timeout, 1.0, quiet=output_format is not ListFormat.table)
    print_objects([job], JOB_COLUMNS, output_format.value, title="job")
    if wait:
        raise typer.Exit(_finished_code(job))


@app.command("batch")
@_user_command
def batch(
    dataset: Annotated[str, typer.Option(help="Dataset id.", show_default=False)],
    loss: Annotated[str, typer.Option(help=" | ".join(LOSSES), show_default=False)],
    collection: Annotated[str | None, typer.Option(help="Score every checkpoint of this collection.")] = None,
    checkpoint: Annotated[list[str] | None, typer.Option(help="Score this checkpoint id (repeatable).")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    force: Annotated[bool, typer.Option("--force", help="Re-run work whose result already exists.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for every job and show progress.")] = False,
    timeout: Annotated[float | None, typer.Option(help="With --wait: give up after this many seconds.")] = None,
    output_format: Annotated[OutputFormat, typer.Option("--format", help="Output format.")] = OutputFormat.table,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Score many checkpoints: one job per checkpoint of --collection (or of each --checkpoint)."""
    if (collection is None) == (not checkpoint):
        raise typer.BadParameter("give --collection NAME or one or more --checkpoint ID (not both)")
    job_config = _config(config, set_)
    with _connect(url, api_key) as cl:
        created = cl.submit_batch(
            dataset, loss=loss, config=job_config, collection=collection, checkpoints=checkpoint, force=force
        )
        if wait:
            created = _wait_and_report(cl, created, timeout, 1.0, quiet=output_format is not OutputFormat.table)
    _print_state(created, output_format)
    if wait:
        raise typer.Exit(_finished_code(created))


@app.command("status")
@_user_command
def status(
    ident: Annotated[
        str | None, typer.Argument(metavar="[ID]", help="Job or batch id; omit for the cluster summary.", show_default=False)
    ] = None,
    output_format: Annotated[OutputFormat, typer.Option("--format", help="Output format.")] = OutputFormat.table,
    ping: Annotated[bool, typer.Option("--ping", help="Cluster summary: also ping every Celery worker.")] = False,
    from_database: Annotated[bool, typer.Option(
        "--from-database", help="Cluster summary: read the database of LAMBDAHAT_DATABASE_URL instead of asking the API.",
    )] = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Show a job's (or batch's) state, progress and result; without ID, summarise the cluster (workers
    alive, queue depth, jobs by status, running jobs) as the API reports it. Exit code 0 whatever the
    jobs' states."""
    if ident is None:
        from lambdahat.cluster_status import cluster_status, print_cluster_status

        print_cluster_status(cluster_status(url, api_key, ping=ping, from_database=from_database),
                             output_format.value)
        return
    with _connect(url, api_key) as cl:
        _print_state(cl.get(ident), output_format)


@app.command("wait")
@_user_command
def wait_command(
    ident: Annotated[str, typer.Argument(metavar="ID", help="Job or batch id.", show_default=False)],
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds (exit code 7).")] = None,
    poll: Annotated[float, typer.Option(help="Seconds between polls.")] = 1.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    output_format: Annotated[OutputFormat, typer.Option("--format", help="Output format.")] = OutputFormat.table,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Wait for a job or batch with live progress; exit 0 if it succeeded, 1 if it failed or was cancelled."""
    with _connect(url, api_key) as cl:
        final = _wait_and_report(cl, ident, timeout, poll, quiet=quiet)
    _print_state(final, output_format)
    raise typer.Exit(_finished_code(final))


@app.command("cancel")
@_user_command
def cancel(
    ident: Annotated[str, typer.Argument(metavar="ID", help="Job or batch id.", show_default=False)],
    output_format: Annotated[OutputFormat, typer.Option("--format", help="Output format.")] = OutputFormat.table,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Cancel a job (or every unfinished job of a batch)."""
    with _connect(url, api_key) as cl:
        _print_state(cl.cancel(ident), output_format)


@app.command("results")
@_user_command
def results(
    ident: Annotated[str, typer.Argument(metavar="ID", help="Batch id (or a job id: one row).", show_default=False)],
    output_format: Annotated[OutputFormat, typer.Option("--format", help="Output format.")] = OutputFormat.table,
    plot: Annotated[
        Path | None, typer.Option(help="Also write a PNG: λ̂ over training for a batch, traces for a job.")
    ] = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """λ̂ per checkpoint, ordered by training step."""
    from lambdahat import Batch
    from lambdahat._output import RESULT_COLUMNS, figure_for, print_csv, print_json, print_table, write_png

    with _connect(url, api_key) as cl:
        target = cl.get(ident)
        rows = cl.results(target)
        if plot is not None:  # written before printing, so a closed pipe cannot lose it
            write_png(plot, figure_for(cl, target, rows))
    if output_format is OutputFormat.json:
        print_json(rows)
    elif output_format is OutputFormat.csv:
        print_csv(RESULT_COLUMNS, rows)
    else:
        table_rows = [
            [r.get("step"), r.get("checkpoint_id"), r.get("job_id"), r.get("status"), r.get("llc_mean"),
             r.get("llc_std"), len(r.get("warnings") or [])]
            for r in rows
        ]
        columns = ["step", "checkpoint", "job", "status", "llc mean", "llc std", "warnings"]
        print_table(columns, table_rows, title=f"{'batch' if isinstance(target, Batch) else 'job'} {target.id}")


@app.command("traces")
@_user_command
def traces(
    job_id: Annotated[str, typer.Argument(help="Job id.", show_default=False)],
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="table: per-chain summary; csv: chain,draw,loss,llc rows; json: arrays.")
    ] = OutputFormat.table,
    plot: Annotated[Path | None, typer.Option(help="Also write a PNG of the loss and running λ̂ traces.")] = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """A job's per-chain loss and running λ̂ traces."""
    import numpy as np

    from lambdahat._output import job_figure, print_csv, print_json, print_table, stdout, write_png

    with _connect(url, api_key) as cl:
        job = cl.job(job_id)
        data = cl.traces(job)
        if plot is not None:  # written before printing, so a closed pipe cannot lose it
            write_png(plot, job_figure(cl, job))
    loss, llc = data["loss"], data["llc"]
    if output_format is OutputFormat.json:
        print_json({"init_loss": data["init_loss"], "num_chains": loss.shape[0], "num_draws": loss.shape[1],
                    "loss": loss, "llc": llc})
    elif output_format is OutputFormat.csv:
        print_csv(
            ["chain", "draw", "loss", "llc"],
            (
                {"chain": c, "draw": d, "loss": float(loss[c, d]), "llc": float(llc[c, d]) if d < llc.shape[1] else None}
                for c in range(loss.shape[0])
                for d in range(loss.shape[1])
                if np.isfinite(loss[c, d])
            ),
        )
    else:
        rows = []
        for c in range(loss.shape[0]):
            finite_loss = loss[c][np.isfinite(loss[c])]
            finite_llc = llc[c][np.isfinite(llc[c])] if c < llc.shape[0] else np.array([])
            rows.append([
                c,
                finite_loss.size,
                float(finite_loss.mean()) if finite_loss.size else None,
                float(finite_llc[-1]) if finite_llc.size else None,
            ])
        print_table(["chain", "draws", "mean loss", "final λ̂"], rows, title=f"job {job.id}")
        stdout.print(f"L_n(w*) = {data['init_loss']:.6g}", highlight=False)
