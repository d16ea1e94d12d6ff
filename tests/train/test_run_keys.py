"""train_fold's run key covers the windows' contents: rebuilt stores never get an old model."""
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hms_core.hashing import directory_fingerprint
from hms_core.store import StoreWriter
from hms_core.train.fold import train_fold

sys.path.insert(0, str(Path(__file__).parent))
from test_fold import CFG, SHAPES, _write_store  # noqa: E402

torch.set_num_threads(1)
QUICK = {**CFG, "training": {**CFG["training"], "two_stage": {"enabled": False}}}


def rebuild_store(path, index, *, seed, attributes):
    """Write the store at ``path`` again: the same windows and index, other values."""
    shutil.rmtree(path)
    rng = np.random.default_rng(seed)
    writer = StoreWriter(path, max_windows=len(index), shapes=SHAPES, windows_per_shard=4)
    writer.append({k: (rng.normal(size=(len(index), *s)) * 30).astype(np.float32)
                   for k, s in SHAPES.items()}, index)
    writer.close(attributes)


def _train(store, folds_csv, out, ckpt):
    train_fold([store], folds_csv, "resnet1d_gru", 0, QUICK, weights_out=out / "w.pth",
               oof_out=out / "oof.parquet", checkpoint_dir=ckpt)
    return torch.load(out / "w.pth", weights_only=True)["state_dict"]


@pytest.mark.parametrize("change", ["preprocess_config", "contents_only"])
def test_rebuilt_store_is_never_answered_by_the_old_checkpoint(tmp_path, change):
    store = tmp_path / "batch_0000.zarr"
    index, folds = _write_store(store)
    folds.to_csv(tmp_path / "folds.csv", index=False)
    rebuild_store(store, index, seed=1, attributes={"preprocess_config": {"bandpass_hz": [0.5, 40]}})
    (tmp_path / "a").mkdir()
    _train(store, tmp_path / "folds.csv", tmp_path / "a", tmp_path / "ckpt")
    # Re-preprocessing: another filter setting, or the same setting with other numbers
    # (a filter fixed in code, other raw data). Same windows, same index.
    new_config = {"bandpass_hz": [0.5, 20]} if change == "preprocess_config" else {"bandpass_hz": [0.5, 40]}
    rebuild_store(store, index, seed=2, attributes={"preprocess_config": new_config})
    (tmp_path / "b").mkdir()
    again = _train(store, tmp_path / "folds.csv", tmp_path / "b", tmp_path / "ckpt")
    (tmp_path / "fresh").mkdir()
    fresh = _train(store, tmp_path / "folds.csv", tmp_path / "fresh", tmp_path / "ckpt_fresh")
    assert all(torch.equal(again[k], fresh[k]) for k in fresh), "the old model was handed back"


def test_directory_fingerprint_sees_contents_not_timestamps(tmp_path):
    store = tmp_path / "s.zarr"
    index, _ = _write_store(store)
    first = directory_fingerprint(store)
    (store / ".snakemake_timestamp").write_text("")
    assert directory_fingerprint(store) == first
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    assert directory_fingerprint(copy) == first  # relocatable: no absolute path, no mtime
    rebuild_store(store, index, seed=5, attributes={})
    assert directory_fingerprint(store) != first


def test_store_fingerprint_is_computed_once_per_opened_store(tmp_path, monkeypatch):
    from hms_core.store import WindowStore
    from hms_core.train import fingerprint
    from hms_core.train.data import RowSubset

    _write_store(tmp_path / "s.zarr")
    calls = []
    monkeypatch.setattr(fingerprint, "directory_fingerprint",
                        lambda p: calls.append(p) or directory_fingerprint(p))
    opened = WindowStore([tmp_path / "s.zarr"])
    a = fingerprint.source_fingerprint(RowSubset(opened, np.arange(10)))
    b = fingerprint.source_fingerprint(RowSubset(opened, np.arange(12)))
    assert len(calls) == 1 and a["of"] == b["of"] and a["rows_sha256"] != b["rows_sha256"]
    fingerprint.source_fingerprint(WindowStore([tmp_path / "s.zarr"]))  # opened again: read again
    assert len(calls) == 2
