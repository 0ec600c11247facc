"""Concurrent uploads and deletes of the same content over real HTTP (both databases): no 5xx, and
the end state is consistent (every row's file exists; a file with no row is gone)."""

from __future__ import annotations

import json
import threading

import httpx

from tests.helpers import (
    MLP,
    create_key,
    row_counts,
    serve_in_thread,
    stored_files,
    write_checkpoint,
    write_dataset,
)


def test_concurrent_uploads_and_deletes_of_identical_content(service_settings, tmp_path):
    dataset = write_dataset(tmp_path / "d").read_bytes()
    checkpoint = write_checkpoint(tmp_path / "c").read_bytes()
    statuses: list[int] = []
    errors: list[BaseException] = []

    def client_loop(key: str, keep_last: bool) -> None:
        try:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
                for i in range(4):
                    d = client.post("/v1/datasets", files={"file": ("d", dataset)})
                    c = client.post("/v1/checkpoints", files={"file": ("c", checkpoint)}, data={"architecture": json.dumps(MLP)})
                    statuses.extend([d.status_code, c.status_code])
                    if keep_last and i == 3:
                        break
                    statuses.append(client.delete(f"/v1/datasets/{d.json()['id']}").status_code)
                    statuses.append(client.delete(f"/v1/checkpoints/{c.json()['id']}").status_code)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    keys = [create_key(service_settings, f"user{i}", owner=f"owner{i}") for i in range(4)]
    with serve_in_thread(service_settings) as url:
        threads = [threading.Thread(target=client_loop, args=(key, i == 0)) for i, key in enumerate(keys)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    assert not errors, errors
    assert sorted(set(statuses)) == [201, 204]
    # owner0 kept its last upload of each: exactly one row and one file per kind remain.
    assert row_counts(service_settings) == {"datasets": 1, "checkpoints": 1}
    assert len(stored_files(service_settings)) == 2
