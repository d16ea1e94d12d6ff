"""The HMS data contract in one place: channels, chains, classes, columns and sizes.

Every other module imports these names instead of repeating literals. The facts they
encode are the public ones of the Kaggle competition's data description
(https://www.kaggle.com/competitions/hms-harmful-brain-activity-classification/data); the
out-of-fold columns and the ``<model>_fold<k>`` file names are this pipeline's own.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

SAMPLING_RATE_HZ = 200
WINDOW_S = 50
WINDOW_SAMPLES = WINDOW_S * SAMPLING_RATE_HZ  # 10,000 rows of a labelled EEG window
CENTER_S = 10  # the experts labelled the central 10 s of each window
CENTER_START_SAMPLE = (WINDOW_S - CENTER_S) // 2 * SAMPLING_RATE_HZ  # 4,000
CENTER_SAMPLES = CENTER_S * SAMPLING_RATE_HZ  # 2,000

EEG_CHANNELS = (
    "Fp1", "F3", "C3", "P3", "F7", "T3", "T5", "O1", "Fz", "Cz", "Pz",
    "Fp2", "F4", "C4", "P4", "F8", "T4", "T6", "O2",
)
EKG_CHANNEL = "EKG"
N_EEG_CHANNELS = len(EEG_CHANNELS)  # 19 referential channels (store field ``referential``)
RAW_CHANNELS = EEG_CHANNELS + (EKG_CHANNEL,)  # the 20 parquet columns, in file order
N_RAW_CHANNELS = len(RAW_CHANNELS)
CHANNEL_INDEX = {name: i for i, name in enumerate(RAW_CHANNELS)}

# Double-banana bipolar montage. Region order is the Kaggle spectrogram's column order.
CHAINS = {
    "LL": (("Fp1", "F7"), ("F7", "T3"), ("T3", "T5"), ("T5", "O1")),
    "RL": (("Fp2", "F8"), ("F8", "T4"), ("T4", "T6"), ("T6", "O2")),
    "LP": (("Fp1", "F3"), ("F3", "C3"), ("C3", "P3"), ("P3", "O1")),
    "RP": (("Fp2", "F4"), ("F4", "C4"), ("C4", "P4"), ("P4", "O2")),
    "C": (("Fz", "Cz"), ("Cz", "Pz")),
}
SPEC_REGIONS = ("LL", "RL", "LP", "RP")
BIPOLAR_PAIRS = tuple(pair for region in ("LL", "RL", "LP", "RP", "C") for pair in CHAINS[region])
BIPOLAR_NAMES = tuple(f"{a}-{b}" for a, b in BIPOLAR_PAIRS)  # 18 chains
N_CHAINS = len(BIPOLAR_PAIRS)
# Rows of BIPOLAR_PAIRS that make up each region (the Kaggle spectrogram averages these).
REGION_CHAIN_ROWS = {
    region: tuple(BIPOLAR_PAIRS.index(pair) for pair in CHAINS[region]) for region in CHAINS
}

_LEFT_RIGHT = {
    "Fp1": "Fp2", "F3": "F4", "C3": "C4", "P3": "P4", "F7": "F8", "T3": "T4", "T5": "T6", "O1": "O2",
}
_MIRROR = {**_LEFT_RIGHT, **{v: k for k, v in _LEFT_RIGHT.items()}}


def _mirror(name: str) -> str:
    return _MIRROR.get(name, name)


# Chain permutation that swaps the hemispheres (labels are unchanged by the swap).
CHAIN_HEMISPHERE_SWAP = tuple(
    BIPOLAR_PAIRS.index((_mirror(a), _mirror(b))) for a, b in BIPOLAR_PAIRS
)

# Referential-channel permutation that swaps the hemispheres: Fp1 <-> Fp2, F3 <-> F4, ...,
# O1 <-> O2; the midline (Fz, Cz, Pz) stays. Row i of the swapped window is channel
# REFERENTIAL_HEMISPHERE_SWAP[i] of the original.
REFERENTIAL_HEMISPHERE_SWAP = tuple(EEG_CHANNELS.index(_mirror(name)) for name in EEG_CHANNELS)

CLASSES = ("Seizure", "LPD", "GPD", "LRDA", "GRDA", "Other")
N_CLASSES = len(CLASSES)
VOTE_COLUMNS = tuple(f"{c.lower()}_vote" for c in CLASSES)
HIGH_VOTE_THRESHOLD = 10  # rows with at least this many votes resemble the test set

TRAIN_COLUMNS = (
    "eeg_id", "eeg_sub_id", "eeg_label_offset_seconds",
    "spectrogram_id", "spectrogram_sub_id", "spectrogram_label_offset_seconds",
    "label_id", "patient_id", "expert_consensus", *VOTE_COLUMNS,
)
TRAIN_DTYPES = {
    "eeg_id": "int64", "eeg_sub_id": "int64", "eeg_label_offset_seconds": "float64",
    "spectrogram_id": "int64", "spectrogram_sub_id": "int64",
    "spectrogram_label_offset_seconds": "float64", "label_id": "int64", "patient_id": "int64",
    "expert_consensus": "object", **{c: "int64" for c in VOTE_COLUMNS},
}
TEST_COLUMNS = ("spectrogram_id", "eeg_id", "patient_id")
SUBMISSION_COLUMNS = ("eeg_id", *VOTE_COLUMNS)

# Out-of-fold predictions (oof/<model>_fold<k>.parquet): natural-log probabilities of each
# class, for the window as is and hemisphere-swapped (test-time augmentation).
LOGP_COLUMNS = tuple(f"logp_{c.lower()}" for c in CLASSES)
LOGP_SWAP_COLUMNS = tuple(f"logp_swap_{c.lower()}" for c in CLASSES)
OOF_COLUMNS = ("label_id", "fold", *VOTE_COLUMNS, *LOGP_COLUMNS, *LOGP_SWAP_COLUMNS)

# Kaggle-provided spectrograms: one row every 2 s, 4 regions x 100 frequency bins.
SPEC_STEP_S = 2
SPEC_WINDOW_S = 600
SPEC_WINDOW_ROWS = SPEC_WINDOW_S // SPEC_STEP_S  # 300
SPEC_N_FREQS = 100
SPEC_FREQS_HZ = (np.arange(SPEC_N_FREQS) + 3) * (200 / 1024)  # bin centres 0.586 .. 19.92 Hz
SPEC_COLUMNS = tuple(f"{r}_{f:.2f}" for r in SPEC_REGIONS for f in SPEC_FREQS_HZ)
SPEC_TIME_COLUMN = "time"

TRAIN_EEG_DIR = "train_eegs"
TEST_EEG_DIR = "test_eegs"
TRAIN_SPEC_DIR = "train_spectrograms"
TEST_SPEC_DIR = "test_spectrograms"


def votes_to_targets(votes: np.ndarray) -> np.ndarray:
    """Turn vote counts ``(n_rows, 6)`` into vote distributions (rows sum to 1)."""
    votes = np.asarray(votes, dtype=np.float64)
    return votes / votes.sum(axis=1, keepdims=True)


def parse_fold_name(path: str | os.PathLike) -> tuple[str, int | None]:
    """Model and fold of a per-fold artifact named ``<model>_fold<k>``.

    ``models/final/resnet1d_gru_fold3.pth`` -> ``("resnet1d_gru", 3)``. A stem without a
    ``_fold<digits>`` suffix is returned whole, with fold None.
    """
    stem = Path(path).stem
    model, sep, fold = stem.rpartition("_fold")
    if sep and fold.isdigit():
        return model, int(fold)
    return stem, None


def group_by_model(paths: Iterable[str | os.PathLike]) -> dict[str, list]:
    """Per-fold artifact paths grouped by the model their file name names.

    Models appear in the order of their first path, and each model's paths keep their input
    order, so grouping the inputs of a rule gives the same lists as the config's model order.
    """
    groups: dict[str, list] = {}
    for path in paths:
        groups.setdefault(parse_fold_name(path)[0], []).append(path)
    return groups
