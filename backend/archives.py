"""Read an uploaded archive (zip, tar, tar.gz) holding what ``save_pretrained`` writes, safely, in pure Python.

An archive is untrusted: its member names, types and sizes are checked from the headers before any
data is read, and nothing is ever extracted by member name. What is kept is read into files this
module names itself:

- ``config.json`` (at the top, or inside one top-level folder), parsed as JSON;
- the weights: ``model.safetensors``, or ``model.safetensors.index.json`` with the shards it names,
  which are merged into ONE safetensors file (an 8-byte header length, a JSON header, the raw bytes;
  the bytes are streamed, never held in memory).

Refused, each with a :class:`~backend.formats.FormatError` naming the problem: absolute paths and
``..`` components; symlinks, hard links, devices and fifos; more than ``max_members`` members;
duplicate names; a total uncompressed size over ``max_unpacked_bytes`` (summed from the headers
before reading, and counted again while reading, since headers can lie); a compression ratio above
``MAX_RATIO`` (zip bombs); encrypted zip members; pickle weights (``pytorch_model.bin``) without
safetensors; a missing config.json or weights; an index naming shards that are absent.
Other members (tokenizer files, ``generation_config.json``, a README, ...) are counted and ignored.
"""

from __future__ import annotations

import gzip
import json
import os
import stat
import struct
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from backend.formats import SAFETENSORS_DTYPES, FormatError, TensorInfo, read_safetensors

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
MAX_CONFIG_BYTES = 4 * 1024 * 1024
MAX_INDEX_BYTES = 64 * 1024 * 1024
# Weights compress little (random-looking floats); a member that inflates more than this is a bomb.
MAX_RATIO = 200
RATIO_CHECK_MIN_BYTES = 1024 * 1024  # small members (a config of repeated keys) may compress well
COPY_CHUNK = 4 * 1024 * 1024
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_OUR_DTYPE_TO_SAFETENSORS = {ours: st for st, (ours, _) in SAFETENSORS_DTYPES.items()}


@dataclass(frozen=True)
class ArchiveLimits:
    max_unpacked_bytes: int
    max_members: int = 10_000


@dataclass(frozen=True)
class Pretrained:
    """What an archive held: the parsed config.json and how many weight bytes were written."""

    config: dict[str, Any]
    weights_bytes: int
    sharded: bool


