import pickle

import numpy as np
import pandas as pd
import pytest

from hms_core.errors import DataError
from hms_core.store import StoreWriter, WindowStore

SHAPES = {"chains": (18, 50), "referential": (19, 50), "eeg_spec": (4, 5, 6), "eeg_mel": (4, 3, 6),
          "kaggle_spec": (4, 10, 30)}


def write_store(path, n_recordings, seed, *, shard=4, **writer_options):
    rng = np.random.default_rng(seed)
    writer = StoreWriter(path, max_windows=n_recordings * 6, shapes=SHAPES, windows_per_shard=shard, **writer_options)
    written = {name: [] for name in SHAPES}
    labels = []
    for rec in range(n_recordings):
        k = int(rng.integers(1, 6))
        fields = {name: rng.standard_normal((k, *shape)).astype(np.float32) * 100 for name, shape in SHAPES.items()}
        ids = seed * 1000 + rec * 10 + np.arange(k)
        writer.append(fields, pd.DataFrame({"label_id": ids, "eeg_id": np.full(k, seed * 100 + rec)}))
        for name in SHAPES:
            written[name].append(fields[name])
        labels.extend(ids)
    n = writer.close({"note": "test"})
    assert n == len(labels)
    return {name: np.concatenate(v) for name, v in written.items()}, np.array(labels)


def test_random_access_across_two_batches(tmp_path):
    a, labels_a = write_store(tmp_path / "batch_0000.zarr", 5, seed=1)
    b, labels_b = write_store(tmp_path / "batch_0001.zarr", 4, seed=2, shard=1)
    store = WindowStore([tmp_path / "batch_0000.zarr", tmp_path / "batch_0001.zarr"])
    assert len(store) == len(labels_a) + len(labels_b)
    assert list(store.index["label_id"]) == list(labels_a) + list(labels_b)
    assert set(store.index["store"]) == {0, 1}
    rows = np.array([len(store) - 1, 0, len(labels_a), 3, 3, len(labels_a) - 1])
    out = store.read(rows, ["chains", "referential", "kaggle_spec"])
    both = {name: np.concatenate([a[name], b[name]]).astype(np.float16).astype(np.float32) for name in SHAPES}
    for name in ("chains", "referential", "kaggle_spec"):
        assert out[name].dtype == np.float32
        assert np.array_equal(out[name], both[name][rows])
    # the index names each window: the label at a row is the label written with its data
    assert list(store.index["label_id"].to_numpy()[rows]) == list(np.concatenate([labels_a, labels_b])[rows])


def test_store_survives_pickling_for_worker_processes(tmp_path):
    a, _ = write_store(tmp_path / "s.zarr", 3, seed=3)
    store = WindowStore([tmp_path / "s.zarr"])
    store.read(np.array([0]), ["eeg_mel"])  # opens arrays in this process
    clone = pickle.loads(pickle.dumps(store))
    assert np.array_equal(clone.read(np.array([1]), ["eeg_mel"])["eeg_mel"],
                          a["eeg_mel"][[1]].astype(np.float16).astype(np.float32))


def test_empty_store_and_bad_requests(tmp_path):
    writer = StoreWriter(tmp_path / "empty.zarr", max_windows=0, shapes=SHAPES)
    assert writer.close() == 0
    write_store(tmp_path / "s.zarr", 2, seed=4)
    store = WindowStore([tmp_path / "empty.zarr", tmp_path / "s.zarr"])
    assert (store.index["store"] == 1).all()
    with pytest.raises(KeyError, match="unknown store fields"):
        store.read(np.array([0]), ["raw"])
    with pytest.raises(IndexError):
        store.read(np.array([len(store)]), ["chains"])
    with pytest.raises(DataError, match="not a window store"):
        WindowStore([tmp_path / "missing.zarr"])


def test_version_1_store_reads_its_fields_and_names_the_missing_one(tmp_path):
    import json

    a, _ = write_store(tmp_path / "old.zarr", 2, seed=5)
    # what preprocessing wrote before the referential field: version 1, no such array
    import shutil

    shutil.rmtree(tmp_path / "old.zarr" / "referential")
    meta = json.loads((tmp_path / "old.zarr" / "zarr.json").read_text())
    meta["attributes"]["hms_store_version"] = 1
    del meta["attributes"]["shapes"]["referential"]
    (tmp_path / "old.zarr" / "zarr.json").write_text(json.dumps(meta))
    store = WindowStore([tmp_path / "old.zarr"])
    assert np.array_equal(store.read(np.array([0]), ["chains"])["chains"],
                          a["chains"][[0]].astype(np.float16).astype(np.float32))
    with pytest.raises(DataError, match="no field.*referential.*re-run preprocessing"):
        store.read(np.array([0]), ["referential"])


def test_writer_names_a_field_without_a_shape(tmp_path):
    shapes = {k: v for k, v in SHAPES.items() if k != "referential"}
    with pytest.raises(ValueError, match=r"old\.zarr: no window shape for field\(s\) referential"):
        StoreWriter(tmp_path / "old.zarr", max_windows=1, shapes=shapes)
