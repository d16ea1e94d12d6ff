"""Read the files of the Kaggle layout: train.csv, test.csv, EEG and spectrogram parquets.

Every reader checks what it reads against :mod:`hms_core.contract` and raises one
:class:`~hms_core.errors.DataError` naming the file (and the recording) at fault.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hms_core.contract import (
    CLASSES,
    RAW_CHANNELS,
    SAMPLING_RATE_HZ,
    SPEC_COLUMNS,
    SPEC_STEP_S,
    SPEC_TIME_COLUMN,
    SPEC_WINDOW_ROWS,
    TEST_COLUMNS,
    TEST_EEG_DIR,
    TEST_SPEC_DIR,
    TRAIN_COLUMNS,
    TRAIN_DTYPES,
    TRAIN_EEG_DIR,
    TRAIN_SPEC_DIR,
    VOTE_COLUMNS,
    WINDOW_SAMPLES,
)
from hms_core.errors import DataError

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")
_EEG_DIRS = {"train": TRAIN_EEG_DIR, "test": TEST_EEG_DIR}
_SPEC_DIRS = {"train": TRAIN_SPEC_DIR, "test": TEST_SPEC_DIR}
TEST_DTYPES = {name: "int64" for name in TEST_COLUMNS}


def eeg_path(data_dir: str | os.PathLike, eeg_id: int, split: str = "train") -> Path:
    """Path of the EEG parquet of ``eeg_id`` in the Kaggle layout under ``data_dir``."""
    return Path(data_dir) / _split_dir(_EEG_DIRS, split) / f"{int(eeg_id)}.parquet"


def spectrogram_path(data_dir: str | os.PathLike, spectrogram_id: int, split: str = "train") -> Path:
    """Path of the spectrogram parquet of ``spectrogram_id`` under ``data_dir``."""
    return Path(data_dir) / _split_dir(_SPEC_DIRS, split) / f"{int(spectrogram_id)}.parquet"


def _split_dir(dirs: dict[str, str], split: str) -> str:
    if split not in dirs:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return dirs[split]


# ---------------------------------------------------------------------------------- CSV files
def read_train_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``train.csv`` and check it against the contract.

    Parameters
    ----------
    path : path-like
        The ``train.csv`` file.

    Returns
    -------
    pandas.DataFrame
        The 15 contract columns in order: ids and votes int64, offsets (s) float64,
        ``expert_consensus`` a string column with values in ``CLASSES``. Columns are found
        by name; other columns (a user's own fold or note column) are left out, with a warning.

    Raises
    ------
    DataError
        Missing file, a missing column, a wrong dtype, a NaN, an unknown class, negative
        votes, a row without votes, or duplicated ``label_id``.
    """
    df = _contract_columns(path, _read_csv(path), TRAIN_COLUMNS)
    for name in ("eeg_label_offset_seconds", "spectrogram_label_offset_seconds"):
        if pd.api.types.is_integer_dtype(df[name].dtype):  # "0" instead of "0.0" is harmless
            df[name] = df[name].astype("float64")
    for name, dtype in TRAIN_DTYPES.items():
        if name == "expert_consensus":
            continue
        _check_dtype(path, df, name, dtype)
    consensus = df["expert_consensus"]
    if not (pd.api.types.is_string_dtype(consensus.dtype) or consensus.dtype == object):
        raise DataError(path, f"column expert_consensus has dtype {consensus.dtype}, expected text")
    unknown = sorted(set(consensus.dropna().astype(str)) - set(CLASSES))
    if consensus.isna().any() or unknown:
        raise DataError(path, f"expert_consensus has values {unknown or ['<empty>']} "
                              f"outside {list(CLASSES)}")
    for name in ("eeg_label_offset_seconds", "spectrogram_label_offset_seconds"):
        bad = ~np.isfinite(df[name].to_numpy()) | (df[name].to_numpy() < 0)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(path, f"column {name} has a negative or non-finite value "
                                  f"{df[name].iloc[row]!r} (row {row})",
                            eeg_id=int(df["eeg_id"].iloc[row]))
    votes = df[list(VOTE_COLUMNS)].to_numpy()
    if (votes < 0).any() or (votes.sum(axis=1) == 0).any():
        row = int(np.flatnonzero((votes < 0).any(axis=1) | (votes.sum(axis=1) == 0))[0])
        raise DataError(path, f"row {row} has negative votes or no votes at all",
                        eeg_id=int(df["eeg_id"].iloc[row]))
    if df["label_id"].duplicated().any():
        dup = int(df.loc[df["label_id"].duplicated(), "label_id"].iloc[0])
        raise DataError(path, f"label_id {dup} occurs more than once")
    return df


