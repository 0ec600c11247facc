"""Hostile checkpoint archives: each is refused with a 4xx naming the problem, and leaves nothing
stored (no row, no artifact or staging file), writes nothing outside the artifact directory, and runs
nothing (no inspector subprocess, no unpickling). Archives are built by hand so that each carries
exactly one fault next to an otherwise valid save_pretrained output."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import stat
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from api.checkpoints import service as checkpoint_service
from tests.helpers import assert_nothing_stored, upload_checkpoint, write_safetensors
from tests.service.hf_models import add_tar_member

CONFIG = {"model_type": "gpt2", "vocab_size": 64, "n_positions": 32, "n_embd": 16, "n_layer": 1, "n_head": 2}


@pytest.fixture
def valid_files(tmp_path) -> dict[str, bytes]:  # noqa: ANN001
    """config.json and a (small, not matching) model.safetensors: enough to reach the archive checks."""
    weights = write_safetensors(tmp_path / "w.safetensors", {"w": np.zeros((4, 4), np.float32)})
    return {"config.json": json.dumps(CONFIG).encode(), "model.safetensors": weights.read_bytes()}


@pytest.fixture(autouse=True)
def no_inspector(monkeypatch):
    """A hostile archive never gets as far as building its model."""

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the inspector ran for a hostile archive")

    monkeypatch.setattr(checkpoint_service, "_run_inspector", refuse)


class Evil:
    """Unpickling this creates a marker file: proof that nothing was unpickled if the file is absent."""

    marker = ""

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.marker, "w"))


def _zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _tar(path: Path, members: dict[str, bytes], *, gz: bool = False) -> Path:
    with tarfile.open(path, "w:gz" if gz else "w") as tf:
        for name, data in members.items():
            add_tar_member(tf, name, data)
    return path


def _refused(api, archive: Path, message: str, tmp_path: Path | None = None) -> None:  # noqa: ANN001
    r = upload_checkpoint(api, archive)
    assert 400 <= r.status_code < 500, r.text
    assert message in r.json()["detail"], r.json()["detail"]
    assert_nothing_stored(api.settings)


@pytest.mark.parametrize("name", ["../evil.safetensors", "model/../../evil.safetensors", "/etc/evil.safetensors",
                                  "..\\evil.safetensors", "C:/evil.safetensors"])
@pytest.mark.parametrize("packing", ["zip", "tar"])
def test_path_traversal_and_absolute_paths(api, tmp_path, valid_files, name, packing):  # noqa: ANN001
    members = {**valid_files, name: b"x"}
    archive = _zip(tmp_path / "a.zip", members) if packing == "zip" else _tar(tmp_path / "a.tar", members)
    _refused(api, archive, "absolute path" if name.startswith(("/", "C:")) else "outside the archive")
    assert not (tmp_path.parent / "evil.safetensors").exists() and not Path("/etc/evil.safetensors").exists()


@pytest.mark.parametrize(("kind", "message"), [(tarfile.SYMTYPE, "symlink"), (tarfile.LNKTYPE, "hard link")])
def test_links_in_a_tar(api, tmp_path, valid_files, kind, message):  # noqa: ANN001
    with tarfile.open(tmp_path / "a.tar", "w") as tf:
        add_tar_member(tf, "config.json", valid_files["config.json"])
        add_tar_member(tf, "model.safetensors", type=kind, linkname="/etc/passwd")
    _refused(api, tmp_path / "a.tar", message)


def test_a_symlink_in_a_zip(api, tmp_path, valid_files):  # noqa: ANN001
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr("config.json", valid_files["config.json"])
        link = zipfile.ZipInfo("model.safetensors")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    _refused(api, tmp_path / "a.zip", "symlink")


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_devices_and_fifos_in_a_tar(api, tmp_path, valid_files, kind):  # noqa: ANN001
    with tarfile.open(tmp_path / "a.tar", "w") as tf:
        for name, data in valid_files.items():
            add_tar_member(tf, name, data)
        add_tar_member(tf, "dev", type=kind)
    _refused(api, tmp_path / "a.tar", "device, fifo")


def test_a_zip_bomb_is_refused_from_its_headers(api, tmp_path, valid_files):  # noqa: ANN001
    """64 MiB of zeros deflate to ~64 KiB: the ratio is refused before a byte is inflated."""
    members = {**valid_files, "model-00001-of-00001.safetensors": bytes(64 * 1024 * 1024)}
    archive = _zip(tmp_path / "bomb.zip", members)
    assert archive.stat().st_size < 1024 * 1024
    _refused(api, archive, "zip bomb")


def test_a_gzip_bomb_is_refused(api, tmp_path, valid_files):  # noqa: ANN001
    archive = _tar(tmp_path / "bomb.tar.gz", {**valid_files, "padding.bin": bytes(64 * 1024 * 1024)}, gz=True)
    assert archive.stat().st_size < 1024 * 1024
    _refused(api, archive, "inflates more than")


@pytest.mark.parametrize("packing", ["zip", "tar", "tar.gz"])
def test_the_unpacked_size_cap(api, tmp_path, valid_files, packing):  # noqa: ANN001
    """The cap is checked from the headers (the sum of the members' declared sizes) before reading."""
    api.settings.archive_max_unpacked_bytes = 4096
    rng = np.random.default_rng(0)
    members = {**valid_files, "extra.safetensors": rng.bytes(8192)}  # random: no ratio alarm
    if packing == "zip":
        archive = _zip(tmp_path / "a.zip", members)
    else:
        archive = _tar(tmp_path / "a.tar", members, gz=packing == "tar.gz")
    _refused(api, archive, "more than the 4096 accepted")


def test_a_tar_member_that_holds_more_than_its_header_says(api, tmp_path, valid_files):  # noqa: ANN001
    """Headers can lie; the bytes actually read are counted too. A member whose data runs past its
    declared size is cut at the declared size by the tar format, so the excess shows up as a corrupt
    next header (refused) rather than as unbounded reading."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tf:
        for name, data in valid_files.items():
            add_tar_member(tf, name, data)
    raw = bytearray(buffer.getvalue())
    offset = raw.index(b"model.safetensors")
    raw[offset + 124: offset + 136] = b"%011o\x00" % 10  # declared size 10: the rest of the data becomes "headers"
    (tmp_path / "lie.tar").write_bytes(bytes(raw))
    r = upload_checkpoint(api, tmp_path / "lie.tar")
    assert r.status_code == 422, r.text
    assert_nothing_stored(api.settings)


def test_too_many_members(api, tmp_path, valid_files):  # noqa: ANN001
    api.settings.archive_max_members = 10
    members = {**valid_files, **{f"tokenizer/{i}.txt": b"t" for i in range(20)}}
    _refused(api, _zip(tmp_path / "a.zip", members), "more than the 10 accepted")
    _refused(api, _tar(tmp_path / "a.tar.gz", members, gz=True), "more than the 10 accepted")


@pytest.mark.parametrize("packing", ["zip", "tar"])
def test_duplicate_names(api, tmp_path, valid_files, packing):  # noqa: ANN001
    if packing == "zip":
        with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
            for name, data in valid_files.items():
                zf.writestr(name, data)
            zf.writestr("model.safetensors", valid_files["model.safetensors"])
        archive = tmp_path / "a.zip"
    else:
        with tarfile.open(tmp_path / "a.tar", "w") as tf:
            for name, data in valid_files.items():
                add_tar_member(tf, name, data)
            add_tar_member(tf, "./model.safetensors", valid_files["model.safetensors"])  # the same name, spelled differently
        archive = tmp_path / "a.tar"
    _refused(api, archive, "twice")


@pytest.mark.parametrize("packing", ["zip", "tar.gz"])
def test_pickle_weights_are_refused_unopened(api, tmp_path, valid_files, packing):  # noqa: ANN001
    Evil.marker = str(tmp_path / "unpickled")
    members = {"config.json": valid_files["config.json"], "pytorch_model.bin": pickle.dumps(Evil())}
    archive = _zip(tmp_path / "a.zip", members) if packing == "zip" else _tar(tmp_path / "a.tar.gz", members, gz=True)
    _refused(api, archive, "save_pretrained(dir, safe_serialization=True)")
    assert not Path(Evil.marker).exists()


def test_missing_config_and_missing_weights(api, tmp_path, valid_files):  # noqa: ANN001
    _refused(api, _zip(tmp_path / "a.zip", {"model.safetensors": valid_files["model.safetensors"]}), "no config.json")
    _refused(api, _tar(tmp_path / "b.tar", {"config.json": valid_files["config.json"]}), "no weights")


def test_an_index_naming_absent_shards(api, tmp_path, valid_files):  # noqa: ANN001
    index = {"metadata": {}, "weight_map": {"w": "model-00001-of-00002.safetensors",
                                            "v": "model-00002-of-00002.safetensors"}}
    members = {"config.json": valid_files["config.json"], "model.safetensors.index.json": json.dumps(index).encode(),
               "model-00001-of-00002.safetensors": valid_files["model.safetensors"]}
    _refused(api, _zip(tmp_path / "a.zip", members), "does not hold: model-00002-of-00002.safetensors")


def test_an_index_naming_a_shard_outside_the_folder(api, tmp_path, valid_files):  # noqa: ANN001
    index = {"weight_map": {"w": "../model.safetensors"}}
    members = {"config.json": valid_files["config.json"], "model.safetensors.index.json": json.dumps(index).encode()}
    _refused(api, _zip(tmp_path / "a.zip", members), "not plain .safetensors names")


def test_corrupt_archives(api, tmp_path, valid_files):  # noqa: ANN001
    whole = _tar(tmp_path / "a.tar.gz", valid_files, gz=True).read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(whole[: len(whole) // 2])
    _refused(api, tmp_path / "cut.tar.gz", "corrupt or truncated")
    (tmp_path / "plain.gz").write_bytes(gzip.compress(b"not a tar at all" * 100))
    r = upload_checkpoint(api, tmp_path / "plain.gz")
    assert r.status_code == 422
    assert_nothing_stored(api.settings)
