"""The client's operations, each written once as a generator (see ``lambdahat._http``).

Naming: ``op_<method>`` implements the public method ``<method>`` of ``Client`` / ``AsyncClient``.
"""

from __future__ import annotations

import io
import json
import math
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from lambdahat import serialize
from lambdahat._http import Call, Operation, Sleep, json_body
from lambdahat.errors import (
    ConnectionFailed,
    JobFailed,
    NotFound,
    ServerError,
    WaitTimeout,
)
from lambdahat.models import Batch, Checkpoint, Dataset, Job

SAFETENSORS = "application/octet-stream"
TAR = "application/x-tar"
# Polling a long job must survive a server restart or a network blip: this many consecutive
# failed polls (with growing pauses) before wait() gives up.
MAX_POLL_FAILURES = 8


# Server ids are hex strings; anything else (a "/", "..", "?") would change the URL it is put into.
_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def object_id(obj: Any, what: str) -> str:
    """The id of a returned object, a dict with an ``id``, or an id string; safe to put in a URL path."""
    if isinstance(obj, str):
        ident = obj.strip()
    elif isinstance(obj, Mapping) and "id" in obj:
        ident = str(obj["id"])
    elif isinstance(getattr(obj, "id", None), str):
        ident = obj.id
    else:
        raise TypeError(f"expected a {what} id or a {what} object, got {type(obj).__name__}")
    if not _ID_PATTERN.match(ident):
        raise ValueError(f"{ident!r} is not a valid {what} id (ids are letters, digits, '-' and '_')")
    return ident


# ---------------------------------------------------------------------------------------------
# Listing with cursors


def _page_items(body: Any, plural: str) -> tuple[list[Any], str | None]:
    """Items and next cursor of one page: ``{"items": [...], "next_cursor": ...}`` (or a bare list)."""
    if isinstance(body, list):
        return body, None
    if not isinstance(body, dict):
        raise ServerError(f"unexpected listing response: {type(body).__name__}")
    for key in ("items", plural, "data", "results"):
        if isinstance(body.get(key), list):
            items = body[key]
            break
    else:
        raise ServerError(f"listing response has no item list (keys: {sorted(body)})")
    cursor = body.get("next_cursor", body.get("cursor", body.get("next")))
    return items, (str(cursor) if cursor else None)


def op_list(path: str, plural: str, model: type, params: dict[str, Any], limit: int | None) -> Operation[list]:
    items: list[Any] = []
    cursor: str | None = None
    seen_cursors: set[str] = set()
    while True:
        response = yield Call("GET", path, params={**params, "cursor": cursor})
        page, cursor = _page_items(json_body(response), plural)
        items.extend(model.model_validate(item) for item in page)
        if limit is not None and len(items) >= limit:
            return items[:limit]
        if not cursor or not page:
            return items
        if cursor in seen_cursors:  # a server bug must not become an endless loop
            raise ServerError(f"listing {path} returned the same cursor twice ({cursor!r})")
        seen_cursors.add(cursor)


# ---------------------------------------------------------------------------------------------
# Datasets and checkpoints


def _file_part(source: Any, default_name: str, to_bytes: Callable[[Any], bytes]) -> tuple[str, bytes | None, Path | None]:
    """(filename, in-memory bytes or None, path or None) for an upload source: a path, bytes, or objects."""
    if isinstance(source, bytes):
        return default_name, source, None
    if isinstance(source, str | Path):
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        return path.name, None, path
    return default_name, to_bytes(source), None


def op_upload_dataset(source: Any, name: str | None) -> Operation[Dataset]:
    if isinstance(source, tuple) and len(source) == 2:
        source = {"x": source[0], "y": source[1]}
    if serialize.is_token_dataset(source):
        filename, payload, path = "tokens.npz", serialize.tokens_to_npz(source), None
    else:
        filename, payload, path = _file_part(source, "dataset.safetensors", serialize.dataset_to_safetensors)
    data = {"name": name} if name else None
    if path is None:
        response = yield Call("POST", "/v1/datasets", data=data, files={"file": (filename, payload, SAFETENSORS)})
    else:
        with path.open("rb") as handle:
            response = yield Call("POST", "/v1/datasets", data=data, files={"file": (filename, handle, SAFETENSORS)})
    return Dataset.model_validate(json_body(response))


