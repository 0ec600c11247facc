"""Recognise and read uploaded files from their content, in pure Python + numpy (never torch, never pickle).

- safetensors: an 8-byte little-endian header length, a JSON header (dtype, shape, data offsets per
  tensor), then the raw bytes. Read here completely: header checks, and data read in bounded chunks.
- npz: a zip of ``.npy`` members. Each member's header is parsed with numpy's literal parser
  (no ``allow_pickle``); object and structured dtypes are refused; data is streamed in chunks.
- ``.pt``: ``torch.save``'s zip format (``<name>/data.pkl`` + tensor storages). Recognised here but
  only ever opened by ``python -m worker.inspect_checkpoint`` in a short-lived subprocess.
- ``.pt2``: a ``torch.export`` archive (``<name>/archive_format`` says "pt2"; ``models/model.json``;
  ``data/weights/model_weights_config.json`` lists each weight's shape and whether it is a parameter).
  Only that JSON is read here; the archive is code and is loaded only inside a job process.

Every problem raises :class:`FormatError` with a message naming it (the API answers 422).
"""

from __future__ import annotations

import json
import math
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024
CHUNK_BYTES = 16 * 1024 * 1024  # finiteness checks look at this much data at a time

# safetensors dtype -> (our dtype name, numpy dtype used to read the bytes)
SAFETENSORS_DTYPES: dict[str, tuple[str, str]] = {
    "F64": ("float64", "<f8"),
    "F32": ("float32", "<f4"),
    "F16": ("float16", "<f2"),
    "BF16": ("bfloat16", "<u2"),  # numpy has no bfloat16: read the raw 16-bit words
    "I64": ("int64", "<i8"),
    "I32": ("int32", "<i4"),
    "I16": ("int16", "<i2"),
    "I8": ("int8", "i1"),
    "U8": ("uint8", "u1"),
    "BOOL": ("bool", "?"),
}
# A token dataset's tensors (the same names as estimator.tokens.TOKEN_FIELDS, which needs torch).
TOKEN_FIELDS = ("input_ids", "attention_mask", "labels")
# Names whose presence makes a zip a save_pretrained archive rather than an unknown zip.
ARCHIVE_MARKERS = ("config.json", ".safetensors", ".safetensors.index.json", ".bin")
NUMERIC_DTYPES = ("float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8")


class FormatError(ValueError):
    """The file is not in an accepted format, or is truncated/corrupt; the message says how."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor inside a file: enough to check it and to memory-map it."""

    dtype: str  # our name: float32, bfloat16, int64, ...
    shape: tuple[int, ...]
    numpy_dtype: str  # how its bytes are read (bfloat16 as <u2)
    # safetensors / uncompressed npz: absolute byte offset of the data in the file, else None
    file_offset: int | None
    fortran_order: bool = False
    npz_member: str | None = None  # for npz: the zip member holding it

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


# ---------------------------------------------------------------------------------------------
# Detection


def detect_format(path: Path) -> str:
    """"safetensors" | "npz" | "pt" | "pt2" | "archive", from the bytes (the file name is never consulted).

    "archive": a tar, tar.gz, or a zip that is none of the others but names a config.json or weights,
    presumably a ``save_pretrained`` directory (read by ``backend.archives``).
    """
    size = path.stat().st_size
    if size == 0:
        raise FormatError("the file is empty")
    with open(path, "rb") as f:
        head = f.read(512)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return _detect_zip(path)
    if head[:2] == b"\x1f\x8b":
        return "archive"  # gzip: a tar.gz
    if len(head) >= 9 and head[8:9] == b"{":
        (header_len,) = struct.unpack("<Q", head[:8])
        if header_len <= SAFETENSORS_MAX_HEADER:
            return "safetensors"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "archive"  # tar
    if head[:1] == b"\x80":
        raise FormatError(
            "this is a raw pickle (legacy torch.save format), which is not accepted: save the state_dict with "
            "torch.save (zip format, the default since torch 1.6) or, better, with safetensors"
        )
    raise FormatError(
        "unrecognised file format: expected safetensors, npz, a torch.save state_dict (.pt) "
        "or a torch.export archive (.pt2)"
    )


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise FormatError(f"corrupt or truncated zip archive: {exc}") from None


