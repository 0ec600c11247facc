"""``Client`` and ``AsyncClient``: the Python interface to a lambdahat server.

Both share every method below (``_ClientBase``). Each method builds an operation (``lambdahat._ops``)
and hands it to ``_drive``: ``Client._drive`` runs it to completion with blocking I/O and returns
the result; ``AsyncClient._drive`` returns a coroutine, so every ``AsyncClient`` method is awaited::

    with Client() as cl:                      job = cl.wait(cl.submit(ck, ds, loss="mse"))
    async with AsyncClient() as cl:           job = await cl.wait(await cl.submit(ck, ds, loss="mse"))
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx

from lambdahat import _ops
from lambdahat._http import (
    Call,
    Operation,
    Sleep,
    build_request,
    check_response,
    resolve_api_key,
    resolve_url,
)
from lambdahat._http import transport_error as _transport_error
from lambdahat.errors import LambdahatError
from lambdahat.models import Batch, Checkpoint, Dataset, Job

ProgressArg = bool | Callable[[Job | Batch], None]


class _ClientBase:
    """Connection settings and every public method; subclasses supply ``_drive``."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *, timeout: float = 120.0) -> None:
        """``url`` defaults to env LAMBDAHAT_URL, then http://127.0.0.1:8000. ``api_key`` defaults to env
        LAMBDAHAT_API_KEY, then the key file the local server writes (``<data dir>/api_key``).
        ``timeout`` bounds each HTTP request (uploads included), in seconds."""
        self.url = resolve_url(url)
        self.api_key, self.api_key_source = resolve_api_key(api_key)
        headers = {"User-Agent": "lambdahat-client/0.1", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        self._http_options: dict[str, Any] = {
            "base_url": self.url,
            "headers": headers,
            "timeout": httpx.Timeout(timeout, connect=min(10.0, timeout)),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r}, api_key from {self.api_key_source})"

    def _drive(self, operation: Operation[Any]) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- datasets --------------------------------------------------------------------------

    def upload_dataset(self, source: Any, name: str | None = None) -> Dataset:
        """Upload a dataset: a ``.safetensors`` / ``.npz`` file, a dict ``{"x": ..., "y": ...}`` (or an
        ``(x, y)`` pair) of numpy arrays or torch tensors (sent as safetensors), or a token dataset: a
        dict ``{"input_ids": [N, T], "attention_mask"?: [N, T], "labels"?: [N, T] or [N]}`` or a Hugging
        Face ``datasets.Dataset`` with an ``input_ids`` column (sent as npz; other columns stay behind)."""
        return self._drive(_ops.op_upload_dataset(source, name))

    def dataset(self, dataset: Any) -> Dataset:
        return self._drive(_ops.op_get(f"/v1/datasets/{_ops.object_id(dataset, 'dataset')}", Dataset))

    def datasets(self, *, limit: int | None = None) -> list[Dataset]:
        """All your datasets (following cursors; at most ``limit``)."""
        return self._drive(_ops.op_list("/v1/datasets", "datasets", Dataset, {}, limit))

    def delete_dataset(self, dataset: Any) -> None:
        return self._drive(_ops.op_delete(f"/v1/datasets/{_ops.object_id(dataset, 'dataset')}"))

    # -- checkpoints -----------------------------------------------------------------------

    def upload_checkpoint(
        self,
        source: Any,
        architecture: dict[str, Any] | None = None,
        collection: str | None = None,
        step: int | None = None,
        name: str | None = None,
        task: str | None = None,
    ) -> Checkpoint:
        """Upload a checkpoint. ``source`` is one of:

        - a transformers ``PreTrainedModel``, or a folder ``save_pretrained`` wrote (``config.json`` and
          safetensors weights, sharded or not): sent as one tar archive; the architecture comes from
          config.json, ``task`` (``causal_lm``, ``sequence_classification``, ``masked_lm``) overrides
          the one read from its ``architectures`` entry;
        - a file: ``.safetensors`` / ``.pt`` state_dict with ``architecture``, a ``.pt2`` export, or a
          ``.zip`` / ``.tar`` / ``.tar.gz`` archive of a save_pretrained folder;
        - a state_dict (sent as safetensors; needs ``architecture``);
        - an ``nn.Module``: its state_dict, with the architecture inferred (mlp/dln Sequentials and
          torchvision classifiers) when not given;
        - a ``torch.export.ExportedProgram``: sent as the ``.pt2`` file ``torch.export.save`` writes
          (the server runs .pt2 programs only for keys with the run-code scope)."""
        return self._drive(_ops.op_upload_checkpoint(source, architecture, collection, step, name, task))

    def checkpoint(self, checkpoint: Any) -> Checkpoint:
        return self._drive(_ops.op_get(f"/v1/checkpoints/{_ops.object_id(checkpoint, 'checkpoint')}", Checkpoint))

    def checkpoints(self, collection: str | None = None, *, limit: int | None = None) -> list[Checkpoint]:
        """Your checkpoints, optionally only one collection's."""
        params = {"collection": collection}
        return self._drive(_ops.op_list("/v1/checkpoints", "checkpoints", Checkpoint, params, limit))

    def delete_checkpoint(self, checkpoint: Any) -> None:
        return self._drive(_ops.op_delete(f"/v1/checkpoints/{_ops.object_id(checkpoint, 'checkpoint')}"))

    # -- jobs ------------------------------------------------------------------------------

    def submit(
        self,
        checkpoint: Any,
        dataset: Any,
        loss: str = "cross_entropy",
        config: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Queue an LLC job. ``checkpoint``/``dataset`` are ids or the objects uploads returned;
        ``config`` holds LLCConfig fields. The same ``idempotency_key`` never queues a second job."""
        return self._drive(_ops.op_submit(checkpoint, dataset, loss, config, idempotency_key))

    def job(self, job: Any) -> Job:
        return self._drive(_ops.op_get(f"/v1/jobs/{_ops.object_id(job, 'job')}", Job))

    def jobs(
        self, status: str | None = None, checkpoint: Any = None, *, limit: int | None = None
    ) -> list[Job]:
        """Your jobs, newest first, optionally filtered by status and checkpoint."""
        params = {"status": status, "checkpoint_id": _ops.object_id(checkpoint, "checkpoint") if checkpoint else None}
        return self._drive(_ops.op_list("/v1/jobs", "jobs", Job, params, limit))

    def get(self, job_or_batch: Any) -> Job | Batch:
        """A job or a batch by id (a job is tried first)."""
        return self._drive(_ops.op_resolve(job_or_batch))

    def cancel(self, job_or_batch: Any) -> Job | Batch:
        """Ask the server to cancel a job or every unfinished job of a batch; returns the new state."""
        return self._drive(_ops.op_cancel(job_or_batch))

    def wait(
        self, job_or_batch: Any, progress: ProgressArg = True, timeout: float | None = None, poll: float = 1.0
    ) -> Job | Batch:
        """Block until the job or batch has finished and return its final state (check ``.status``).

        ``progress``: True shows a tqdm bar (a widget in notebooks), False nothing, or a callable
        receiving every snapshot. Raises ``WaitTimeout`` (with ``.last``) after ``timeout`` seconds.
        """
        return self._drive(_ops.op_wait(job_or_batch, progress, timeout, poll))

    def results(self, job_or_batch: Any) -> list[dict[str, Any]]:
        """Rows ordered by step (``step, checkpoint_id, status, llc_mean, llc_std, warnings``): one per
        checkpoint of a batch, or the single row of a job."""
        return self._drive(_ops.op_results(job_or_batch))

    def traces(self, job: Any) -> dict[str, Any]:
        """A job's traces: ``{"loss": ndarray (chains, draws), "llc": ndarray, "init_loss": float}``.
        Chains that stopped early are padded with NaN."""
        return self._drive(_ops.op_traces(job))

    def estimate(
        self,
        model: Any,
        data: tuple[Any, Any],
        loss: str = "mse",
        config: dict[str, Any] | None = None,
        architecture: dict[str, Any] | None = None,
        *,
        collection: str | None = None,
        progress: ProgressArg = True,
        timeout: float | None = None,
        poll: float = 1.0,
    ) -> Job:
        """Upload ``model`` (an ``nn.Module``) and ``data`` = (inputs, targets), run one job, wait for it.

        Returns the succeeded job (``job.result.llc_mean`` ...); raises ``JobFailed`` otherwise.
        ``architecture`` is inferred for ``nn.Sequential`` MLPs and bias-free linear stacks."""
        return self._drive(
            _ops.op_estimate(model, data, loss, config, architecture, collection, progress, timeout, poll)
        )

    # -- batches and server-side plots ----------------------------------------------------------

    def submit_batch(
        self,
        dataset: Any,
        loss: str = "cross_entropy",
        config: dict[str, Any] | None = None,
        *,
        collection: str | None = None,
        checkpoints: list[Any] | None = None,
        force: bool = False,
    ) -> Batch:
        """One job per checkpoint of ``collection`` (or of ``checkpoints``). ``force`` re-runs work the
        server would otherwise reuse."""
        return self._drive(_ops.op_submit_batch(dataset, loss, config, collection, checkpoints, force))

    def batch(self, batch: Any) -> Batch:
        return self._drive(_ops.op_get(f"/v1/batches/{_ops.object_id(batch, 'batch')}", Batch))

    def batches(self, collection: str | None = None, *, limit: int | None = None) -> list[Batch]:
        return self._drive(_ops.op_list("/v1/batches", "batches", Batch, {"collection": collection}, limit))

    def plot(self, job_or_batch: Any) -> bytes:
        """PNG bytes drawn by the server: a job's traces, or a batch's λ̂ over training."""
        return self._drive(_ops.op_plot(job_or_batch))

    def plot_llc(self, batches: list[Any] = (), collections: list[str] = ()) -> bytes:  # type: ignore[assignment]
        """PNG bytes: several batches (or each collection's newest batch) as λ̂-over-training lines on one axis."""
        return self._drive(_ops.op_plot_llc(list(batches), list(collections)))


class Client(_ClientBase):
    """Blocking client. Use as a context manager, or call ``close()``."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *, timeout: float = 120.0) -> None:
        super().__init__(url, api_key, timeout=timeout)
        self._http = httpx.Client(**self._http_options)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send(self, call: Call) -> httpx.Response:
        try:
            response = self._http.send(build_request(self._http, call))
        except httpx.HTTPError as exc:
            raise _transport_error(exc, self.url) from exc
        return check_response(response, key_source=self.api_key_source)

    def _drive(self, operation: Operation[Any]) -> Any:
        try:
            step = next(operation)
            while True:
                if isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    step = operation.send(None)
                    continue
                try:
                    response = self._send(step)
                except LambdahatError as exc:
                    step = operation.throw(exc)
                else:
                    step = operation.send(response)
        except StopIteration as done:
            return done.value
        finally:
            operation.close()


class AsyncClient(_ClientBase):
    """Asynchronous client: the same methods as ``Client``, each returning an awaitable."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *, timeout: float = 120.0) -> None:
        super().__init__(url, api_key, timeout=timeout)
        self._http = httpx.AsyncClient(**self._http_options)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _send(self, call: Call) -> httpx.Response:
        try:
            response = await self._http.send(build_request(self._http, call))
        except httpx.HTTPError as exc:
            raise _transport_error(exc, self.url) from exc
        return check_response(response, key_source=self.api_key_source)

    async def _drive(self, operation: Operation[Any]) -> Any:  # type: ignore[override]
        try:
            step = next(operation)
            while True:
                if isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                    step = operation.send(None)
                    continue
                try:
                    response = await self._send(step)
                except LambdahatError as exc:
                    step = operation.throw(exc)
                else:
                    step = operation.send(response)
        except StopIteration as done:
            return done.value
        finally:
            operation.close()