def _checkpoint_source(source: Any, architecture: dict[str, Any] | None) -> tuple[Any, dict[str, Any] | None]:
    """An nn.Module becomes its state_dict, with its architecture inferred when not given."""
    if serialize.is_torch_module(source):
        if architecture is None:
            try:
                architecture = serialize.infer_architecture(source)
            except ValueError as exc:
                if not serialize.is_torchvision_model(source):
                    raise
                raise ValueError(
                    f"{exc}; for a torchvision model pass e.g. "
                    'architecture={"kind": "torchvision", "name": "resnet18", "num_classes": 10}'
                ) from None
        source = source.state_dict()
    return source, architecture


def _checkpoint_form(collection: str | None, step: int | None, name: str | None, task: str | None) -> dict[str, str]:
    form: dict[str, str] = {}
    if collection is not None:
        form["collection"] = collection
    if step is not None:
        form["step"] = str(int(step))
    if name is not None:
        form["name"] = name
    if task is not None:
        form["task"] = task
    return form


def _upload_folder(folder: Path, archive_name: str, form: dict[str, str]) -> Operation[Checkpoint]:
    """A save_pretrained folder's needed files as one uncompressed tar, spooled to disk (weights can
    be gigabytes) and streamed to the server."""
    with tempfile.TemporaryFile(prefix="lambdahat-checkpoint-", suffix=".tar") as archive:
        serialize.write_pretrained_tar(folder, archive)
        archive.seek(0)
        files = {"file": (archive_name, archive, TAR)}
        response = yield Call("POST", "/v1/checkpoints", data=form or None, files=files)
    return Checkpoint.model_validate(json_body(response))


def _no_architecture_for(what: str, architecture: dict[str, Any] | None) -> None:
    if architecture is not None:
        raise ValueError(f"{what} carries its own architecture; leave out architecture=")


def op_upload_checkpoint(
    source: Any,
    architecture: dict[str, Any] | None,
    collection: str | None,
    step: int | None,
    name: str | None,
    task: str | None = None,
) -> Operation[Checkpoint]:
    form = _checkpoint_form(collection, step, name, task)
    # The server names a checkpoint after its file by default; the archive's name is the client's
    # doing, so folders and models are named after themselves (the folder, the model class).
    if serialize.is_pretrained_model(source):
        _no_architecture_for("a Hugging Face model (its config.json)", architecture)
        form.setdefault("name", type(source).__name__)
        with tempfile.TemporaryDirectory(prefix="lambdahat-pretrained-") as scratch:
            folder = Path(scratch) / "model"
            source.save_pretrained(folder)  # safetensors: the default of every transformers that has it
            return (yield from _upload_folder(folder, f"{type(source).__name__}.tar", form))
    if isinstance(source, str | Path) and Path(source).expanduser().is_dir():
        _no_architecture_for("a save_pretrained folder (its config.json)", architecture)
        folder = Path(source).expanduser()
        form.setdefault("name", folder.resolve().name)
        return (yield from _upload_folder(folder, f"{folder.resolve().name}.tar", form))
    if serialize.is_exported_program(source):
        # Sent as the .pt2 file torch.export.save writes: the server loads it as any .pt2 upload
        # (an API key with the run-code scope; the server's 403 says so otherwise).
        _no_architecture_for("a torch.export program (its graph)", architecture)
        filename, payload, path = "program.pt2", serialize.exported_program_to_pt2(source), None
    else:
        source, architecture = _checkpoint_source(source, architecture)
        filename, payload, path = _file_part(source, "checkpoint.safetensors", serialize.state_dict_to_safetensors)
        if path is None and architecture is None:
            raise ValueError("a state_dict needs architecture={...} (the built-in architecture JSON it was built from)")
    if architecture is not None:
        form["architecture"] = json.dumps(architecture)
    if path is None:
        files = {"file": (filename, payload, SAFETENSORS)}
        response = yield Call("POST", "/v1/checkpoints", data=form or None, files=files)
    else:
        with path.open("rb") as handle:
            files = {"file": (filename, handle, SAFETENSORS)}
            response = yield Call("POST", "/v1/checkpoints", data=form or None, files=files)
    return Checkpoint.model_validate(json_body(response))