def _detect_zip(path: Path) -> str:
    with _open_zip(path) as zf:
        names = zf.namelist()
        archive_format = [n for n in names if n.rsplit("/", 1)[-1] == "archive_format" and n.count("/") <= 1]
        for name in archive_format:
            if _read_member(zf, name, limit=64).strip() == b"pt2":
                return "pt2"
        if any(n.count("/") == 1 and n.endswith("/data.pkl") for n in names):
            return "pt"
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        if any(n.endswith(ARCHIVE_MARKERS) for n in names):
            return "archive"
    raise FormatError(
        "a zip archive that is neither an npz (only .npy members), a torch.save file (<name>/data.pkl), "
        "a torch.export archive (<name>/archive_format) nor a save_pretrained directory (config.json + model.safetensors)"
    )


def _read_member(zf: zipfile.ZipFile, name: str, limit: int) -> bytes:
    info = zf.getinfo(name)
    if info.file_size > limit:
        raise FormatError(f"zip member {name!r} is {info.file_size} bytes, more than the {limit} expected")
    try:
        return zf.read(name)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise FormatError(f"corrupt zip member {name!r}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# safetensors


def read_safetensors(path: Path) -> dict[str, TensorInfo]:
    """Parse and check the header: every tensor's dtype, shape and byte range, and that they tile the file."""
    header, data_start, data_len = _safetensors_header(path)
    tensors: dict[str, TensorInfo] = {}
    ranges = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = _safetensors_data_range(name, entry, data_len)
        our_name, numpy_dtype = SAFETENSORS_DTYPES[entry["dtype"]]
        ranges.append((begin, end))
        tensors[name] = TensorInfo(our_name, tuple(entry["shape"]), numpy_dtype, data_start + begin)
    # The tensors must tile the data exactly (what the safetensors library itself enforces).
    position = 0
    for begin, end in sorted(ranges):
        if begin != position:
            raise FormatError("corrupt safetensors file: tensor data ranges overlap or leave gaps")
        position = end
    if position != data_len:
        raise FormatError(
            f"corrupt safetensors file: {data_len - position} bytes after the last tensor (truncated header or extra data)"
        )
    return tensors


def _safetensors_header(path: Path) -> tuple[dict[str, Any], int, int]:
    """The header's JSON object, where the data starts and how many data bytes follow."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise FormatError("truncated safetensors file: shorter than its 8-byte header length")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > SAFETENSORS_MAX_HEADER:
            raise FormatError(f"safetensors header length {header_len} is implausibly large")
        if 8 + header_len > size:
            raise FormatError(f"truncated safetensors file: the header needs {header_len} bytes, the file has {size - 8}")
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"corrupt safetensors header (not JSON): {exc}") from None
    if not isinstance(header, dict):
        raise FormatError("corrupt safetensors header: expected a JSON object")
    return header, 8 + header_len, size - 8 - header_len


def _safetensors_data_range(name: str, entry: Any, data_len: int) -> tuple[int, int]:
    """Check one header entry; the range of its bytes in the data, (begin, end)."""
    if not (isinstance(entry, dict) and {"dtype", "shape", "data_offsets"} <= set(entry)):
        raise FormatError(f"corrupt safetensors header: entry {name!r} lacks dtype/shape/data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in SAFETENSORS_DTYPES:
        raise FormatError(
            f"tensor {name!r} has dtype {dtype}, which is not supported "
            f"(supported: {', '.join(SAFETENSORS_DTYPES)})"
        )
    if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise FormatError(f"corrupt safetensors header: tensor {name!r} has shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise FormatError(f"corrupt safetensors header: tensor {name!r} has data_offsets {offsets!r}")
    begin, end = offsets
    our_name, numpy_dtype = SAFETENSORS_DTYPES[dtype]
    nbytes = math.prod(shape) * np.dtype(numpy_dtype).itemsize
    if end - begin != nbytes or begin < 0:
        raise FormatError(
            f"corrupt safetensors header: tensor {name!r} ({dtype} {shape}) needs {nbytes} bytes "
            f"but its data_offsets span {end - begin}"
        )
    if end > data_len:
        raise FormatError(
            f"truncated safetensors file: tensor {name!r} ends at byte {end} of the data, "
            f"but the file holds only {data_len} data bytes"
        )
    return begin, end


# ---------------------------------------------------------------------------------------------
# npz


def read_npz(path: Path) -> dict[str, TensorInfo]:
    """Parse every ``.npy`` member's header (numpy's literal parser, never pickle) and check its size."""
    tensors: dict[str, TensorInfo] = {}
    with _open_zip(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                raise FormatError(f"npz member {info.filename!r} is not a .npy array")
            name = info.filename[: -len(".npy")]
            try:
                with zf.open(info) as member:
                    shape, fortran, dtype, header_len = _read_npy_header(member, info.filename)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
                raise FormatError(f"corrupt npz member {info.filename!r}: {exc}") from None
            our_name = _numpy_dtype_name(dtype, info.filename)
            nbytes = math.prod(shape) * dtype.itemsize
            if info.file_size - header_len != nbytes:
                raise FormatError(
                    f"corrupt npz member {info.filename!r}: {our_name} {list(shape)} needs {nbytes} bytes, "
                    f"the member holds {info.file_size - header_len}"
                )
            offset = None
            if info.compress_type == zipfile.ZIP_STORED:
                offset = _member_data_offset(path, info) + header_len
            tensors[name] = TensorInfo(our_name, shape, dtype.str, offset, fortran, info.filename)
    return tensors


def _read_npy_header(fp: BinaryIO, member: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    # Bytes read so far = magic + version + length field + header text: where the data starts.
    return tuple(int(d) for d in shape), bool(fortran), dtype, fp.tell()


def _numpy_dtype_name(dtype: np.dtype, member: str) -> str:
    if dtype.hasobject:
        raise FormatError(f"npz member {member!r} holds Python objects (dtype {dtype}); only numeric arrays are accepted")
    if dtype.fields is not None or dtype.subdtype is not None:
        raise FormatError(f"npz member {member!r} has a structured dtype ({dtype}); only numeric arrays are accepted")
    name = dtype.name
    if dtype.byteorder == ">" and dtype.itemsize > 1:
        raise FormatError(f"npz member {member!r} is big-endian ({dtype.str}); save it little-endian")
    return name


def _member_data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Absolute offset of a stored member's bytes: after its local header (whose extra field may
    differ from the central directory's copy, so read it)."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise FormatError(f"corrupt zip: bad local header for {info.filename!r}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


# ---------------------------------------------------------------------------------------------
# Data: chunked reads and finiteness


def iter_chunks(path: Path, tensor: TensorInfo, chunk_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
    """The tensor's elements (flat, in storage order) a chunk at a time, never the whole array at once."""
    itemsize = np.dtype(tensor.numpy_dtype).itemsize
    per_chunk = max(1, chunk_bytes // itemsize)
    total = tensor.numel
    if total == 0:
        return
    if tensor.file_offset is not None:
        # Read into one reusable buffer rather than memory-mapping the whole tensor: a mapping's pages
        # stay resident in this process after they were touched, a buffer keeps memory at one chunk.
        buffer = np.empty(min(per_chunk, total), dtype=tensor.numpy_dtype)
        with open(path, "rb") as f:
            f.seek(tensor.file_offset)
            for start in range(0, total, per_chunk):
                count = min(per_chunk, total - start)
                view = buffer[:count]
                if f.readinto(memoryview(view).cast("B")) != view.nbytes:
                    raise FormatError("truncated file: tensor data ends early")
                yield view
        return
    # A compressed npz member: decompress as a stream (zipfile checks its CRC at the end).
    assert tensor.npz_member is not None
    with zipfile.ZipFile(path) as zf, zf.open(tensor.npz_member) as member:
        _read_npy_header(member, tensor.npz_member)
        remaining = total
        while remaining:
            count = min(per_chunk, remaining)
            raw = member.read(count * itemsize)
            if len(raw) != count * itemsize:
                raise FormatError(f"truncated npz member {tensor.npz_member!r}")
            yield np.frombuffer(raw, dtype=tensor.numpy_dtype)
            remaining -= count
        member.read()  # reach the end so that a CRC mismatch is reported


def count_non_finite(path: Path, tensor: TensorInfo) -> int:
    """How many NaN/inf values a floating tensor holds (0 for integer tensors)."""
    if not tensor.dtype.startswith(("float", "bfloat")):
        return 0
    bad = 0
    try:
        for chunk in iter_chunks(path, tensor):
            if tensor.dtype == "bfloat16":
                # NaN and inf are the words whose 8 exponent bits are all ones.
                bad += int(np.count_nonzero((chunk & 0x7F80) == 0x7F80))
            else:
                bad += int(chunk.size - np.count_nonzero(np.isfinite(chunk)))
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise FormatError(f"corrupt data for {tensor.npz_member or 'tensor'}: {exc}") from None
    return bad


# ---------------------------------------------------------------------------------------------
# torch.export archives (metadata only)


@dataclass(frozen=True)
class Pt2Info:
    num_params: int
    parameters: dict[str, tuple[int, ...]]
    buffers: dict[str, tuple[int, ...]]


def read_pt2(path: Path) -> Pt2Info:
    """Parameter count and shapes from the archive's JSON weight config (nothing is unpickled)."""
    with _open_zip(path) as zf:
        names = set(zf.namelist())
        prefixes = [n[: -len("archive_format")] for n in names if n.rsplit("/", 1)[-1] == "archive_format"]
        if not prefixes:
            raise FormatError("not a torch.export archive: no archive_format entry")
        prefix = prefixes[0]
        model_json = f"{prefix}models/model.json"
        weights_json = f"{prefix}data/weights/model_weights_config.json"
        if model_json not in names or weights_json not in names:
            raise FormatError(
                "unsupported torch.export archive layout (expected models/model.json and "
                "data/weights/model_weights_config.json, as torch >= 2.10 writes with torch.export.save)"
            )
        try:
            config = json.loads(_read_member(zf, weights_json, limit=64 * 1024 * 1024))["config"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise FormatError(f"corrupt torch.export archive: unreadable weights config ({exc})") from None
    parameters: dict[str, tuple[int, ...]] = {}
    buffers: dict[str, tuple[int, ...]] = {}
    # Tied weights (an embedding shared with the output layer) are two entries over one stored
    # tensor, the same view of the same file: one weight, counted once, as the estimator samples it.
    distinct_views: dict[tuple, int] = {}
    for name, entry in config.items():
        try:
            meta = entry["tensor_meta"]
            shape = tuple(int(dim["as_int"]) for dim in meta["sizes"])
            is_param = bool(entry["is_param"])
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"corrupt torch.export archive: weight {name!r} has no concrete shape ({exc})") from None
        (parameters if is_param else buffers)[name] = shape
        if is_param:
            view = (entry.get("path_name") or name, json.dumps(meta.get("strides")), json.dumps(meta.get("storage_offset")),
                    shape)
            distinct_views[view] = math.prod(shape)
    return Pt2Info(sum(distinct_views.values()), parameters, buffers)


def describe(tensors: dict[str, TensorInfo]) -> dict[str, Any]:
    """key -> {"shape", "dtype"} (for messages and the subprocess protocol)."""
    return {k: {"shape": list(t.shape), "dtype": t.dtype} for k, t in tensors.items()}
