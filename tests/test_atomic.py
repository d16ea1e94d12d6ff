"""Atomic writes: durable (file and folder fsynced) and a full disk leaves the old file intact."""
import errno
import os

import pandas as pd
import pytest
import torch

from hms_core import atomic
from hms_core.errors import DiskFullError


def _fsync_recorder(monkeypatch):
    """Record the (device, inode) of every fsynced descriptor."""
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        st = os.fstat(fd)
        synced.append((st.st_dev, st.st_ino))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def _identity(path):
    st = os.stat(path)
    return st.st_dev, st.st_ino


@pytest.mark.parametrize("write", [
    lambda p: atomic.write_text(p, "hello\n"),
    lambda p: atomic.write_json(p, {"a": 1}),
    lambda p: atomic.torch_save({"w": torch.ones(3)}, p),
    lambda p: atomic.write_parquet(pd.DataFrame({"a": [1, 2]}), p),
], ids=["text", "json", "torch", "parquet"])
def test_writes_fsync_the_file_and_its_folder(tmp_path, monkeypatch, write):
    target = tmp_path / "out" / "file.bin"
    synced = _fsync_recorder(monkeypatch)
    write(target)
    assert _identity(target) in synced, "the file's data was not fsynced"
    assert _identity(target.parent) in synced, "the rename was not made durable (folder fsync)"


def test_directory_targets_are_fsynced_throughout(tmp_path, monkeypatch):
    target = tmp_path / "store.zarr"
    synced = _fsync_recorder(monkeypatch)
    with atomic.atomic_path(target) as tmp:
        (tmp / "sub").mkdir(parents=True)
        (tmp / "sub" / "chunk").write_bytes(b"x" * 100)
    for path in (target / "sub" / "chunk", target / "sub", target, tmp_path):
        assert _identity(path) in synced, f"{path} not fsynced"


def _disk_full_after(monkeypatch, n_bytes):
    """Make os.write fail with ENOSPC once ``n_bytes`` have been written."""
    real_write = os.write
    written = [0]

    def write(fd, data):
        if written[0] + len(data) > n_bytes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written[0] += len(data)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)


@pytest.mark.parametrize("kind", ["torch", "text", "parquet"])
def test_full_disk_keeps_the_old_file_and_names_the_problem(tmp_path, monkeypatch, kind):
    target = tmp_path / "model.bin"
    new = {"torch": lambda: atomic.torch_save({"w": torch.arange(20_000)}, target),
           "text": lambda: atomic.write_text(target, "y" * 200_000),
           "parquet": lambda: atomic.write_parquet(pd.DataFrame({"a": range(50_000)}), target)}[kind]
    atomic.write_text(target, "the good old content")
    with monkeypatch.context() as patch:
        _disk_full_after(patch, 1000)
        with pytest.raises(DiskFullError) as err:
            new()
    message = str(err.value)
    assert str(target) in message and "free" in message and "bytes" in message
    assert err.value.needed_bytes > 1000 and err.value.free_bytes >= 0
    assert target.read_text() == "the good old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"], "a temporary file was left"
    new()  # space freed: the same write now finishes
    assert target.stat().st_size > 1000


def test_full_disk_inside_a_directory_target(tmp_path):
    target = tmp_path / "store.zarr"

    with pytest.raises(DiskFullError, match="store.zarr"):
        with atomic.atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "chunk").write_bytes(b"x" * 5000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp / "chunk2"))
    assert not target.exists() and list(tmp_path.iterdir()) == []
