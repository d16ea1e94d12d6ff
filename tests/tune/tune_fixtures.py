"""A tiny in-memory window source with outer folds, for the tuning tests."""
from __future__ import annotations

import numpy as np
import pandas as pd

from hms_core import contract
from hms_core.train.data import InMemorySource

N_PATIENTS, PER_PATIENT, N_FOLDS = 9, 4, 3
N_TIMES = contract.WINDOW_SAMPLES

CFG = {
    "training": {"steps": 0, "epochs": 1, "batch_size": 8, "lr": 1e-3, "progress": False,
                 "eval_batch_size": 32, "select_best": False, "two_stage": {"enabled": False},
                 "augment": {"time_shift_max_s": 0.0}},
    "models": {"resnet1d_gru": {"enabled": True, "montage": "chains", "stem_width": 4,
                                "widths": [4, 8], "strides": [8, 8], "gru_hidden": 4,
                                "input_downsample": 8}},
    "tuning": {"enabled": True, "inner_folds": 2, "seed": 0, "pruner": "none",
               "space": {"resnet1d_gru": {"training.lr": {"low": 1e-4, "high": 1e-2, "log": True},
                                          "dropout": {"low": 0.0, "high": 0.5}}}},
}


def tiny_source(seed: int = 0) -> tuple[InMemorySource, pd.DataFrame]:
    """``N_PATIENTS * PER_PATIENT`` windows of random chains; folds by patient (``patient % 3``)."""
    rng = np.random.default_rng(seed)
    n = N_PATIENTS * PER_PATIENT
    votes = np.stack([rng.multinomial(int(k), np.ones(6) / 6) for k in rng.integers(3, 16, n)])
    index = pd.DataFrame({"label_id": np.arange(n) + 1000, "eeg_id": np.arange(n) // 2,
                          "patient_id": np.arange(n) // PER_PATIENT})
    for j, col in enumerate(contract.VOTE_COLUMNS):
        index[col] = votes[:, j]
    chains = (rng.normal(size=(n, contract.N_CHAINS, N_TIMES)) * 30).astype(np.float16)
    folds = index[["label_id", "eeg_id", "patient_id"]].copy()
    folds["fold"] = (index["patient_id"] % N_FOLDS).astype(int)
    return InMemorySource(index, {"chains": chains}), folds


class RecordingSource:
    """A window source that records every ``label_id`` it is asked to read."""

    def __init__(self, source: InMemorySource):
        self.source = source
        self.index = source.index
        self.read_labels: set[int] = set()

    def __len__(self) -> int:
        return len(self.source)

    def read(self, rows, fields):
        self.read_labels.update(self.index["label_id"].to_numpy()[np.asarray(rows)].tolist())
        return self.source.read(rows, fields)
