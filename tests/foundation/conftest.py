"""Fixtures of the foundation tests: one torch thread and a tiny preprocessed store."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory, tiny_dataset):
    """The shared tiny data set preprocessed (ICA off, for speed) into one store, plus folds.

    Returns a namespace with ``store`` (the store path), ``folds_csv`` (3 patient-grouped
    folds) and ``n_windows``.
    """
    from hms_core.data.io import read_train_csv
    from hms_core.preprocess import preprocess_batch
    from hms_core.data.folds import make_folds

    out = tmp_path_factory.mktemp("foundation_store")
    train = read_train_csv(tiny_dataset / "train.csv")
    store = out / "batch_0000.zarr"
    info = preprocess_batch(tiny_dataset, train, sorted(train["eeg_id"].unique()), store,
                            {"ica": {"enabled": False}})
    folds_csv = out / "folds.csv"
    make_folds(train, n_folds=3, seed=0).to_csv(folds_csv, index=False)
    return SimpleNamespace(store=store, folds_csv=folds_csv, n_windows=info["n_windows"])