def archive_kind(path: Path) -> str | None:
    """"zip" | "tar" | "tar.gz" when the file is an archive of that kind (from its bytes), else None."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:2] == b"\x1f\x8b":
        return "tar.gz"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return None


def read_pretrained(path: Path, write_weights: Callable[[bytes], Any], work_dir: Path,
                    limits: ArchiveLimits) -> Pretrained:
    """Read a ``save_pretrained`` archive: its config.json, and its weights written as one safetensors
    file through ``write_weights`` (called with successive chunks). Temporary files go in ``work_dir``
    and are removed before returning. Raises FormatError."""
    kind = archive_kind(path)
    if kind is None:
        raise FormatError("not an archive: expected a zip, tar or tar.gz of a save_pretrained directory")
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="archive-", dir=work_dir) as scratch:
        reader = _ZipReader(path, limits) if kind == "zip" else _TarReader(path, kind, limits)
        kept = reader.read(Path(scratch))
        config = _parse_json(kept, CONFIG_NAME, MAX_CONFIG_BYTES)
        if not isinstance(config, dict):
            raise FormatError("config.json must hold a JSON object")
        if WEIGHTS_NAME in kept.files:
            written = _copy(kept.files[WEIGHTS_NAME], write_weights)
            return Pretrained(config, written, sharded=False)
        index = _parse_json(kept, INDEX_NAME, MAX_INDEX_BYTES)
        written = merge_shards(index, kept.files, write_weights)
        return Pretrained(config, written, sharded=True)


# ---------------------------------------------------------------------------------------------
# Member names and what to keep


@dataclass
class _Kept:
    root: str  # "" or "folder/"
    files: dict[str, Path]  # name relative to root -> the temp file holding it


def _clean_name(raw: str) -> str:
    """The member's path with "./" and empty parts removed; refuses absolute paths and "..".

    Backslashes count as separators here: an archive written on Windows may use them, and a name
    must not mean one thing to this check and another to a tool that extracts it later.
    """
    if "\x00" in raw:
        raise FormatError(f"archive member name {raw!r} contains a NUL byte")
    if raw.startswith(("/", "\\")) or (len(raw) >= 2 and raw[1] == ":" and raw[0].isalpha()):
        raise FormatError(f"archive member {raw!r} has an absolute path; only relative paths are accepted")
    parts = [p for p in raw.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise FormatError(f"archive member {raw!r} points outside the archive ('..' in its path)")
    return "/".join(parts)


def _choose_root(names: list[str]) -> str:
    """Where config.json is: the top of the archive, or one top-level folder."""
    if CONFIG_NAME in names:
        return ""
    candidates = [n for n in names if n.count("/") == 1 and n.endswith("/" + CONFIG_NAME)]
    if not candidates:
        raise FormatError(
            "the archive has no config.json at its top or in one top-level folder; upload the directory "
            "that save_pretrained wrote (config.json + model.safetensors)"
        )
    if len(candidates) > 1:
        raise FormatError(f"the archive holds several models ({', '.join(sorted(candidates)[:5])}); upload one per archive")
    return candidates[0][: -len(CONFIG_NAME)]


def _wanted(names: list[str]) -> tuple[str, set[str]]:
    """The root folder and the member names (relative to it) to read: config, weights, index and shards.

    Shards are not known before the index is read; every ``*.safetensors`` next to config.json is
    kept, and the index later says which are used.
    """
    root = _choose_root(names)
    local = [n[len(root):] for n in names if n.startswith(root) and "/" not in n[len(root):]]
    has_safetensors = any(n.endswith(".safetensors") for n in local)
    pickles = [n for n in local if n.endswith(PICKLE_SUFFIXES) and n.startswith(("pytorch_model", "model"))]
    if pickles and not has_safetensors:
        raise FormatError(
            f"the archive holds pickle weights ({', '.join(sorted(pickles)[:3])}), which this service never "
            "loads (unpickling runs code); re-save the model with save_pretrained(dir, safe_serialization=True) "
            "to write model.safetensors"
        )
    if WEIGHTS_NAME not in local and INDEX_NAME not in local:
        raise FormatError(
            "the archive has config.json but no weights: expected model.safetensors, or "
            "model.safetensors.index.json with its shards, next to it"
        )
    keep = {CONFIG_NAME} | {n for n in local if n.endswith(".safetensors") or n == INDEX_NAME}
    return root, keep


def _check_counts(count: int, limits: ArchiveLimits) -> None:
    if count > limits.max_members:
        raise FormatError(f"the archive has {count} members, more than the {limits.max_members} accepted")


def _check_total(total: int, limits: ArchiveLimits) -> None:
    if total > limits.max_unpacked_bytes:
        raise FormatError(
            f"the archive unpacks to {total} bytes, more than the {limits.max_unpacked_bytes} accepted "
            "(LAMBDAHAT_ARCHIVE_MAX_UNPACKED_BYTES)"
        )


class _Budget:
    """Counts bytes actually read against the cap (headers can understate a member's size)."""

    def __init__(self, limits: ArchiveLimits) -> None:
        self.limits = limits
        self.used = 0

    def take(self, n: int) -> None:
        self.used += n
        _check_total(self.used, self.limits)


def _read_into(source: IO[bytes], target: Path, declared: int, name: str, budget: _Budget) -> None:
    """Copy one member to ``target``, refusing more bytes than its header declared."""
    written = 0
    with open(target, "wb") as out:
        while True:
            chunk = source.read(COPY_CHUNK)
            if not chunk:
                break
            written += len(chunk)
            if written > declared:
                raise FormatError(f"archive member {name!r} holds more data than its header declares ({declared} bytes)")
            budget.take(len(chunk))
            out.write(chunk)
    if written != declared:
        raise FormatError(f"archive member {name!r} is truncated: {written} of {declared} bytes")


class _ZipReader:
    def __init__(self, path: Path, limits: ArchiveLimits) -> None:
        self.path = path
        self.limits = limits

    def read(self, scratch: Path) -> _Kept:
        try:
            zf = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise FormatError(f"corrupt or truncated zip archive: {exc}") from None
        with zf:
            infos = zf.infolist()
            _check_counts(len(infos), self.limits)
            files: dict[str, zipfile.ZipInfo] = {}
            total = 0
            for info in infos:
                name = _clean_name(info.filename)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise FormatError(f"archive member {info.filename!r} is a symlink; links are not accepted")
                # The file-type bits are only set by zips made on Unix; writers that leave them 0 mean a file.
                if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                    raise FormatError(f"archive member {info.filename!r} is not a regular file or folder")
                if info.is_dir():
                    continue
                if info.flag_bits & 0x1:
                    raise FormatError(f"archive member {info.filename!r} is encrypted")
                if name in files:
                    raise FormatError(f"the archive holds {name!r} twice; duplicate names are not accepted")
                files[name] = info
                total += info.file_size
                if (info.file_size > RATIO_CHECK_MIN_BYTES
                        and info.file_size > MAX_RATIO * max(info.compress_size, 1)):
                    raise FormatError(
                        f"archive member {info.filename!r} inflates {info.file_size / max(info.compress_size, 1):.0f}-fold "
                        f"({info.compress_size} -> {info.file_size} bytes), more than the {MAX_RATIO}-fold accepted (zip bomb?)"
                    )
            _check_total(total, self.limits)
            root, keep = _wanted(list(files))
            budget = _Budget(self.limits)
            kept: dict[str, Path] = {}
            for local in sorted(keep):
                info = files[root + local]
                target = _scratch_file(scratch)
                try:
                    with zf.open(info) as member:
                        _read_into(member, target, info.file_size, info.filename, budget)
                except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
                    raise FormatError(f"corrupt zip member {info.filename!r}: {exc}") from None
                kept[local] = target
        return _Kept(root, kept)


class _TarReader:
    """Tar archives are read as a stream (gzip cannot seek): a first pass checks every header,
    a second reads the members kept."""

    def __init__(self, path: Path, kind: str, limits: ArchiveLimits) -> None:
        self.path = path
        self.mode = "r|gz" if kind == "tar.gz" else "r|"
        self.compressed_size = path.stat().st_size
        self.limits = limits

    def _members(self) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
        try:
            with tarfile.open(self.path, self.mode) as tf:
                for info in tf:
                    yield tf, info
        except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile, zlib.error) as exc:
            raise FormatError(f"corrupt or truncated tar archive: {exc}") from None

    def read(self, scratch: Path) -> _Kept:
        names: list[str] = []
        seen: set[str] = set()
        total = 0
        count = 0
        for _, info in self._members():
            count += 1
            _check_counts(count, self.limits)
            name = _clean_name(info.name)
            if info.issym():
                raise FormatError(f"archive member {info.name!r} is a symlink (to {info.linkname!r}); links are not accepted")
            if info.islnk():
                raise FormatError(f"archive member {info.name!r} is a hard link (to {info.linkname!r}); links are not accepted")
            if info.isdir():
                continue
            if not info.isreg():
                raise FormatError(f"archive member {info.name!r} is a device, fifo or other special file; only files are accepted")
            if name in seen:
                raise FormatError(f"the archive holds {name!r} twice; duplicate names are not accepted")
            seen.add(name)
            names.append(name)
            total += info.size
            _check_total(total, self.limits)
            if total > RATIO_CHECK_MIN_BYTES and total > MAX_RATIO * self.compressed_size:
                raise FormatError(
                    f"the archive inflates more than {MAX_RATIO}-fold ({self.compressed_size} bytes declare {total} "
                    "bytes and more), which is not accepted (a decompression bomb?)"
                )
        root, keep = _wanted(names)
        budget = _Budget(self.limits)
        kept: dict[str, Path] = {}
        for tf, info in self._members():
            if not info.isreg():
                continue
            name = _clean_name(info.name)
            if not name.startswith(root) or name[len(root):] not in keep:
                continue
            source = tf.extractfile(info)  # a stream of this member's bytes; nothing is written by name
            if source is None:
                raise FormatError(f"archive member {info.name!r} cannot be read")
            target = _scratch_file(scratch)
            _read_into(source, target, info.size, info.name, budget)
            kept[name[len(root):]] = target
        return _Kept(root, kept)