def read_test_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``test.csv`` (``spectrogram_id, eeg_id, patient_id``, all int64) and check it.

    Columns are found by name and returned in that order; other columns are left out, with
    a warning.

    Raises
    ------
    DataError
        Missing file, a missing column, a non-integer column, or a repeated ``eeg_id``.
    """
    df = _contract_columns(path, _read_csv(path), TEST_COLUMNS)
    for name, dtype in TEST_DTYPES.items():
        _check_dtype(path, df, name, dtype)
    if df["eeg_id"].duplicated().any():
        dup = int(df.loc[df["eeg_id"].duplicated(), "eeg_id"].iloc[0])
        raise DataError(path, f"eeg_id {dup} occurs more than once", eeg_id=dup)
    return df


def _read_csv(path: str | os.PathLike) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(path, f"not a readable CSV file ({err})") from None


def _contract_columns(path, df: pd.DataFrame, expected: tuple[str, ...]) -> pd.DataFrame:
    """``df``'s contract columns in contract order; other columns (a user's own fold or note
    column) are dropped with a warning. A missing column is a DataError."""
    missing = [c for c in expected if c not in df.columns]
    if missing:
        raise DataError(path, f"columns differ from the contract: missing {missing} (expected {list(expected)})")
    extra = [c for c in df.columns if c not in expected]
    if extra:
        logger.warning("%s: ignoring column(s) %s that are not in the contract", path, extra)
    return df if tuple(df.columns) == expected else df[list(expected)].copy()


def _check_dtype(path, df: pd.DataFrame, name: str, dtype: str) -> None:
    found = str(df[name].dtype)
    if found != dtype:
        hint = " (empty cells or non-integer values?)" if dtype == "int64" else ""
        raise DataError(path, f"column {name} has dtype {found}, expected {dtype}{hint}")


# ------------------------------------------------------------------------------ parquet files
def read_eeg(path: str | os.PathLike, eeg_id: int | None = None) -> np.ndarray:
    """Read one EEG parquet.

    Parameters
    ----------
    path : path-like
        The ``<eeg_id>.parquet`` file (200 Hz, 20 float columns).
    eeg_id : int, optional
        Named in errors.

    Returns
    -------
    numpy.ndarray
        float32 ``(n_samples, 20)`` in ``RAW_CHANNELS`` order, microvolts (uV); may
        contain NaN rows, as the real files do. Non-finite samples (+-inf, and float64
        values beyond the float32 range) are returned as NaN: no EEG, artifact included,
        reaches 3.4e38 uV, so they are recording faults and are cleaned like the NaN gaps
        the contract allows (short runs interpolated, long ones zeroed, counted in
        ``nan_fraction``). A warning names the file and the count.

    Raises
    ------
    DataError
        Missing or unreadable file, a missing channel, or a channel that is not numeric.
    """
    table = _read_table(path, RAW_CHANNELS, eeg_id)
    return _columns_to_array(table, RAW_CHANNELS, path, eeg_id)


def read_spectrogram(path: str | os.PathLike,
                     spectrogram_id: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read one Kaggle spectrogram parquet.

    Parameters
    ----------
    path : path-like
        The ``<spectrogram_id>.parquet`` file.
    spectrogram_id : int, optional
        Named in errors.

    Returns
    -------
    time_s : numpy.ndarray
        float64 ``(n_rows,)`` row times in seconds (1, 3, 5, ...).
    power : numpy.ndarray
        float32 ``(n_rows, 400)`` power in ``SPEC_COLUMNS`` order (uV^2/Hz); may contain NaN.
        Non-finite values (+-inf, float64 beyond float32) are returned as NaN, as in :func:`read_eeg`.

    Raises
    ------
    DataError
        Missing or unreadable file, a missing column, or a column that is not numeric.
    """
    table = _read_table(path, (SPEC_TIME_COLUMN, *SPEC_COLUMNS), None,
                        what=f"spectrogram {spectrogram_id}" if spectrogram_id is not None else None)
    _check_numeric(table, (SPEC_TIME_COLUMN,), path, None)
    time_s = table.column(SPEC_TIME_COLUMN).to_numpy(zero_copy_only=False).astype(np.float64)
    return time_s, _columns_to_array(table, SPEC_COLUMNS, path, None)