def op_get(path: str, model: type) -> Operation[Any]:
    response = yield Call("GET", path)
    return model.model_validate(json_body(response))


def op_delete(path: str) -> Operation[None]:
    yield Call("DELETE", path)
    return None


# ---------------------------------------------------------------------------------------------
# Jobs


def op_submit(
    checkpoint: Any, dataset: Any, loss: str, config: dict[str, Any] | None, idempotency_key: str | None
) -> Operation[Job]:
    body = {
        "checkpoint_id": object_id(checkpoint, "checkpoint"),
        "dataset_id": object_id(dataset, "dataset"),
        "loss": loss,
        "config": dict(config or {}),
    }
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    response = yield Call("POST", "/v1/jobs", json=body, headers=headers)
    return Job.model_validate(json_body(response))


def op_resolve(target: Any) -> Operation[Job | Batch]:
    """A Job or Batch, fetched fresh. A bare id is looked up as a job first, then as a batch."""
    if isinstance(target, Batch):
        return (yield from op_get(f"/v1/batches/{object_id(target, 'batch')}", Batch))
    if isinstance(target, Job):
        return (yield from op_get(f"/v1/jobs/{object_id(target, 'job')}", Job))
    ident = object_id(target, "job or batch")
    try:
        return (yield from op_get(f"/v1/jobs/{ident}", Job))
    except NotFound:
        pass
    try:
        return (yield from op_get(f"/v1/batches/{ident}", Batch))
    except NotFound:
        raise NotFound(f"no job or batch with id {ident!r}", status_code=404) from None


def op_cancel(target: Any) -> Operation[Job | Batch]:
    if not isinstance(target, Job | Batch):
        target = yield from op_resolve(target)
    kind, model = ("batches", Batch) if isinstance(target, Batch) else ("jobs", Job)
    response = yield Call("POST", f"/v1/{kind}/{object_id(target, kind)}/cancel")
    body = json_body(response)
    if isinstance(body, dict) and "id" in body:
        return model.model_validate(body)
    return (yield from op_get(f"/v1/{kind}/{object_id(target, kind)}", model))


