"""Patient-grouped cross-validation folds."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from hms_core import atomic, contract
from hms_core.config import from_mapping
from hms_core.data.io import read_train_csv
from hms_core.errors import ConfigError, DataError


@dataclasses.dataclass
class FoldsConfig:
    """Config section ``folds``.

    Parameters
    ----------
    n_folds : int, default 5
        Number of patient-grouped cross-validation folds (>= 2).
    seed : int, default 42
        Seed of the fold assignment.
    """

    n_folds: int = 5
    seed: int = 42

    def validate(self, path: str = "folds") -> None:
        """Cross-validation needs at least 2 folds."""
        if int(self.n_folds) < 2:
            raise ConfigError(f"{path}.n_folds: must be >= 2, got {self.n_folds!r}")


def make_folds(train_df: pd.DataFrame, n_folds: int, seed: int) -> pd.DataFrame:
    """Assign every row to a fold so that no patient appears in two folds.

    StratifiedGroupKFold on ``patient_id``, stratified by the vote-majority class so each
    fold sees every class where possible.

    Parameters
    ----------
    train_df : pd.DataFrame
        ``train.csv`` rows (``label_id, eeg_id, patient_id`` and the vote columns).
    n_folds : int
    seed : int

    Returns
    -------
    pd.DataFrame
        ``label_id, eeg_id, patient_id, fold`` (int64), in ``train_df`` order.
    """
    n_patients = train_df["patient_id"].nunique()
    if n_patients < n_folds:
        raise ConfigError(f"folds.n_folds: {n_folds} folds need at least {n_folds} patients, "
                          f"the data has {n_patients}")
    majority = train_df[list(contract.VOTE_COLUMNS)].to_numpy().argmax(axis=1)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold = np.full(len(train_df), -1, dtype=np.int64)
    for k, (_, val_idx) in enumerate(splitter.split(np.zeros(len(train_df)), majority,
                                                    groups=train_df["patient_id"].to_numpy())):
        fold[val_idx] = k
    out = train_df[["label_id", "eeg_id", "patient_id"]].astype("int64").reset_index(drop=True)
    out["fold"] = fold
    return out


def write_folds(train_csv: str | os.PathLike, folds_out: str | os.PathLike,
                cfg: FoldsConfig | Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Read ``train.csv``, assign patient-grouped folds and write ``folds_out`` atomically.

    Parameters
    ----------
    train_csv : path
        The competition's ``train.csv``.
    folds_out : path
        ``data/folds.csv`` (``label_id, eeg_id, patient_id, fold``).
    cfg : FoldsConfig or mapping, optional
        The ``folds`` config section.
    """
    cfg = cfg if isinstance(cfg, FoldsConfig) else from_mapping(FoldsConfig, cfg, "folds")
    folds = make_folds(read_train_csv(train_csv), cfg.n_folds, cfg.seed)
    with atomic.atomic_path(folds_out) as tmp:
        folds.to_csv(tmp, index=False)
    return folds


def read_folds(folds_csv: str | os.PathLike, columns: Sequence[str] = ("label_id", "fold")
               ) -> pd.DataFrame:
    """Read ``data/folds.csv``; one DataError naming the file when it is missing, unreadable or
    lacks one of ``columns``."""
    path = Path(folds_csv)
    if not path.exists():
        raise DataError(path, "folds file not found")
    try:
        folds = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(path, f"cannot read the folds file: {exc}") from exc
    missing = sorted(set(columns) - set(folds.columns))
    if missing:
        raise DataError(path, f"missing column(s) {missing} (have {list(folds.columns)})")
    return folds


def inner_validation_mask(patient_ids: np.ndarray, frac: float, seed: int) -> np.ndarray:
    """Hold out whole patients, about ``frac`` of the windows, to pick the best epoch.

    Patients are taken in a seeded random order until their windows reach ``frac`` of
    all; at least one patient is held out and at least one kept.

    Parameters
    ----------
    patient_ids : ndarray (n,)
        ``patient_id`` of each training window.
    frac : float
        Target fraction of windows held out, in (0, 1).
    seed : int

    Returns
    -------
    ndarray of bool (n,)
        True for the held-out (inner validation) windows.
    """
    patient_ids = np.asarray(patient_ids)
    patients, counts = np.unique(patient_ids, return_counts=True)
    if len(patients) < 2:
        raise ConfigError(f"training.inner_val_frac: the inner validation split needs at least "
                          f"2 training patients, the fold has {len(patients)}; set "
                          "select_best: false to train on the last epoch instead")
    order = np.random.default_rng(seed).permutation(len(patients))
    taken = np.cumsum(counts[order]) <= frac * len(patient_ids)
    n_take = min(max(int(taken.sum()), 1), len(patients) - 1)
    return np.isin(patient_ids, patients[order[:n_take]])
