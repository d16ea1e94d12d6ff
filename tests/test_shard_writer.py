"""The store writer writes what zarr writes: metadata, chunks, shards; both codecs; old stores still read."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from hms_core.errors import DataError
from hms_core.shard_reader import _windows_per_file, open_shard_reader
from hms_core.shard_writer import array_metadata, encode_windows, shard_buffers, write_file
from hms_core.store import COMPRESSORS, WindowStore, _blosc, _codecs, verify_store
from tests.test_store import SHAPES, write_store

FIXTURE = Path(__file__).parent / "fixtures" / "store_v3_zarr.zarr"


@pytest.mark.parametrize("compressor", COMPRESSORS)
@pytest.mark.parametrize("shard", [4, 1])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_array_metadata_is_what_zarr_writes(tmp_path, compressor, shard, dtype):
    shape = SHAPES["eeg_spec"]
    zarr.create_array(tmp_path / "a", shape=(7, *shape), dtype=dtype, chunks=(1, *shape),
                      shards=(shard, *shape) if shard > 1 else None, compressors=_codecs(dtype, 1, compressor),
                      fill_value=0, config={"write_empty_chunks": True})
    ours = array_metadata(7, shape, dtype, shard, _blosc(dtype, 1, compressor))
    assert json.loads((tmp_path / "a" / "zarr.json").read_text()) == ours
    assert _windows_per_file(ours) == shard


@pytest.mark.parametrize("shard", [4, 1])
def test_shard_bytes_decode_in_zarr(tmp_path, shard):
    """Windows encoded here, in a file zarr's metadata describes, read back through zarr."""
    shape, n = SHAPES["chains"], 3
    blosc = _blosc("float16", 1, "lz4")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "zarr.json").write_text(json.dumps(array_metadata(n, shape, "float16", shard, blosc)))
    windows = (np.random.default_rng(0).standard_normal((n, *shape)) * 50).astype(np.float16)
    chunks = encode_windows(windows, blosc)
    for start in range(0, n, shard):
        write_file(tmp_path / "a" / "c" / str(start // shard) / "0" / "0",
                   shard_buffers(chunks[start:start + shard], shard))
    assert np.array_equal(zarr.open_array(tmp_path / "a", mode="r")[:], windows)


@pytest.mark.parametrize("compressor", COMPRESSORS)
def test_each_codec_reads_back_equal_verifies_and_detects_damage(tmp_path, compressor):
    path = tmp_path / "batch_0000.zarr"
    written, _ = write_store(path, 6, seed=3, shard=4, compressor=compressor, compression_level=5)
    meta = json.loads((path / "chains" / "zarr.json").read_text())
    assert meta["codecs"][0]["configuration"]["codecs"][1]["configuration"]["cname"] == compressor
    assert verify_store(path) == []
    store = WindowStore([path])
    for field in SHAPES:
        expected = written[field].astype(np.float16).astype(np.float32)
        assert np.array_equal(store.read(np.arange(len(store)), [field])[field], expected)
        assert np.array_equal(zarr.open_array(path / field, mode="r")[:].astype(np.float32), expected)
    shard_file = path / "chains" / "c" / "1" / "0" / "0"
    data = bytearray(shard_file.read_bytes())
    data[40] ^= 0xFF  # inside window 4's frame
    shard_file.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"chains, window 4: CRC32C checksum mismatch"):
        WindowStore([path]).read(np.array([4]), ["chains"])
    problems = verify_store(path)
    assert len(problems) == 1 and "chains, window 4" in problems[0]


def test_store_written_by_zarr_before_this_writer_still_reads_and_verifies(tmp_path):
    """The fixture: ``write_store(path, 3, seed=12, shard=4)`` as of commit 06b2858 (zarr wrote
    the chunks: zstd level 3, blosc's automatic block size)."""
    path = tmp_path / FIXTURE.name
    shutil.copytree(FIXTURE, path)
    assert json.loads((path / "chains" / "zarr.json").read_text())["codecs"][0]["configuration"]["codecs"][1][
        "configuration"]["blocksize"] == 0
    assert verify_store(path) == []
    rewritten, labels = write_store(tmp_path / "again.zarr", 3, seed=12, shard=4)  # the same windows
    store = WindowStore([path])
    assert list(store.index["label_id"]) == list(labels)
    assert open_shard_reader(path / "kaggle_spec") is not None
    for field in SHAPES:
        assert np.array_equal(store.read(np.arange(len(store)), [field])[field],
                              rewritten[field].astype(np.float16).astype(np.float32))


def test_bad_writer_options_are_refused(tmp_path):
    with pytest.raises(ValueError, match="compressor 'gzip': allowed values are zstd, lz4"):
        write_store(tmp_path / "s.zarr", 1, seed=0, compressor="gzip")
    with pytest.raises(ValueError, match="compression_level 10"):
        write_store(tmp_path / "s.zarr", 1, seed=0, compression_level=10)
