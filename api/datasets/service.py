"""Dataset logic: validate an upload's content, store it, list, delete."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from api.datasets.repository import DatasetRepository
from api.deps import Principal
from api.errors import NotFound, Unprocessable
from api.pagination import page
from api.types import is_valid_id
from api.uploads import UploadForm, delete_upload, store_upload
from backend.formats import (
    NUMERIC_DTYPES,
    FormatError,
    TensorInfo,
    count_non_finite,
    detect_format,
    read_npz,
    read_safetensors,
)
from backend.models import Dataset
from backend.settings import Settings
from backend.storage import ArtifactStore

TEXT_FIELDS = {"name"}


@dataclass(frozen=True)
class DatasetContent:
    format: str
    n: int
    x: TensorInfo
    y: TensorInfo


def inspect_dataset(path: Path) -> DatasetContent:
    """Check a dataset file: format, tensors ``x`` and ``y``, numeric, same first dimension, finite.

    Reads the data in bounded chunks, never the whole file at once. Raises FormatError.
    """
    fmt = detect_format(path)
    if fmt == "safetensors":
        tensors = read_safetensors(path)
    elif fmt == "npz":
        tensors = read_npz(path)
    else:
        raise FormatError(f"a dataset must be safetensors or npz with tensors 'x' and 'y'; this is a {fmt} checkpoint file")
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
