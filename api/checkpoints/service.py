"""Checkpoint logic: validate an upload against its architecture, store it, list, delete.

- safetensors: the header is read in pure Python; weights are checked against the architecture's
  expected state_dict and for NaN/inf (read in bounded chunks).
- ``.pt``: inspected by ``python -m worker.inspect_checkpoint`` in a short-lived subprocess (``torch.load`` with
  ``weights_only=True``), so this process never imports torch or runs an unpickler.
- ``.pt2``: code. Only keys with the ``run-code`` scope may upload one; only its JSON weight config is
  read here (for the parameter count); it is loaded only inside a job process.
- an archive (zip, tar, tar.gz) of a ``save_pretrained`` directory: read by ``backend.archives``
  (hostile members refused before any data is read), its weights stored as ONE safetensors file (shards
  merged) with the architecture ``{"kind": "hf", "task": ..., "config": <config.json>}``.

Kinds whose state_dict only torch can describe (``hf``, ``torchvision``: ``architectures.spec_needs_torch``)
get their expected spec and parameter count from ``python -m worker.inspect_architecture`` in a
subprocess, cached per normalized config, so this process never imports torch or transformers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from api.checkpoints.repository import CheckpointRepository
from api.deps import Principal
from api.errors import Forbidden, NotFound, Unprocessable
from api.pagination import page
from api.types import is_valid_id
from api.uploads import UploadForm, delete_upload, store_upload
from backend.archives import ArchiveLimits, read_pretrained
from backend.formats import FormatError, count_non_finite, detect_format, read_pt2, read_safetensors
from backend.models import Checkpoint
from backend.settings import Settings
from backend.storage import ArtifactStore, UploadTooLarge
from estimator import architectures

TEXT_FIELDS = {"architecture", "collection", "step", "name", "task"}
INSPECT_TIMEOUT_S = 300.0
SPEC_CACHE_SIZE = 64
PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent


def create_checkpoint(session_factory: sessionmaker[Session], principal: Principal, store: ArtifactStore,
                      form: UploadForm, settings: Settings) -> Checkpoint:
    """Validate an uploaded checkpoint, store its file under its sha256 and insert its row."""
    assert form.file is not None and form.file.sha256 is not None
    fields = _metadata_fields(form)
    path = form.file.path
    try:
        fmt = detect_format(path)
    except FormatError as exc:
        raise Unprocessable(f"invalid checkpoint: {exc}") from None
    raw_architecture = form.fields.get("architecture")
    if fmt == "archive":
        return _create_from_archive(session_factory, principal, store, form, fields, settings)
    if form.fields.get("task"):
        raise Unprocessable("'task' applies to save_pretrained archives; for a single safetensors file put it in "
                            'the architecture: {"kind": "hf", "task": ..., "config": {...}}')
    if fmt == "npz":
        raise Unprocessable("invalid checkpoint: npz is a dataset format; upload a checkpoint as safetensors, .pt or .pt2")
    if fmt == "pt2":
        if not principal.can("run-code"):
            raise Forbidden("torch.export (.pt2) archives contain code and need an API key with the 'run-code' scope "
                "(lambdahat keys create --scope run-code); or upload a safetensors state_dict with an architecture",
            )
        if raw_architecture:
            raise Unprocessable("'architecture' does not apply to .pt2 archives (they carry their own graph); omit it")
        try:
            num_params = read_pt2(path).num_params
        except FormatError as exc:
            raise Unprocessable(f"invalid checkpoint: {exc}") from None
        architecture = None
    else:
        architecture = _parse_architecture(raw_architecture, fmt)
        num_params = _check_weights(path, fmt, architecture)
    row = Checkpoint(
        owner=principal.owner,
        sha256=form.file.sha256,
        size_bytes=form.file.size,
        format=fmt,
        architecture=architecture,
        num_params=num_params,
        **fields,
    )
    return store_upload(store, session_factory, form.file, "checkpoints", row)


def _create_from_archive(session_factory: sessionmaker[Session], principal: Principal, store: ArtifactStore,
                         form: UploadForm, fields: dict[str, Any], settings: Settings) -> Checkpoint:
    """A save_pretrained archive: its weights become one staged safetensors file, stored like an upload."""
    assert form.file is not None
    if form.fields.get("architecture"):
        raise Unprocessable("'architecture' does not apply to a save_pretrained archive: it is read from its "
                            "config.json (send 'task' to choose causal_lm, sequence_classification or masked_lm)")
    limits = ArchiveLimits(settings.archive_max_unpacked_bytes, settings.archive_max_members)
    weights = store.stage(settings.archive_max_unpacked_bytes)
    try:
        try:
            pretrained = read_pretrained(form.file.path, weights.write, store.staging_dir, limits)
        except FormatError as exc:
            raise Unprocessable(f"invalid checkpoint archive: {exc}") from None
        except UploadTooLarge:
            raise Unprocessable(f"invalid checkpoint archive: its weights are larger than the "
                                f"{settings.archive_max_unpacked_bytes} bytes accepted") from None
        weights.finish()
        architecture = _hf_architecture(pretrained.config, form.fields.get("task"))
        num_params = _check_weights(weights.path, "safetensors", architecture)
        row = Checkpoint(owner=principal.owner, sha256=weights.sha256, size_bytes=weights.size, format="safetensors",
                         architecture=architecture, num_params=num_params, **fields)
        return store_upload(store, session_factory, weights, "checkpoints", row)
    finally:
        weights.discard()


def _hf_architecture(config: dict[str, Any], task: str | None) -> dict[str, Any]:
    raw: dict[str, Any] = {"kind": "hf", "config": config}
    if task:
        raw["task"] = task.strip()
    try:
        return architectures.normalize(raw)
    except architectures.ArchitectureError as exc:
        raise Unprocessable(f"invalid architecture (from config.json): {exc}") from None


def _metadata_fields(form: UploadForm) -> dict[str, Any]:
    name = form.fields.get("name")
    collection = form.fields.get("collection") or None
    for label, value in (("name", name), ("collection", collection)):
        if value is not None and len(value) > 300:
            raise Unprocessable(f"'{label}' must be at most 300 characters")
    name = name or (form.filename[:300] if form.filename else None)
    step: int | None = None
    raw_step = form.fields.get("step")
    if raw_step not in (None, ""):
        try:
            step = int(raw_step.strip())
        except ValueError:
            raise Unprocessable(f"'step' must be a non-negative integer, got {raw_step!r}") from None
        if not 0 <= step < 2**31:
            raise Unprocessable(f"'step' must be between 0 and {2**31 - 1}, got {step}")
    return {"name": name, "collection": collection, "step": step}


def _parse_architecture(raw: str | None, fmt: str) -> dict[str, Any]:
    example = '{"kind": "mlp", "in_features": 16, "hidden": [32], "out_features": 3}'
    if not raw:
        raise Unprocessable(
            f"form field 'architecture' is required for {fmt} checkpoints: a JSON object such as {example} "
            "(kinds: " + ", ".join(architectures.KINDS) + "; see docs/api.md)"
        )
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise Unprocessable(f"'architecture' is not valid JSON ({exc}); expected an object such as {example}") from None
    try:
        return architectures.normalize(config)
    except architectures.ArchitectureError as exc:
        raise Unprocessable(f"invalid architecture: {exc}") from None


def _check_weights(path: Path, fmt: str, architecture: dict[str, Any]) -> int:
    """Check the file's tensors against the architecture; returns its number of parameters."""
    if fmt == "safetensors":
        try:
            infos = read_safetensors(path)
        except FormatError as exc:
            raise Unprocessable(f"invalid checkpoint: {exc}") from None
        tensors = {k: (t.shape, t.dtype) for k, t in infos.items()}
    else:
        inspected = inspect_torch_file(path)
        tensors = {k: (tuple(v["shape"]), v["dtype"]) for k, v in inspected.items()}
    if architectures.spec_needs_torch(architecture):
        spec, num_params = expected_spec(architecture)
        problems = architectures.check_weights(architecture, tensors, spec)
    else:
        problems = architectures.check_weights(architecture, tensors)
        num_params = architectures.num_params(architecture)
    if problems:
        raise Unprocessable(f"the weights do not match the {architecture['kind']} architecture: " + "; ".join(problems))
    if fmt == "safetensors":
        non_finite = {k: count_non_finite(path, t) for k, t in infos.items()}
    else:
        non_finite = {k: int(v["non_finite"]) for k, v in inspected.items()}
    bad = {k: n for k, n in non_finite.items() if n}
    if bad:
        listing = ", ".join(f"{k} ({n})" for k, n in list(bad.items())[:20])
        raise Unprocessable(f"the weights contain non-finite values (NaN or inf): {listing}")
    return num_params


