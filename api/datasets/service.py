"""Dataset logic: validate an upload's content, store it, list, delete."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from api.datasets.repository import DatasetRepository
from api.deps import Principal
from api.errors import NotFound, Unprocessable
from api.pagination import page
from api.types import is_valid_id
from api.uploads import UploadForm, delete_upload, store_upload
from backend.formats import (
    NUMERIC_DTYPES,
    TOKEN_FIELDS,
    FormatError,
    TensorInfo,
    count_non_finite,
    detect_format,
    iter_chunks,
    read_npz,
    read_safetensors,
)
from backend.models import Dataset
from backend.settings import Settings
from backend.storage import ArtifactStore

TEXT_FIELDS = {"name"}


INTEGER_DTYPES = ("int8", "int16", "int32", "int64", "uint8")
IGNORE_INDEX = -100  # a label that is not a prediction target (the losses skip it)


@dataclass(frozen=True)
class DatasetContent:
    format: str
    n: int
    x: TensorInfo  # tokens: input_ids
    y: TensorInfo  # tokens: labels, or input_ids when there are none
    kind: str = "xy"
    tensors: dict[str, Any] | None = None  # tokens: name -> {shape, dtype, min, max}
    max_token_id: int | None = None
    seq_len: int | None = None


def inspect_dataset(path: Path) -> DatasetContent:
    """Check a dataset file: format, then either tensors ``x`` and ``y`` (numeric, same first
    dimension, finite) or token tensors (``input_ids`` and optional ``attention_mask``, ``labels``).

    Reads the data in bounded chunks, never the whole file at once. Raises FormatError.
    """
    fmt = detect_format(path)
    if fmt == "safetensors":
        tensors = read_safetensors(path)
    elif fmt == "npz":
        tensors = read_npz(path)
    else:
        what = "an archive" if fmt == "archive" else f"a {fmt} checkpoint file"
        raise FormatError(f"a dataset must be safetensors or npz with tensors 'x' and 'y' (or 'input_ids'); this is {what}")
    if "input_ids" in tensors:
        return _inspect_tokens(path, fmt, tensors)
    missing = [name for name in ("x", "y") if name not in tensors]
    if missing:
        raise FormatError(
            f"the dataset has no tensor(s) {missing}; it needs 'x' (inputs) and 'y' (targets), "
            f"found: {sorted(tensors)[:20]}"
        )
    x, y = tensors["x"], tensors["y"]
    for name, tensor in (("x", x), ("y", y)):
        if tensor.dtype not in NUMERIC_DTYPES:
            raise FormatError(f"tensor '{name}' has dtype {tensor.dtype}; supported: {', '.join(NUMERIC_DTYPES)}")
        if len(tensor.shape) == 0:
            raise FormatError(f"tensor '{name}' is a scalar; its first dimension must index the examples")
    if x.shape[0] != y.shape[0]:
        raise FormatError(
            f"x and y must have the same number of examples (first dimension): x has {x.shape[0]} "
            f"(shape {list(x.shape)}), y has {y.shape[0]} (shape {list(y.shape)})"
        )
    if x.shape[0] == 0:
        raise FormatError("the dataset is empty (x and y have 0 examples)")
    for name, tensor in (("x", x), ("y", y)):
        bad = count_non_finite(path, tensor)
        if bad:
            raise FormatError(f"tensor '{name}' contains {bad} non-finite value(s) (NaN or inf)")
    return DatasetContent(fmt, x.shape[0], x, y)


def _inspect_tokens(path: Path, fmt: str, tensors: dict[str, TensorInfo]) -> DatasetContent:
    """input_ids: integer [N, T] with ids >= 0; attention_mask: [N, T] of 0/1; labels: integer [N, T]
    or [N], each >= 0 or -100 (ignored)."""
    unexpected = sorted(set(tensors) - set(TOKEN_FIELDS))
    if unexpected:
        raise FormatError(f"a token dataset holds {', '.join(TOKEN_FIELDS)}; unexpected tensor(s): {unexpected[:20]}")
    ids = tensors["input_ids"]
    if ids.dtype not in INTEGER_DTYPES:
        raise FormatError(f"'input_ids' has dtype {ids.dtype}; token ids must be integers ({', '.join(INTEGER_DTYPES)})")
    if len(ids.shape) != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise FormatError(f"'input_ids' must be [N, T] with N, T > 0 (N sequences of T tokens), got shape {list(ids.shape)}")
    n, seq_len = ids.shape
    described: dict[str, Any] = {}
    for name, tensor in tensors.items():
        low, high = _value_range(path, tensor)
        described[name] = {"shape": list(tensor.shape), "dtype": tensor.dtype, "min": low, "max": high}
    if described["input_ids"]["min"] < 0:
        raise FormatError(f"'input_ids' holds a negative token id ({described['input_ids']['min']})")
    mask = tensors.get("attention_mask")
    if mask is not None:
        if mask.dtype not in (*INTEGER_DTYPES, "bool"):
            raise FormatError(f"'attention_mask' has dtype {mask.dtype}; it must be integer or bool (0/1)")
        if list(mask.shape) != [n, seq_len]:
            raise FormatError(f"'attention_mask' must have the shape of input_ids {[n, seq_len]}, got {list(mask.shape)}")
        if described["attention_mask"]["min"] < 0 or described["attention_mask"]["max"] > 1:
            raise FormatError("'attention_mask' must hold only 0 and 1")
    labels = tensors.get("labels")
    if labels is not None:
        if labels.dtype not in INTEGER_DTYPES:
            raise FormatError(f"'labels' has dtype {labels.dtype}; labels must be integers (-100 = not a target)")
        if list(labels.shape) not in ([n, seq_len], [n]):
            raise FormatError(f"'labels' must be [N, T] {[n, seq_len]} (token targets) or [N] {[n]} "
                              f"(one class per sequence), got {list(labels.shape)}")
        if described["labels"]["min"] < IGNORE_INDEX or IGNORE_INDEX < described["labels"]["min"] < 0:
            raise FormatError(f"'labels' holds {described['labels']['min']}; labels are >= 0, or -100 for positions "
                              "that are not targets")
    return DatasetContent(fmt, n, ids, labels if labels is not None else ids, kind="tokens", tensors=described,
                          max_token_id=int(described["input_ids"]["max"]), seq_len=seq_len)


def _value_range(path: Path, tensor: TensorInfo) -> tuple[int, int]:
    """The smallest and largest value of an integer or bool tensor, read a chunk at a time."""
    low: int | None = None
    high: int | None = None
    for chunk in iter_chunks(path, tensor):
        if chunk.size == 0:
            continue
        chunk_low, chunk_high = int(chunk.min()), int(chunk.max())
        low = chunk_low if low is None else min(low, chunk_low)
        high = chunk_high if high is None else max(high, chunk_high)
    if low is None or high is None:  # an empty tensor
        return 0, 0
    return low, high


def create_dataset(session_factory: sessionmaker[Session], principal: Principal, store: ArtifactStore,
                   form: UploadForm) -> Dataset:
    """Validate an uploaded dataset, store its file under its sha256 and insert its row."""
    assert form.file is not None and form.file.sha256 is not None
    name = _name(form)
    try:
        content = inspect_dataset(form.file.path)
    except FormatError as exc:
        raise Unprocessable(f"invalid dataset: {exc}") from None
    row = Dataset(
        owner=principal.owner,
        name=name,
        sha256=form.file.sha256,
        size_bytes=form.file.size,
        format=content.format,
        n=content.n,
        x_shape=list(content.x.shape),
        y_shape=list(content.y.shape),
        x_dtype=content.x.dtype,
        y_dtype=content.y.dtype,
        kind=content.kind,
        tensors=content.tensors,
        max_token_id=content.max_token_id,
        seq_len=content.seq_len,
    )
    return store_upload(store, session_factory, form.file, "datasets", row)


def _name(form: UploadForm) -> str | None:
    name = form.fields.get("name")
    if name is not None and len(name) > 300:
        raise Unprocessable("'name' must be at most 300 characters")
    return name or (form.filename[:300] if form.filename else None)


def get_dataset(session: Session, principal: Principal, dataset_id: str) -> Dataset:
    row = DatasetRepository(session, principal.owner).get(dataset_id) if is_valid_id(dataset_id) else None
    if row is None:
        raise NotFound(f"dataset {dataset_id} not found")
    return row


def list_datasets(session: Session, principal: Principal, limit: int, cursor: str | None) -> tuple[list[Dataset], str | None]:
    return page(DatasetRepository(session, principal.owner).page(limit, cursor), limit)


def delete_dataset(session: Session, session_factory: sessionmaker[Session], principal: Principal, settings: Settings,
                   dataset_id: str) -> None:
    row = get_dataset(session, principal, dataset_id)
    delete_upload(session, ArtifactStore(settings), session_factory, DatasetRepository(session, principal.owner), row,
                  f"dataset {dataset_id}")
