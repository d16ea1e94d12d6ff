"""The direct window reader decodes exactly what zarr decodes, and leaves other layouts to zarr."""
import numpy as np
import pandas as pd
import pytest
import zarr
import zarr.codecs

from hms_core.errors import DataError
from hms_core.shard_reader import ShardDamage, open_shard_reader
from hms_core.store import StoreWriter, WindowStore, _codecs
from tests.test_store import SHAPES, write_store


@pytest.mark.parametrize("shard", [4, 1])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_every_window_decodes_as_zarr_decodes_it(tmp_path, shard, dtype):
    path = tmp_path / "s.zarr"
    writer = StoreWriter(path, max_windows=7, shapes=SHAPES, dtype=dtype, windows_per_shard=shard)
    rng = np.random.default_rng(0)
    writer.append({name: rng.standard_normal((7, *s)).astype(np.float32) * 300 for name, s in SHAPES.items()},
                  pd.DataFrame({"label_id": np.arange(7), "eeg_id": np.zeros(7, int)}))
    writer.close()  # 7 windows: the last shard of 4 is partly filled
    for field in SHAPES:
        reader = open_shard_reader(path / field)
        assert reader is not None and reader.windows_per_shard == shard and reader.dtype == np.dtype(dtype)
        array = zarr.open_array(path / field, mode="r")
        for row in range(array.shape[0]):
            assert np.array_equal(reader.read(row), array[row])
            into = np.full(SHAPES[field], np.nan, np.float32)
            reader.read(row, into)
            assert np.array_equal(into, array[row].astype(np.float32))


def test_chunk_never_written_reads_as_zarrs_fill_value(tmp_path):
    array = zarr.create_array(tmp_path / "a", shape=(6, 3, 4), chunks=(1, 3, 4), shards=(3, 3, 4),
                              dtype="float16", compressors=_codecs("float16", 1), fill_value=0,
                              config={"write_empty_chunks": False})
    array[1] = 7.0
    array[3] = 2.0
    array[4] = np.zeros((3, 4))  # not written: an empty index entry in an existing shard
    reader = open_shard_reader(tmp_path / "a")
    for row in range(6):
        assert np.array_equal(reader.read(row), array[row])
    assert reader.read(1).min() == 7.0 and not reader.read(4).any()


def test_other_layouts_are_left_to_zarr(tmp_path):
    plain = zarr.create_array(tmp_path / "no_checksum", shape=(2, 3), chunks=(1, 3), dtype="float16",
                              compressors=zarr.codecs.BloscCodec(cname="zstd"))
    plain[:] = 1.0
    assert open_shard_reader(tmp_path / "no_checksum") is None
    two = zarr.create_array(tmp_path / "two_per_chunk", shape=(4, 3), chunks=(2, 3), dtype="float16",
                            compressors=_codecs("float16", 1))
    two[:] = 1.0
    assert open_shard_reader(tmp_path / "two_per_chunk") is None


def test_changed_shard_index_is_a_checksum_error(tmp_path):
    path = tmp_path / "batch_0000.zarr"
    write_store(path, 3, seed=5, shard=4)
    target = path / "eeg_spec" / "c" / "0" / "0" / "0" / "0"
    data = bytearray(target.read_bytes())
    data[-10] ^= 0xFF  # inside the index, not its checksum
    target.write_bytes(bytes(data))
    with pytest.raises(ShardDamage, match="index.*checksum"):
        open_shard_reader(path / "eeg_spec").read(0)
    with pytest.raises(DataError, match=r"eeg_spec, window 1: CRC32C checksum mismatch"):
        WindowStore([path]).read(np.array([1]), ["eeg_spec"])


def test_store_read_with_repeats_and_any_order_matches_one_window_at_a_time(tmp_path):
    written, _ = write_store(tmp_path / "batch_0000.zarr", 4, seed=9, shard=4)
    store = WindowStore([tmp_path / "batch_0000.zarr"])
    rows = np.array([5, 0, 5, 2, 0, len(store) - 1, 5])
    got = store.read(rows, ["chains", "kaggle_spec"])
    for field in ("chains", "kaggle_spec"):
        assert np.array_equal(got[field], written[field].astype(np.float16).astype(np.float32)[rows])