def _scratch_file(scratch: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix="member-", dir=scratch)
    os.close(fd)
    return Path(name)


def _parse_json(kept: _Kept, name: str, limit: int) -> Any:
    path = kept.files.get(name)
    if path is None:
        raise FormatError(f"the archive has no {name}")
    if path.stat().st_size > limit:
        raise FormatError(f"{name} is {path.stat().st_size} bytes, more than the {limit} accepted")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{name} is not valid JSON: {exc}") from None


def _copy(path: Path, write: Callable[[bytes], Any]) -> int:
    written = 0
    with open(path, "rb") as f:
        while chunk := f.read(COPY_CHUNK):
            write(chunk)
            written += len(chunk)
    return written


# ---------------------------------------------------------------------------------------------
# Shards


def merge_shards(index: Any, files: dict[str, Path], write: Callable[[bytes], Any]) -> int:
    """Write the shards an index names as one safetensors file through ``write``; returns the bytes written.

    ``index`` is model.safetensors.index.json's content (``{"weight_map": {tensor: shard file}}``);
    ``files`` maps shard file names to local files. Every tensor must be in the shard the index names,
    once; every shard named must be present.
    """
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise FormatError("model.safetensors.index.json has no 'weight_map' object naming each tensor's shard")
    shard_names = sorted({str(v) for v in weight_map.values()})
    bad = [s for s in shard_names if "/" in s or "\\" in s or s in ("", ".", "..") or not s.endswith(".safetensors")]
    if bad:
        raise FormatError(f"model.safetensors.index.json names shard files that are not plain .safetensors names: {bad[:5]}")
    absent = [s for s in shard_names if s not in files]
    if absent:
        raise FormatError(f"model.safetensors.index.json names shards that the archive does not hold: {', '.join(absent[:10])}")
    shards: dict[str, dict[str, TensorInfo]] = {}
    for shard in shard_names:
        try:
            shards[shard] = read_safetensors(files[shard])
        except FormatError as exc:
            raise FormatError(f"shard {shard}: {exc}") from None
    placed: dict[str, str] = {}
    for shard, tensors in shards.items():
        for name in tensors:
            if name in placed:
                raise FormatError(f"tensor {name!r} appears in two shards ({placed[name]} and {shard})")
            if weight_map.get(name) != shard:
                raise FormatError(f"tensor {name!r} is in shard {shard} but the index places it in {weight_map.get(name)!r}")
            placed[name] = shard
    unplaced = [name for name in weight_map if name not in placed]
    if unplaced:
        raise FormatError(f"the index names tensors that no shard holds: {', '.join(unplaced[:10])}")

    header: dict[str, Any] = {}
    order: list[tuple[str, TensorInfo]] = []
    offset = 0
    for shard in shard_names:
        for name, info in sorted(shards[shard].items(), key=lambda item: item[1].file_offset or 0):
            nbytes = info.numel * _itemsize(info)
            header[name] = {"dtype": _OUR_DTYPE_TO_SAFETENSORS[info.dtype], "shape": list(info.shape),
                            "data_offsets": [offset, offset + nbytes]}
            order.append((shard, info))
            offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as the safetensors library writes it
    write(struct.pack("<Q", len(raw)))
    write(raw)
    written = 8 + len(raw)
    for shard, info in order:
        remaining = info.numel * _itemsize(info)
        with open(files[shard], "rb") as f:
            f.seek(info.file_offset or 0)
            while remaining:
                chunk = f.read(min(COPY_CHUNK, remaining))
                if not chunk:
                    raise FormatError(f"shard {shard} ends early")
                write(chunk)
                remaining -= len(chunk)
                written += len(chunk)
    return written


def _itemsize(info: TensorInfo) -> int:
    import numpy as np

    return np.dtype(info.numpy_dtype).itemsize
