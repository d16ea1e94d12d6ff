"""Pretraining and the transfer study never resume a checkpoint made on other window contents."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from hms_core.foundation.pretrain import pretrain
from hms_core.foundation.transfer import transfer_study
from hms_core.store import COMPLETE_FILE

PRETRAIN = {"epochs": 1, "batch_size": 8, "progress": False, "device": "cpu", "holdout_folds": None,
            "model": {"dim": 16, "depth": 1, "heads": 2, "max_patches": 4}}
TRANSFER = {"epochs": 1, "probe_epochs": 2, "batch_size": 8, "progress": False, "device": "cpu",
            "label_fractions": [1.0], "repeats": 1, "min_patients": 1, "min_windows": 0, "val_folds": [0]}


def _copy(store, dst):
    shutil.copytree(store, dst)
    return dst


def _repreprocess_in_place(store):
    """Other window values under the same config and index (e.g. a filter fixed in code)."""
    import zarr

    for field in ("chains", "referential"):
        array = zarr.open_array(store / field, mode="r+")
        array[:] = array[:] * 0.5 + 1.0
    # a rebuilt store records its own files in its completion marker, as StoreWriter does
    marker = json.loads((store / COMPLETE_FILE).read_text())
    marker["files"] = {name: (store / name).stat().st_size for name in marker["files"]}
    (store / COMPLETE_FILE).write_text(json.dumps(marker))


def test_pretrain_restarts_on_rebuilt_store_contents(tiny_store, tmp_path):
    store = _copy(tiny_store.store, tmp_path / "batch_0000.zarr")
    first = pretrain([store], PRETRAIN, out_path=tmp_path / "a.pth", checkpoint_dir=tmp_path / "ckpt")
    same = pretrain([store], PRETRAIN, out_path=tmp_path / "b.pth", checkpoint_dir=tmp_path / "ckpt")
    assert first["resumed_from_step"] is None and same["resumed_from_step"] == first["global_step"]
    _repreprocess_in_place(store)
    changed = pretrain([store], PRETRAIN, out_path=tmp_path / "c.pth", checkpoint_dir=tmp_path / "ckpt")
    assert changed["resumed_from_step"] is None, "the encoder of the old windows was handed back"


@pytest.fixture(scope="module")
def encoder(tiny_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("run_key_encoder")
    pretrain([tiny_store.store], {**PRETRAIN, "holdout_folds": [0]}, out_path=out / "enc.pth",
             checkpoint_dir=out / "ckpt", folds_csv=tiny_store.folds_csv)
    return out / "enc.pth"


def test_transfer_study_restarts_on_rebuilt_store_contents(tiny_store, encoder, tmp_path):
    torch.set_num_threads(1)
    store = _copy(tiny_store.store, tmp_path / "batch_0000.zarr")

    def study(ckpt, name):
        result = transfer_study([store], tiny_store.folds_csv, encoder, TRANSFER,
                                out_json=tmp_path / f"{name}.json", checkpoint_dir=tmp_path / ckpt)
        return [(r["init"], r["mode"], r["val_kl"]) for r in result["runs"]]

    study("ckpt", "old")
    _repreprocess_in_place(store)
    again = study("ckpt", "again")
    fresh = study("ckpt_fresh", "fresh")
    assert again == fresh, "runs trained on the old windows were handed back"
