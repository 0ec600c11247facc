"""Content-addressed artifact storage under ``ARTIFACT_DIR``.

Layout: ``<artifact_dir>/<kind>/<first two hex digits>/<sha256>`` for stored files (``kind`` is
``checkpoints`` or ``datasets``), ``<artifact_dir>/tmp/`` for uploads in progress. Storage keys are
derived from the content's hash, never from anything a user sends, and are what the database stores.

An upload is written to a staging file while it is hashed, with the size cap enforced as bytes
arrive; only a completely received and validated file is renamed to its key (an atomic rename on the
same filesystem), so readers never see a partial artifact. Identical content uploaded twice (by
anyone) is stored once; a file is removed when the last row that references it is deleted. Placing
and removing happen under an exclusive lock on ``<artifact_dir>/.lock`` (fcntl), held together with
the database commit, so a delete never removes a file that a concurrent upload is about to reference.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from api.settings import Settings

KINDS = ("checkpoints", "datasets")
_KEY_PATTERN = re.compile(r"^(checkpoints|datasets)/[0-9a-f]{2}/[0-9a-f]{64}$")


class UploadTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"upload exceeds the {limit}-byte limit")
        self.limit = limit


class StagedFile:
    """An upload being received: written to a private temp file and hashed as it arrives."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="upload-", dir=directory)
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0
        self.max_bytes = max_bytes
        self.sha256: str | None = None

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise UploadTooLarge(self.max_bytes)
        self._hash.update(data)
        self._file.write(data)

    def finish(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self.sha256 = self._hash.hexdigest()

    def discard(self) -> None:
        """Remove the staging file (a no-op once it has been placed or removed)."""
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)


class ArtifactStore:
    def __init__(self, settings: Settings) -> None:
        assert settings.artifact_dir is not None
        self.root = Path(settings.artifact_dir)
        self.staging_dir = self.root / "tmp"

    # -- reading (workers use this) --

    def path(self, storage_key: str) -> Path:
        """Where a stored artifact lives. Only well-formed content-addressed keys are accepted."""
        if not _KEY_PATTERN.match(storage_key):
            raise ValueError(f"not a storage key: {storage_key!r}")
        return self.root / storage_key

    @staticmethod
    def key_for(kind: str, sha256: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"unknown artifact kind {kind!r}")
        return f"{kind}/{sha256[:2]}/{sha256}"

    # -- writing --

    def stage(self, max_bytes: int) -> StagedFile:
        return StagedFile(self.staging_dir, max_bytes)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive across threads and processes on this machine (placing/removing + the DB commit)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def place(self, staged: StagedFile, kind: str) -> tuple[str, bool]:
        """Move a finished staging file to its content-addressed key; call under :meth:`lock`.

        Returns ``(storage_key, newly_placed)``; when the content is already stored the staging file
        is dropped and ``newly_placed`` is False.
        """
        assert staged.sha256 is not None, "finish() the staged file first"
        key = self.key_for(kind, staged.sha256)
        final = self.path(key)
        if final.exists():
            staged.discard()
            return key, False
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(staged.path, 0o440)  # artifacts are immutable
        os.replace(staged.path, final)
        return key, True

    def remove(self, storage_key: str) -> None:
        """Delete a stored artifact; call under :meth:`lock` once no row references it."""
        path = self.path(storage_key)
        path.unlink(missing_ok=True)
        try:
            path.parent.rmdir()  # drop the shard directory once it is empty
        except OSError:
            pass

    def cleanup_staging(self, older_than_s: float = 24 * 3600) -> int:
        """Remove staging files left by a crashed process; returns how many were removed."""
        if not self.staging_dir.is_dir():
            return 0
        cutoff = time.time() - older_than_s
        removed = 0
        for entry in self.staging_dir.glob("upload-*"):
            try:
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed
