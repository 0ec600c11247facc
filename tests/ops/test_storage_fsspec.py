"""Artifacts behind an fsspec URL (issue 6: S3-compatible storage), through the real code paths.

fsspec's in-memory filesystem (``memory://``) stands in for S3: the store, the upload endpoints and
the job runner use the same fsspec calls (``exists``, ``put_file``, ``get_file``, ``rm``) as with
s3fs. Two cache directories play two machines: the API that received the uploads and a worker that
has never seen them. The local-disk store is covered by tests/service and tests/jobs.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from pathlib import Path

import fsspec
import pytest

from backend.settings import Settings
from backend.storage import ArtifactStore
from tests.helpers import MLP, api_client, create_key, migrate, running_app, write_checkpoint, write_dataset

CONFIG = {"num_chains": 1, "num_draws": 20, "num_burnin_steps": 5, "epsilon": 1e-3, "gamma": 100.0,
          "batch_size": 16, "seed": 3, "device": "cpu"}


def remote_settings(settings: Settings, tmp_path: Path, machine: str, url: str, **extra) -> Settings:  # noqa: ANN003
    return Settings(data_dir=settings.data_dir, database_url=settings.database_url, broker_url=None,
                    artifact_dir=url, artifact_cache_dir=tmp_path / f"cache-{machine}", **extra)


@pytest.fixture
def store_url() -> str:
    url = f"memory://lambdahat-test-{uuid.uuid4().hex[:12]}/artifacts"
    yield url
    fs = fsspec.filesystem("memory")
    root = url.removeprefix("memory://")
    if fs.exists(root):
        fs.rm(root, recursive=True)


@pytest.fixture
def database_url(sqlite_url):  # noqa: ANN001 - the store does not depend on the database (except the lock test)
    return sqlite_url


@pytest.fixture
def deployment(settings, tmp_path, store_url):  # noqa: ANN001, ANN201
    """An API (the "api" machine's cache) with a client, and the settings of a worker on another machine."""
    api_settings = remote_settings(settings, tmp_path, "api", store_url)
    migrate(api_settings)
    key = create_key(api_settings, "alice", owner="alice")
    with running_app(api_settings) as app:
        client = api_client(app, api_settings, key, "alice")
        client.worker_settings = remote_settings(settings, tmp_path, "worker", store_url)
        yield client


def remote_files(url: str) -> dict[str, bytes]:
    fs, root = fsspec.core.url_to_fs(url)
    if not fs.exists(root):
        return {}
    return {path.removeprefix(root.rstrip("/") + "/"): fs.cat_file(path) for path in fs.find(root)}


def upload_both(client, tmp_path: Path) -> tuple[dict, dict]:  # noqa: ANN001
    from tests.helpers import upload_checkpoint, upload_dataset

    checkpoint = upload_checkpoint(client, write_checkpoint(tmp_path / "model.safetensors", MLP), MLP)
    dataset = upload_dataset(client, write_dataset(tmp_path / "data.safetensors", n=48))
    assert checkpoint.status_code == 201, checkpoint.text
    assert dataset.status_code == 201, dataset.text
    return checkpoint.json(), dataset.json()


def submit(client, checkpoint: dict, dataset: dict) -> str:  # noqa: ANN001
    response = client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"], "dataset_id": dataset["id"],
                                             "loss": "mse", "config": CONFIG})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def test_uploads_go_to_the_store_and_a_worker_elsewhere_runs_the_job(deployment, tmp_path) -> None:  # noqa: ANN001
    import torch

    from worker.runner import run_job

    settings = deployment.settings
    checkpoint, dataset = upload_both(deployment, tmp_path)
    ck_bytes = (tmp_path / "model.safetensors").read_bytes()
    ds_bytes = (tmp_path / "data.safetensors").read_bytes()
    ck_key = f"checkpoints/{checkpoint['sha256'][:2]}/{checkpoint['sha256']}"
    ds_sha = hashlib.sha256(ds_bytes).hexdigest()
    ds_key = f"datasets/{ds_sha[:2]}/{ds_sha}"

    # The store holds exactly the two uploads, byte for byte, under their content-addressed keys.
    assert remote_files(str(settings.artifact_dir)) == {ck_key: ck_bytes, ds_key: ds_bytes}
    # Nothing went to a local artifact dir; the API machine keeps the validated files as its cache, no staging left.
    assert not (settings.data_dir / "artifacts").exists()
    api_cache = Path(settings.artifact_cache_dir)
    assert (api_cache / ck_key).read_bytes() == ck_bytes and (api_cache / ds_key).read_bytes() == ds_bytes
    assert list((api_cache / "tmp").iterdir()) == []

    # A worker on another machine (empty cache) downloads, verifies and runs.
    worker_settings = deployment.worker_settings
    worker_cache = Path(worker_settings.artifact_cache_dir)
    assert not worker_cache.exists()
    job_id = submit(deployment, checkpoint, dataset)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        outcome = run_job(job_id, settings=worker_settings, worker_name="remote-worker")
    finally:
        torch.set_num_threads(threads)
    assert outcome.status == "succeeded", outcome
    job = deployment.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["worker"] == "remote-worker"
    assert job["result"]["llc_mean"] is not None and job["draws_done"] == CONFIG["num_draws"]
    assert (worker_cache / ck_key).read_bytes() == ck_bytes and (worker_cache / ds_key).read_bytes() == ds_bytes
    assert list((worker_cache / "tmp").iterdir()) == []  # no partial downloads left behind


def test_same_content_is_stored_once_and_deleting_the_last_row_removes_it(deployment, tmp_path) -> None:  # noqa: ANN001
    from tests.helpers import upload_dataset

    path = write_dataset(tmp_path / "data.safetensors", n=32)
    first = upload_dataset(deployment, path, name="first").json()
    second = upload_dataset(deployment, path, name="second").json()
    url = str(deployment.settings.artifact_dir)
    assert first["id"] != second["id"] and len(remote_files(url)) == 1

    assert deployment.delete(f"/v1/datasets/{first['id']}").status_code == 204
    assert len(remote_files(url)) == 1  # still referenced by the second row
    assert deployment.delete(f"/v1/datasets/{second['id']}").status_code == 204
    assert remote_files(url) == {}
    assert not any(Path(deployment.settings.artifact_cache_dir).glob("datasets/*/*"))


def test_a_corrupt_or_missing_remote_artifact_fails_the_job_with_a_clear_error(deployment, tmp_path) -> None:  # noqa: ANN001
    from worker.runner import run_job

    checkpoint, dataset = upload_both(deployment, tmp_path)
    fs, root = fsspec.core.url_to_fs(str(deployment.settings.artifact_dir))
    ds_remote = next(p for p in fs.find(root) if "/datasets/" in p)
    fs.pipe_file(ds_remote, b"not the uploaded bytes")

    corrupt = submit(deployment, checkpoint, dataset)
    assert run_job(corrupt, settings=deployment.worker_settings).status == "failed"
    error = deployment.get(f"/v1/jobs/{corrupt}").json()["error"]
    assert error.startswith("fetching the dataset failed: OSError:") and "corrupt" in error, error
    assert str(deployment.worker_settings.artifact_cache_dir) not in error
    assert not any(Path(deployment.worker_settings.artifact_cache_dir).glob("datasets/*/*"))  # never cached

    fs.rm(ds_remote)
    missing = submit(deployment, checkpoint, dataset)
    assert run_job(missing, settings=deployment.worker_settings).status == "failed"
    error = deployment.get(f"/v1/jobs/{missing}").json()["error"]
    assert error.startswith("loading the dataset failed: FileNotFoundError:") and "object store" in error, error


def test_the_worker_cache_evicts_least_recently_used_artifacts(settings, tmp_path, store_url) -> None:  # noqa: ANN001
    uploader = ArtifactStore(remote_settings(settings, tmp_path, "api", store_url))
    keys = []
    for index in range(3):
        staged = uploader.stage(max_bytes=10_000)
        staged.write(bytes([index]) * 1000)
        staged.finish()
        key, placed = uploader.place(staged, "datasets")
        assert placed
        keys.append(key)

    worker = ArtifactStore(remote_settings(settings, tmp_path, "worker", store_url, artifact_cache_max_bytes=2500))
    first = worker.fetch(keys[0])
    time.sleep(0.02)
    second = worker.fetch(keys[1])
    time.sleep(0.02)
    assert worker.fetch(keys[0]) == first  # a cache hit refreshes its place in the LRU order
    time.sleep(0.02)
    third = worker.fetch(keys[2])  # 3000 bytes > 2500: the least recently used (keys[1]) goes
    assert first.exists() and third.exists() and not second.exists()
    assert third.read_bytes() == bytes([2]) * 1000
    assert worker.fetch(keys[1]).read_bytes() == bytes([1]) * 1000  # fetched again on demand


def test_bad_store_configuration_is_reported(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="artifact_storage_options must be a JSON object"):
        Settings(data_dir=tmp_path, artifact_dir="memory://x/y", artifact_storage_options="[1, 2]")
    with pytest.raises(RuntimeError, match="no usable fsspec backend for 'nosuchproto'"):
        ArtifactStore(Settings(data_dir=tmp_path, artifact_dir="nosuchproto://bucket/prefix"))


def test_local_store_fetch_is_the_stored_file_itself(tmp_path) -> None:  # noqa: ANN001
    store = ArtifactStore(Settings(data_dir=tmp_path))
    staged = store.stage(max_bytes=100)
    staged.write(b"abc")
    staged.finish()
    key, _ = store.place(staged, "datasets")
    assert store.fetch(key) == store.path(key) == Path(tmp_path) / "artifacts" / key
    with pytest.raises(FileNotFoundError):
        store.fetch("datasets/00/" + "0" * 64)


@pytest.mark.postgres
def test_remote_store_lock_holds_across_machines_on_postgresql(postgres_url, tmp_path, store_url) -> None:  # noqa: ANN001
    """Two API machines (separate cache dirs, so separate fcntl locks) exclude each other through PostgreSQL."""
    base = Settings(data_dir=tmp_path / "data", database_url=postgres_url)
    machine_a = ArtifactStore(remote_settings(base, tmp_path, "a", store_url))
    machine_b = ArtifactStore(remote_settings(base, tmp_path, "b", store_url))
    a_holds, release_a = threading.Event(), threading.Event()
    b_acquired_at: list[float] = []

    def hold_a() -> None:
        with machine_a.lock():
            a_holds.set()
            release_a.wait(10)

    def take_b() -> None:
        with machine_b.lock():
            b_acquired_at.append(time.monotonic())

    holder = threading.Thread(target=hold_a)
    holder.start()
    assert a_holds.wait(10)
    waiter = threading.Thread(target=take_b)
    waiter.start()
    time.sleep(0.5)
    assert b_acquired_at == []  # B waits while A holds the lock
    released_at = time.monotonic()
    release_a.set()
    holder.join(10)
    waiter.join(10)
    assert b_acquired_at and b_acquired_at[0] >= released_at