def _read_table(path, columns: tuple[str, ...], eeg_id: int | None, what: str | None = None) -> pa.Table:
    path = Path(path)
    prefix = f"{what}: " if what else ""
    if not path.is_file():
        raise DataError(path, f"{prefix}file not found", eeg_id=eeg_id)
    try:
        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
        missing = [c for c in columns if c not in names]
        if missing:
            raise DataError(path, f"{prefix}missing columns {missing[:5]}"
                                  f"{' ...' if len(missing) > 5 else ''}", eeg_id=eeg_id)
        return parquet.read(columns=list(columns), use_threads=False)  # jobs run in parallel themselves
    except (pa.ArrowException, OSError) as err:
        raise DataError(path, f"{prefix}not a readable parquet file ({err})", eeg_id=eeg_id) from None


def _columns_to_array(table: pa.Table, columns: tuple[str, ...], path, eeg_id: int | None) -> np.ndarray:
    """float32 ``(n_rows, len(columns))``; non-finite values (after the cast) become NaN."""
    _check_numeric(table, columns, path, eeg_id)
    out = np.empty((table.num_rows, len(columns)), dtype=np.float32)
    with np.errstate(over="ignore"):  # float64 beyond float32 casts to inf, handled below
        for j, name in enumerate(columns):
            out[:, j] = table.column(name).to_numpy(zero_copy_only=False)
    infinite = np.isinf(out)
    if infinite.any():
        bad_columns = [columns[j] for j in np.flatnonzero(infinite.any(axis=0))]
        logger.warning("%s: %d infinite or beyond-float32 values in %s read as missing (NaN)",
                       path, int(infinite.sum()), bad_columns[:5] + (["..."] if len(bad_columns) > 5 else []))
        out[infinite] = np.nan
    return out


def _check_numeric(table: pa.Table, columns: tuple[str, ...], path, eeg_id: int | None) -> None:
    for name in columns:
        kind = table.schema.field(name).type
        if not (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
            shown = "text" if pa.types.is_string(kind) or pa.types.is_large_string(kind) else str(kind)
            raise DataError(path, f"column {name} holds {shown} values, expected numbers", eeg_id=eeg_id)


# ------------------------------------------------------------------------------ window helpers
def eeg_window_slice(offset_s: float) -> slice:
    """Rows ``offset*200 : (offset+50)*200`` of the labelled EEG window at ``offset_s`` (s)."""
    start = int(round(float(offset_s) * SAMPLING_RATE_HZ))
    return slice(start, start + WINDOW_SAMPLES)


def spectrogram_first_row(offset_s: float) -> int:
    """Index of the first spectrogram row (time 1, 3, 5, ... s) at or after ``offset_s`` (s).

    The labelled window is the ``SPEC_WINDOW_ROWS`` (300) rows from there on.
    """
    return max(0, math.ceil((float(offset_s) - SPEC_STEP_S / 2) / SPEC_STEP_S))


def spectrogram_rows_needed(offset_s: float) -> int:
    """How many rows a spectrogram needs to hold the 600 s window at ``offset_s`` (s)."""
    return spectrogram_first_row(offset_s) + SPEC_WINDOW_ROWS


def eeg_samples_needed(offset_s: float) -> int:
    """How many 200 Hz rows an EEG file needs to hold the 50 s window at ``offset_s`` (s)."""
    return eeg_window_slice(offset_s).stop