class _SpecCache:
    """Normalized config (as canonical JSON) -> (spec, num_params), the most recently used kept."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, tuple[dict[str, architectures.TensorSpec], int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[dict[str, architectures.TensorSpec], int] | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            return None

    def put(self, key: str, value: tuple[dict[str, architectures.TensorSpec], int]) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


_spec_cache = _SpecCache(SPEC_CACHE_SIZE)


def expected_spec(architecture: dict[str, Any]) -> tuple[dict[str, architectures.TensorSpec], int]:
    """The state_dict spec and parameter count of a kind only torch can describe, from
    ``python -m worker.inspect_architecture`` (cached per normalized config)."""
    key = json.dumps(architecture, sort_keys=True, separators=(",", ":"))
    cached = _spec_cache.get(key)
    if cached is not None:
        return cached
    result = _run_inspector([sys.executable, "-m", "worker.inspect_architecture"], key.encode(),
                            what=f"the {architecture.get('kind')} architecture")
    try:
        value = (architectures.spec_from_json(result["spec"]), int(result["num_params"]))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise Unprocessable(f"invalid architecture: the inspector's answer is malformed ({exc})") from None
    _spec_cache.put(key, value)
    return value


def _run_inspector(command: list[str], stdin: bytes | None, *, what: str,
                   refused: str = "invalid architecture") -> dict[str, Any]:
    """Run a worker-side inspector in a fresh interpreter (empty working directory, offline, killed
    after INSPECT_TIMEOUT_S); its last stdout line is a JSON object with "ok". A refusal is answered
    as ``f"{refused}: {error}"``, and so is a timeout or an unreadable answer."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    with tempfile.TemporaryDirectory(prefix="lambdahat-inspect-") as cwd:
        try:
            proc = subprocess.run(command, cwd=cwd, env=env, input=stdin, capture_output=True,
                                  stdin=None if stdin is not None else subprocess.DEVNULL, timeout=INSPECT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise Unprocessable(f"{refused}: inspecting {what} took longer than {INSPECT_TIMEOUT_S:.0f} s") from None
    try:
        result = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    except (IndexError, ValueError, UnicodeDecodeError):
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise Unprocessable(
            f"{refused}: {what} could not be inspected (inspector exit status {proc.returncode}: {tail[0][:300]})"
        ) from None
    if not isinstance(result, dict) or not result.get("ok"):
        raise Unprocessable(f"{refused}: {result.get('error') if isinstance(result, dict) else result}")
    return result


def inspect_torch_file(path: Path) -> dict[str, Any]:
    """Key -> {shape, dtype, non_finite} of a torch.save state_dict, read by a weights-only load in a
    subprocess (a fresh interpreter in an empty working directory, killed after INSPECT_TIMEOUT_S)."""
    result = _run_inspector([sys.executable, "-m", "worker.inspect_checkpoint", str(path)], None,
                            what="the .pt file", refused="invalid checkpoint")
    return result["tensors"]


def get_checkpoint(session: Session, principal: Principal, checkpoint_id: str) -> Checkpoint:
    row = CheckpointRepository(session, principal.owner).get(checkpoint_id) if is_valid_id(checkpoint_id) else None
    if row is None:
        raise NotFound(f"checkpoint {checkpoint_id} not found")
    return row


def list_checkpoints(
    session: Session, principal: Principal, limit: int, cursor: str | None, collection: str | None
) -> tuple[list[Checkpoint], str | None]:
    if collection is not None and "\x00" in collection:
        raise Unprocessable("'collection' must not contain NUL characters")
    return page(CheckpointRepository(session, principal.owner).page_of_collection(limit, cursor, collection), limit)


def delete_checkpoint(session: Session, session_factory: sessionmaker[Session], principal: Principal, settings: Settings,
                      checkpoint_id: str) -> None:
    row = get_checkpoint(session, principal, checkpoint_id)
    delete_upload(session, ArtifactStore(settings), session_factory, CheckpointRepository(session, principal.owner), row,
                  f"checkpoint {checkpoint_id}")
