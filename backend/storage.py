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

**Remote stores.** ``LAMBDAHAT_ARTIFACT_DIR`` may instead be an fsspec URL (``s3://bucket/prefix``;
S3 needs ``pip install lambdahat[s3]``), so that workers on many machines share artifacts without a
shared filesystem. The same keys are used under that URL. Uploads are staged, hashed and validated
locally exactly as above (in ``LAMBDAHAT_ARTIFACT_CACHE_DIR``), then the validated file is uploaded
to its key (an object appears whole, so readers never see a partial one) and kept as this machine's
cached copy. Workers read through :meth:`ArtifactStore.fetch`: an artifact not yet cached is
downloaded to a temporary file, checked against the sha256 its key names, and renamed into the
cache, which is then memory-mapped like a local artifact; the least recently used cached files are
evicted beyond ``LAMBDAHAT_ARTIFACT_CACHE_MAX_BYTES``. Several API machines may place and remove
remote artifacts: with PostgreSQL, :meth:`ArtifactStore.lock` also holds a cluster-wide advisory
lock, so the place-and-commit / check-and-remove guarantee above holds across machines.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from backend.settings import Settings

log = logging.getLogger("lambdahat.storage")

KINDS = ("checkpoints", "datasets")
_KEY_PATTERN = re.compile(r"^(checkpoints|datasets)/[0-9a-f]{2}/[0-9a-f]{64}$")
_CLUSTER_LOCK_ID = 0x6C616D62  # PostgreSQL advisory lock id of the remote artifact store ("lamb")
_HASH_CHUNK = 1024 * 1024


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
        self.remote = settings.artifacts_remote
        self._database_url = settings.database_url or ""
        if self.remote:
            # Local files (staging, cached copies, the lock) live in the cache dir, laid out like the store.
            assert settings.artifact_cache_dir is not None
            self.url = str(settings.artifact_dir)
            self.root = Path(settings.artifact_cache_dir)
            self.cache_max_bytes = settings.artifact_cache_max_bytes
            self._fs, self._remote_root = _filesystem(self.url, settings.artifact_storage_options)
        else:
            self.url = None
            self.root = Path(settings.artifact_dir)
        self.staging_dir = self.root / "tmp"

    # -- reading (workers use this) --

    def path(self, storage_key: str) -> Path:
        """Where a stored artifact lives (remote stores: where this machine caches it). Only well-formed
        content-addressed keys are accepted."""
        if not _KEY_PATTERN.match(storage_key):
            raise ValueError(f"not a storage key: {storage_key!r}")
        return self.root / storage_key

    def fetch(self, storage_key: str) -> Path:
        """A local file holding the artifact, ready to memory-map. Raises FileNotFoundError if it is not stored.

        Local stores: the stored file itself. Remote stores: the cached copy, downloaded first if needed
        (and checked against the sha256 in its key).
        """
        path = self.path(storage_key)
        if not self.remote:
            if not path.exists():
                raise FileNotFoundError(f"artifact {storage_key} is not in {self.root}")
            return path
        if path.exists():
            _touch(path)  # most recently used: evicted last
            return path
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="fetch-", dir=self.staging_dir)
        os.close(fd)
        partial = Path(name)
        try:
            try:
                self._fs.get_file(self._remote_path(storage_key), str(partial))
            except FileNotFoundError:
                raise FileNotFoundError(f"artifact {storage_key} is not in the artifact store {self.url}") from None
            expected = storage_key.rsplit("/", 1)[1]
            actual = _sha256_of(partial)
            if actual != expected:
                raise OSError(f"artifact {storage_key} downloaded from {self.url} is corrupt "
                              f"(its sha256 is {actual}); refusing to use it")
            path.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(partial, 0o440)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        self.evict(keep=path)
        return path

    def evict(self, keep: Path | None = None) -> int:
        """Remote stores: delete least recently used cached artifacts beyond the cache size cap.

        Returns how many were deleted. A file a running job has memory-mapped stays readable by it
        (unlinking only removes the name)."""
        if not self.remote:
            return 0
        cached = []
        for kind in KINDS:
            for entry in (self.root / kind).glob("*/*"):
                try:
                    stat = entry.stat()
                except FileNotFoundError:
                    continue
                cached.append((stat.st_mtime, stat.st_size, entry))
        total = sum(size for _, size, _ in cached)
        removed = 0
        for _, size, entry in sorted(cached, key=lambda item: item[0]):
            if total <= self.cache_max_bytes:
                break
            if keep is not None and entry == keep:
                continue
            entry.unlink(missing_ok=True)
            total -= size
            removed += 1
        return removed

    def _remote_path(self, storage_key: str) -> str:
        return f"{self._remote_root}/{storage_key}"

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
        """Exclusive across threads and processes on this machine (placing/removing + the DB commit);
        for a remote store on PostgreSQL, across machines too."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                if self.remote and self._database_url.startswith("postgresql"):
                    with _cluster_lock(self._database_url):
                        yield
                else:
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
        if self.remote:
            return self._place_remote(staged, key, final)
        if final.exists():
            staged.discard()
            return key, False
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(staged.path, 0o440)  # artifacts are immutable
        os.replace(staged.path, final)
        return key, True

    def _place_remote(self, staged: StagedFile, key: str, cached: Path) -> tuple[str, bool]:
        remote = self._remote_path(key)
        if self._fs.exists(remote):
            staged.discard()
            return key, False
        _makedirs(self._fs, remote.rsplit("/", 1)[0])
        self._fs.put_file(str(staged.path), remote)
        # The validated upload becomes this machine's cached copy (an embedded worker here reads it as is).
        cached.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(staged.path, 0o440)
        os.replace(staged.path, cached)
        self.evict(keep=cached)
        return key, True

    def remove(self, storage_key: str) -> None:
        """Delete a stored artifact; call under :meth:`lock` once no row references it."""
        path = self.path(storage_key)
        if self.remote:
            try:
                self._fs.rm(self._remote_path(storage_key))
            except FileNotFoundError:
                pass
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
        leftovers = [*self.staging_dir.glob("upload-*"), *self.staging_dir.glob("fetch-*")]
        for entry in leftovers:
            try:
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed


# -- remote store helpers ---------------------------------------------------------------------------


def _filesystem(url: str, options_json: str) -> tuple[Any, str]:
    """The fsspec filesystem and root path of a store URL (``s3://bucket/prefix`` -> s3fs, ``bucket/prefix``)."""
    import json

    import fsspec

    options = json.loads(options_json) if options_json.strip() else {}
    try:
        fs, root = fsspec.core.url_to_fs(url, **options)
    except (ImportError, ValueError) as exc:
        protocol = url.split("://", 1)[0]
        hint = " (pip install 'lambdahat[s3]')" if protocol in ("s3", "s3a") else ""
        raise RuntimeError(f"LAMBDAHAT_ARTIFACT_DIR={url}: no usable fsspec backend for {protocol!r}{hint}: {exc}") from exc
    return fs, root.rstrip("/")


def _makedirs(fs: Any, path: str) -> None:
    try:
        fs.makedirs(path, exist_ok=True)
    except (OSError, NotImplementedError):
        pass  # object stores have no directories; the put below creates the key


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass  # read-only cache: eviction order is then by download time


@lru_cache(maxsize=4)
def _lock_engine(database_url: str) -> Any:
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    # Its own connections, outside the service's pool: a waiter must not hold a pooled connection
    # that the lock holder needs for its commit.
    return create_engine(database_url, poolclass=NullPool)


@contextmanager
def _cluster_lock(database_url: str) -> Iterator[None]:
    """A PostgreSQL session-level advisory lock: one holder across every machine of the deployment."""
    from sqlalchemy import text

    with _lock_engine(database_url).connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _CLUSTER_LOCK_ID})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _CLUSTER_LOCK_ID})
            conn.commit()