class _ProgressBar:
    """A tqdm.auto bar (a widget in notebooks, text in terminals) fed with Job/Batch snapshots."""

    def __init__(self) -> None:
        self.bar: Any = None

    def update(self, obj: Job | Batch) -> None:
        from tqdm.auto import tqdm

        if isinstance(obj, Batch):
            total, done, unit = obj.num_jobs or 1, obj.num_finished, "job"
            status = ", ".join(f"{k} {v}" for k, v in sorted(obj.counts.items()) if v)
        else:
            total, done, unit = 1000, round(1000 * min(max(obj.progress or 0.0, 0.0), 1.0)), "‰"
            if obj.finished:
                done = total if obj.succeeded else done
            status = obj.status
        if self.bar is None:
            kind = "batch" if isinstance(obj, Batch) else "job"
            self.bar = tqdm(
                total=total,
                desc=f"{kind} {obj.id[:8]}",
                unit=unit,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}] {postfix}",
                dynamic_ncols=True,
            )
        self.bar.total = total
        self.bar.n = done
        self.bar.set_postfix_str(status, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def op_wait(
    target: Any,
    progress: bool | Callable[[Job | Batch], None],
    timeout: float | None,
    poll: float,
) -> Operation[Job | Batch]:
    """Poll until the job or batch is finished; report each snapshot; raise WaitTimeout when out of time."""
    if poll <= 0:
        raise ValueError("poll must be a positive number of seconds")
    deadline = None if timeout is None else time.monotonic() + timeout
    bar = _ProgressBar() if progress is True else None
    report = bar.update if bar is not None else (progress if callable(progress) else None)
    failures = 0
    current: Job | Batch | None = None
    try:
        while True:
            try:
                current = yield from op_resolve(target if current is None else current)
                failures = 0
            except (ConnectionFailed, ServerError) as exc:
                failures += 1
                if failures >= MAX_POLL_FAILURES:
                    raise
                yield Sleep(min(poll * 2**failures, 30.0))
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout(f"timed out after {timeout} s (last poll failed: {exc})", last=current) from exc
                continue
            if report is not None:
                report(current)
            if current.finished:
                return current
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(
                        f"{'batch' if isinstance(current, Batch) else 'job'} {current.id} still {current.status} "
                        f"after {timeout} s",
                        last=current,
                    )
                yield Sleep(min(poll, left))
            else:
                yield Sleep(poll)
    finally:
        if bar is not None:
            bar.close()


# ---------------------------------------------------------------------------------------------
# Results and traces


def job_row(job: Job, checkpoint: Checkpoint | None) -> dict[str, Any]:
    """A job as one results row, in the shape of a batch's results rows."""
    result = job.result
    return {
        "step": checkpoint.step if checkpoint else None,
        "checkpoint_id": job.checkpoint_id,
        "job_id": job.id,
        "status": job.status,
        "llc_mean": result.llc_mean if result else None,
        "llc_std": result.llc_std if result else None,
        "warnings": list(result.warnings) if result else [],
    }


def op_results(target: Any) -> Operation[list[dict[str, Any]]]:
    """Rows ordered by step: a batch's results, or a job's single row."""
    if not isinstance(target, Job | Batch):
        target = yield from op_resolve(target)
    if isinstance(target, Batch):
        response = yield Call("GET", f"/v1/batches/{object_id(target, 'batch')}/results", params={"format": "json"})
        body = json_body(response)
        rows = body if isinstance(body, list) else _page_items(body, "rows")[0]
        return [dict(row) for row in rows]
    checkpoint = None
    if target.checkpoint_id:
        try:
            checkpoint = yield from op_get(f"/v1/checkpoints/{object_id(target.checkpoint_id, 'checkpoint')}", Checkpoint)
        except NotFound:  # deleted since; the row still stands without its step
            checkpoint = None
    return [job_row(target, checkpoint)]


def _ragged_to_array(series: list[list[float | None]]) -> np.ndarray:
    """Chains of unequal length (a diverged chain stops early) padded with NaN into (chains, draws)."""
    width = max((len(chain) for chain in series), default=0)
    out = np.full((len(series), width), np.nan, dtype=np.float64)
    for i, chain in enumerate(series):
        values = [math.nan if v is None else float(v) for v in chain]
        out[i, : len(values)] = values
    return out


def parse_traces(response: httpx.Response) -> dict[str, Any]:
    """``{"loss": (chains, draws), "llc": (chains, draws), "init_loss": float}`` from npz (or JSON) bytes."""
    content_type = response.headers.get("content-type", "")
    if "json" in content_type:
        body = json_body(response)
        return {
            "loss": _ragged_to_array(body.get("loss", [])),
            "llc": _ragged_to_array(body.get("llc", [])),
            "init_loss": float(body["init_loss"]) if body.get("init_loss") is not None else math.nan,
        }
    try:
        loaded = np.load(io.BytesIO(response.content), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ServerError(f"the traces are not a readable npz archive ({exc})") from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ServerError("the traces are not a readable npz archive (got a single array)")
    with loaded as archive:
        arrays = {name: archive[name] for name in archive.files}
    for required in ("loss", "llc"):
        if required not in arrays:
            raise ServerError(f"the traces archive has no {required!r} array (arrays: {sorted(arrays)})")
    traces: dict[str, Any] = {
        "loss": np.atleast_2d(arrays["loss"]).astype(np.float64, copy=False),
        "llc": np.atleast_2d(arrays["llc"]).astype(np.float64, copy=False),
        "init_loss": float(arrays["init_loss"]) if "init_loss" in arrays else math.nan,
    }
    for name, array in arrays.items():  # anything else the server adds (e.g. num_draws per chain)
        traces.setdefault(name, array)
    return traces


def op_traces(job: Any) -> Operation[dict[str, Any]]:
    ident = object_id(job, "job")
    response = yield Call("GET", f"/v1/jobs/{ident}/traces", params={"format": "npz"})
    return parse_traces(response)


# ---------------------------------------------------------------------------------------------
# Batches and server-side plots


def op_submit_batch(
    dataset: Any,
    loss: str,
    config: dict[str, Any] | None,
    collection: str | None,
    checkpoints: list[Any] | None,
    force: bool,
) -> Operation[Batch]:
    if (collection is None) == (checkpoints is None):
        raise ValueError("submit_batch needs exactly one of collection= or checkpoints=")
    body: dict[str, Any] = {"dataset_id": object_id(dataset, "dataset"), "loss": loss, "config": dict(config or {})}
    if collection is not None:
        body["collection"] = collection
    else:
        body["checkpoint_ids"] = [object_id(c, "checkpoint") for c in checkpoints or []]
    if force:
        body["force"] = True
    response = yield Call("POST", "/v1/batches", json=body)
    return Batch.model_validate(json_body(response))


def op_plot(target: Any) -> Operation[bytes]:
    """The server's PNG of a job (traces) or a batch (λ̂ over training)."""
    if not isinstance(target, Job | Batch):
        target = yield from op_resolve(target)
    kind = "batches" if isinstance(target, Batch) else "jobs"
    response = yield Call("GET", f"/v1/{kind}/{object_id(target, kind)}/plot.png")
    return _png_body(response)


def op_plot_llc(batches: list[Any], collections: list[str]) -> Operation[bytes]:
    """Several batches (or collections: each one's newest batch) on one λ̂-over-training axis."""
    params = {"batch_id": [object_id(b, "batch") for b in batches], "collection": list(collections)}
    response = yield Call("GET", "/v1/plots/llc.png", params={k: v for k, v in params.items() if v})
    return _png_body(response)


def _png_body(response: httpx.Response) -> bytes:
    if not response.content.startswith(b"\x89PNG"):
        raise ServerError(f"expected a PNG image, got {response.headers.get('content-type', 'no content type')}")
    return response.content


# ---------------------------------------------------------------------------------------------
# One-call estimation


def op_estimate(
    model: Any,
    data: Any,
    loss: str,
    config: dict[str, Any] | None,
    architecture: dict[str, Any] | None,
    collection: str | None,
    progress: bool | Callable[[Job | Batch], None],
    timeout: float | None,
    poll: float,
) -> Operation[Job]:
    if not serialize.is_torch_module(model):
        raise TypeError(f"estimate() needs a torch.nn.Module, got {type(model).__name__}")
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise TypeError("estimate() needs data as an (inputs, targets) pair")
    if architecture is None:
        architecture = serialize.infer_architecture(model)
    # Serialise both before uploading anything, so a bad model leaves nothing behind on the server.
    dataset_bytes = serialize.dataset_to_safetensors({"x": data[0], "y": data[1]})
    checkpoint_bytes = serialize.state_dict_to_safetensors(model.state_dict())
    dataset = yield from op_upload_dataset(dataset_bytes, None)
    checkpoint = yield from op_upload_checkpoint(checkpoint_bytes, architecture, collection, None, None)
    job = yield from op_submit(checkpoint, dataset, loss, config, None)
    job = yield from op_wait(job, progress, timeout, poll)
    if not job.succeeded:
        reason = job.error or "no reason given"
        raise JobFailed(f"job {job.id} {job.status}: {reason}", job=job)
    return job
