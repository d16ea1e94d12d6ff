"""The answer key of a synthetic data set: the latent class vectors and the KL noise floor."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hms_core.contract import CLASSES, VOTE_COLUMNS
from hms_core.errors import DataError

ANSWER_KEY_DIR = "answer_key"
LATENT_FILE = "latent.parquet"
TEST_LATENT_FILE = "test_latent.parquet"
LATENT_COLUMNS = tuple(f"p_{c.lower()}" for c in CLASSES)


def write_answer_key(data_dir: Path, latent: pd.DataFrame, test_latent: pd.DataFrame) -> None:
    """Write ``answer_key/`` into the data set folder ``data_dir``.

    Parameters
    ----------
    data_dir : Path
        The data set folder (``answer_key/`` must not exist yet).
    latent : pandas.DataFrame
        ``label_id`` and ``LATENT_COLUMNS``, in ``train.csv`` row order
        (``answer_key/latent.parquet``).
    test_latent : pandas.DataFrame
        ``eeg_id`` and ``LATENT_COLUMNS``, in ``test.csv`` row order
        (``answer_key/test_latent.parquet``).
    """
    (data_dir / ANSWER_KEY_DIR).mkdir()
    pq.write_table(pa.Table.from_pandas(latent, preserve_index=False),
                   data_dir / ANSWER_KEY_DIR / LATENT_FILE)
    pq.write_table(pa.Table.from_pandas(test_latent, preserve_index=False),
                   data_dir / ANSWER_KEY_DIR / TEST_LATENT_FILE)


def read_latent(key_path: str | os.PathLike, label_id: np.ndarray) -> np.ndarray:
    """The latent class probabilities of the rows ``label_id``, in that order.

    Parameters
    ----------
    key_path : path-like
        ``answer_key/latent.parquet`` of a synthetic data set.
    label_id : np.ndarray
        ``(n_rows,)`` label ids of ``train.csv`` rows.

    Returns
    -------
    np.ndarray
        ``(n_rows, 6)`` float64 probabilities (the columns of ``LATENT_COLUMNS``).

    Raises
    ------
    DataError
        The file is missing or lacks a column, or a label_id has no latent vector.
    """
    key_path = Path(key_path)
    if not key_path.is_file():
        raise DataError(key_path, "no answer key: only synthetic data sets have latent vectors")
    key = pd.read_parquet(key_path)
    missing = [c for c in ("label_id", *LATENT_COLUMNS) if c not in key.columns]
    if missing:
        raise DataError(key_path, f"answer key lacks column(s) {', '.join(missing)}")
    latent = key.set_index("label_id").reindex(np.asarray(label_id, dtype=np.int64))[list(LATENT_COLUMNS)]
    absent = latent.isna().any(axis=1).to_numpy()
    if absent.any():
        raise DataError(key_path, f"answer key lacks latent vectors for {int(absent.sum())} label_id(s), "
                                  f"e.g. {int(np.asarray(label_id)[absent][0])}")
    return latent.to_numpy(dtype=np.float64)


def best_achievable_kl(data_dir: str | os.PathLike, *, min_votes: int = 1) -> float:
    """Kaggle KL of the latent vectors against the vote distributions (the noise floor).

    No model can expect to beat it: the votes are multinomial draws from the latent
    vectors, and the latent vector minimises the expected KL.

    Parameters
    ----------
    data_dir : path-like
        A synthetic data set (with ``answer_key/latent.parquet``).
    min_votes : int
        Only rows with at least this many votes (10 for the high-vote figure).

    Returns
    -------
    float
        Mean over rows of ``sum y * log(y / p)``.
    """
    from hms_core.data.io import read_train_csv
    from hms_core.metrics import kaggle_kl

    data_dir = Path(data_dir)
    train = read_train_csv(data_dir / "train.csv")
    key_path = data_dir / ANSWER_KEY_DIR / LATENT_FILE
    if not key_path.is_file():
        raise DataError(key_path, "no answer key: only synthetic data sets have latent vectors")
    key = pd.read_parquet(key_path)
    merged = train.merge(key, on="label_id", how="left", validate="one_to_one")
    if merged[list(LATENT_COLUMNS)].isna().any().any():
        raise DataError(key_path, "answer key lacks latent vectors for some label_id of train.csv")
    votes = merged[list(VOTE_COLUMNS)].to_numpy(dtype=np.float64)
    keep = votes.sum(axis=1) >= min_votes
    if not keep.any():
        raise DataError(data_dir / "train.csv", f"no rows with at least {min_votes} votes")
    return kaggle_kl(votes[keep] / votes[keep].sum(axis=1, keepdims=True),
                     merged.loc[keep, list(LATENT_COLUMNS)].to_numpy(dtype=np.float64))
