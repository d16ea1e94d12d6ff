"""Damaged window stores: every kind of damage is a DataError naming store, field and window."""
import errno
import json

import numpy as np
import pytest

from hms_core.errors import DataError, DiskFullError
from hms_core.store import StoreWriter, WindowStore, verify_store
from tests.test_store import SHAPES, write_store


def shard_file(store, field, shard):
    """The file of shard ``shard`` of ``field`` (zarr v3 keys ``c/<i>/0/...``)."""
    return store / field / "c" / str(shard) / "/".join(["0"] * len(SHAPES[field]))


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "batch_0000.zarr"
    written, _ = write_store(path, 6, seed=7, shard=4)
    assert len(written["chains"]) >= 12
    return path, {name: a.astype(np.float16).astype(np.float32) for name, a in written.items()}


def read_every_window(source, field):
    """``{row: values or the DataError}`` for each window, read one at a time."""
    out = {}
    for row in range(len(source)):
        try:
            out[row] = source.read(np.array([row]), [field])[field][0]
        except DataError as err:
            out[row] = err
    return out


def test_arrays_carry_a_crc32c_checksum(store):
    path, _ = store
    codecs = json.loads((path / "chains" / "zarr.json").read_text())["codecs"]
    sharding = codecs[0]["configuration"]
    assert {"name": "crc32c"} in sharding["codecs"] and {"name": "crc32c"} in sharding["index_codecs"]
    assert verify_store(path) == []


def test_deleted_shard_is_refused_on_open_naming_field_and_windows(store):
    path, _ = store
    shard_file(path, "eeg_mel", 1).unlink()
    with pytest.raises(DataError, match=r"eeg_mel.*windows 4-7.*missing") as err:
        WindowStore([path])
    assert str(path) in str(err.value)
    assert any("eeg_mel" in p and "windows 4-7" in p for p in verify_store(path))


def test_shard_deleted_after_open_is_not_read_as_zeros(store):
    path, _ = store
    source = WindowStore([path])
    shard_file(path, "chains", 0).unlink()
    with pytest.raises(DataError, match=r"chains.*window 2.*missing"):
        source.read(np.array([2]), ["chains"])


def test_flipped_bytes_raise_naming_store_field_and_window(store):
    path, written = store
    target = shard_file(path, "chains", 1)
    data = bytearray(target.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    target.write_bytes(bytes(data))
    source = WindowStore([path])  # sizes are unchanged: only reading finds it
    result = read_every_window(source, "chains")
    damaged = [row for row, value in result.items() if isinstance(value, DataError)]
    assert len(damaged) == 1 and 4 <= damaged[0] < 8
    message = str(result[damaged[0]])
    assert str(path) in message and "chains" in message and f"window {damaged[0]}" in message
    assert "checksum" in message
    for row, value in result.items():  # every other window reads back exactly
        if row not in damaged:
            assert np.array_equal(value, written["chains"][row])
    problems = verify_store(path)
    assert len(problems) == 1 and f"window {damaged[0]}" in problems[0] and "chains" in problems[0]


def test_truncated_shard_is_refused_on_open_and_on_read(store):
    path, _ = store
    source = WindowStore([path])
    target = shard_file(path, "kaggle_spec", 1)
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    with pytest.raises(DataError, match=r"kaggle_spec.*windows 4-7.*bytes"):
        WindowStore([path])
    with pytest.raises(DataError, match=r"kaggle_spec.*window 5") as err:
        source.read(np.array([5]), ["kaggle_spec"])
    assert str(path) in str(err.value)


def test_empty_shard_file_is_refused_on_open(store):
    path, _ = store
    shard_file(path, "referential", 0).write_bytes(b"")
    with pytest.raises(DataError, match=r"referential.*windows 0-3.*empty"):
        WindowStore([path])


def test_store_without_completion_marker_is_incomplete(store):
    path, _ = store
    next(path.glob("*complete*")).unlink()
    with pytest.raises(DataError, match="incomplete store"):
        WindowStore([path])
    assert any("incomplete store" in p for p in verify_store(path))


def test_all_zero_window_is_stored_and_reads_back(tmp_path):
    path = tmp_path / "zeros.zarr"
    writer = StoreWriter(path, max_windows=3, shapes=SHAPES, windows_per_shard=1)
    import pandas as pd

    fields = {name: np.zeros((3, *shape), np.float32) for name, shape in SHAPES.items()}
    fields["chains"][1] = 5.0
    writer.append(fields, pd.DataFrame({"label_id": [1, 2, 3], "eeg_id": [9, 9, 9]}))
    writer.close()
    source = WindowStore([path])
    assert np.array_equal(source.read(np.arange(3), ["chains"])["chains"], fields["chains"])
    assert verify_store(path) == []


@pytest.mark.parametrize("fills_at", [3, 12])  # array metadata; shard files
def test_disk_full_names_the_store_and_the_space_needed_and_records_nothing(tmp_path, monkeypatch, fills_at):
    import os

    real_writev, calls = os.writev, []

    def writev_until_full(fd, buffers):
        calls.append(fd)
        if len(calls) > fills_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_writev(fd, buffers)

    monkeypatch.setattr(os, "writev", writev_until_full)
    with pytest.raises(DiskFullError, match=r"full\.zarr.*no space left.*needs about .* MB.* free") as err:
        write_store(tmp_path / "full.zarr", 6, seed=8)
    assert err.value.path.endswith("full.zarr") and err.value.needed_bytes > 0
    assert not list((tmp_path / "full.zarr").glob("*complete*"))
