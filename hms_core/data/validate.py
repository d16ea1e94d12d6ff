"""Check a data folder in the Kaggle layout and write its sha256 manifest and a JSON report.

The CSV files must be right (a bad ``train.csv`` or ``test.csv`` always raises). Each
referenced parquet is checked from its footer only (no full read unless ``deep``):
readable, exactly the contract's columns in order, float channels, and long enough
for every labelled window that points into it.
"""
from __future__ import annotations

import logging
import os
import time
import typing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hms_core import atomic
from hms_core.contract import (
    CLASSES,
    HIGH_VOTE_THRESHOLD,
    RAW_CHANNELS,
    SPEC_COLUMNS,
    SPEC_TIME_COLUMN,
    SPEC_WINDOW_ROWS,
    SUBMISSION_COLUMNS,
    VOTE_COLUMNS,
    WINDOW_SAMPLES,
)
from hms_core.data import io
from hms_core.config import check_option
from hms_core.errors import ConfigError, DataError
from hms_core.hashing import sha256_file
from hms_core.status import update_status

logger = logging.getLogger(__name__)

# What a bad recording does, here and in ``preprocessing.on_bad_recording``: stop, or list it
# and carry on without it.
OnBad = Literal["error", "skip"]
ON_BAD_CHOICES = typing.get_args(OnBad)
_EEG_COLUMNS = tuple(RAW_CHANNELS)
_SPEC_FILE_COLUMNS = (SPEC_TIME_COLUMN, *SPEC_COLUMNS)


@dataclass
class ValidationConfig:
    """Options of :func:`validate_dataset` (the ``data.validation`` config section).

    Parameters
    ----------
    on_bad : {"error", "skip"}
        ``"error"`` raises at the first bad recording; ``"skip"`` lists bad recordings in
        the report and carries on, as ``preprocessing.on_bad_recording: skip`` does
        (default ``"error"``; the old word ``"report"`` still means ``"skip"``, deprecated).
    deep : bool
        Also decode every parquet fully (verifying page checksums where present), to
        catch corruption inside a file whose footer is intact (default False: footers only).
    threads : int
        Threads for checking and hashing files (default 1).
    """

    on_bad: OnBad = field(default="error", metadata={"synonyms": {"report": "skip"}})
    deep: bool = False
    threads: int = 1

    def validate(self, path: str = "data.validation") -> None:
        """Raise ConfigError naming ``<path>.<key>`` for a bad option or thread count."""
        check_option(f"{path}.on_bad", self.on_bad, ON_BAD_CHOICES)
        if not isinstance(self.deep, bool):
            raise ConfigError(f"{path}.deep: {self.deep!r} is not true or false")
        if not isinstance(self.threads, int) or isinstance(self.threads, bool) or self.threads < 1:
            raise ConfigError(f"{path}.threads: {self.threads!r} is not a positive integer")


@dataclass
class _FileCheck:
    path: Path
    columns: tuple[str, ...]
    min_rows: int
    exact_rows: int | None
    eeg_ids: tuple[int, ...]
    split: str
    need: str  # what the rows are needed for, for the message


def validate_dataset(data_dir: str | os.PathLike, *, manifest_out: str | os.PathLike,
                     report_out: str | os.PathLike, on_bad: str = "error", deep: bool = False,
                     threads: int = 1, status_path=None) -> dict:
    """Validate a data folder and write its manifest and report.

    Parameters
    ----------
    data_dir : path-like
        Folder in the Kaggle layout (``train.csv``, ``train_eegs/``, ...).
    manifest_out : path-like
        ``manifest.sha256`` to write: ``"<sha256 hex>  <path relative to data_dir>"``
        for every file of the data set, sorted by path (``sha256sum -c`` format).
    report_out : path-like
        JSON report: counts, vote statistics, the checks done and ``bad_recordings``.
    on_bad : {"error", "skip"}
        Raise at the first bad recording, or list bad recordings
        (``{eeg_id, split, path, problem}``) in the report and carry on.
    deep : bool
        Decode every parquet fully (slower), not only its footer.
    threads : int
        Threads for checking and hashing.
    status_path : path-like, optional
        ``status/run.json`` to update with progress.

    Returns
    -------
    dict
        The report.

    Raises
    ------
    DataError
        A missing or malformed ``train.csv``, ``test.csv`` or ``sample_submission.csv``,
        always; a bad recording when ``on_bad="error"``.
    """
    check_option("on_bad", on_bad, ON_BAD_CHOICES)
    started = time.perf_counter()
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(data_dir, "data folder not found")
    train = io.read_train_csv(data_dir / "train.csv")
    test = io.read_test_csv(data_dir / "test.csv")
    checks = ["train.csv: the 15 contract columns (others ignored), dtypes, classes, votes, unique label_id",
              "test.csv: the 3 contract columns (others ignored), int64, unique eeg_id"]
    checks.append(_check_submission(data_dir / "sample_submission.csv"))
    _check_patients(data_dir / "train.csv", train)
    checks.append("train.csv: one patient_id per eeg_id")

    file_checks = _train_file_checks(data_dir, train) + _test_file_checks(data_dir, test)
    checks += ["EEG parquets: exist, readable, exactly the 20 contract columns in order, float, "
               "enough rows for the largest offset (test: exactly 10,000 rows)",
               "spectrogram parquets: exist, readable, time + 400 contract columns in order, float, "
               "enough rows for the largest offset (test: at least 300 rows)"]
    if deep:
        checks.append("every parquet decoded fully")
    bad = []
    for n_done, (check, problem) in enumerate(_run_checks(file_checks, deep=deep, threads=threads), 1):
        if problem is not None:
            if on_bad == "error":
                raise DataError(check.path, problem, eeg_id=check.eeg_ids[0] if check.eeg_ids else None)
            logger.warning("bad recording: %s: %s", check.path, problem)
            bad += [{"eeg_id": e, "split": check.split, "path": str(check.path), "problem": problem}
                    for e in check.eeg_ids]
        if status_path is not None and (n_done % 500 == 0 or n_done == len(file_checks)):
            update_status(status_path, "validate_data", done=n_done, total=len(file_checks), unit="files")

    skip = {Path(manifest_out).resolve(), Path(report_out).resolve()}
    n_files = write_manifest(data_dir, manifest_out, threads=threads, skip=skip)
    checks.append(f"manifest: sha256 of {n_files} files")
    report = {
        "data_dir": str(data_dir),
        "ok": not bad,
        "counts": _counts(train, test, n_files),
        "votes": _vote_stats(train),
        "checks": checks,
        "bad_recordings": sorted(bad, key=lambda b: (b["split"], b["eeg_id"])),
        "n_bad_recordings": len({(b["split"], b["eeg_id"]) for b in bad}),
        "manifest": str(manifest_out),
        "seconds": round(time.perf_counter() - started, 2),
    }
    atomic.write_json(report_out, report)
    logger.info("validated %s: %d train rows, %d recordings, %d test recordings, %d bad, %d files hashed",
                data_dir, len(train), report["counts"]["train_recordings"], len(test),
                report["n_bad_recordings"], n_files)
    return report


# ------------------------------------------------------------------------------- CSV checks
def _check_submission(path: Path) -> str:
    if not path.exists():
        return "sample_submission.csv: absent (not needed)"
    try:
        columns = tuple(pd.read_csv(path, nrows=0).columns)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(path, f"not a readable CSV file ({err})") from None
    if columns != SUBMISSION_COLUMNS:
        raise DataError(path, f"columns {list(columns)}, expected {list(SUBMISSION_COLUMNS)}")
    return "sample_submission.csv: columns eeg_id + the six vote columns"


def _check_patients(path: Path, train: pd.DataFrame) -> None:
    per_eeg = train.groupby("eeg_id")["patient_id"].nunique()
    if (per_eeg > 1).any():
        eeg_id = int(per_eeg.index[per_eeg > 1][0])
        raise DataError(path, "one eeg_id has rows with different patient_id", eeg_id=eeg_id)


# ------------------------------------------------------------------------------ file checks
def _train_file_checks(data_dir: Path, train: pd.DataFrame) -> list[_FileCheck]:
    out = []
    by_eeg = train.groupby("eeg_id", sort=True)["eeg_label_offset_seconds"].max()
    for eeg_id, offset_s in by_eeg.items():
        out.append(_FileCheck(io.eeg_path(data_dir, eeg_id), _EEG_COLUMNS, io.eeg_samples_needed(offset_s),
                              None, (int(eeg_id),), "train", f"the window at offset {offset_s:g} s"))
    by_spec = train.groupby("spectrogram_id", sort=True).agg(
        offset_s=("spectrogram_label_offset_seconds", "max"), eeg_ids=("eeg_id", "unique"))
    for spec_id, row in by_spec.iterrows():
        out.append(_FileCheck(io.spectrogram_path(data_dir, spec_id), _SPEC_FILE_COLUMNS,
                              io.spectrogram_rows_needed(row.offset_s), None,
                              tuple(int(e) for e in sorted(row.eeg_ids)), "train",
                              f"the window at offset {row.offset_s:g} s"))
    return out


def _test_file_checks(data_dir: Path, test: pd.DataFrame) -> list[_FileCheck]:
    out = []
    for row in test.itertuples(index=False):
        out.append(_FileCheck(io.eeg_path(data_dir, row.eeg_id, "test"), _EEG_COLUMNS, WINDOW_SAMPLES,
                              WINDOW_SAMPLES, (int(row.eeg_id),), "test", "a 50 s test recording"))
        out.append(_FileCheck(io.spectrogram_path(data_dir, row.spectrogram_id, "test"), _SPEC_FILE_COLUMNS,
                              SPEC_WINDOW_ROWS, None, (int(row.eeg_id),), "test", "a 600 s test window"))
    return out


def _run_checks(checks: list[_FileCheck], *, deep: bool, threads: int):
    from tqdm import tqdm

    def one(check: _FileCheck):
        return check, _parquet_problem(check, deep=deep)

    pool = ThreadPoolExecutor(max_workers=threads)
    try:
        yield from tqdm(pool.map(one, checks), total=len(checks), desc="checking parquets",
                        unit="file", disable=None, leave=False)
    finally:  # after the first error with on_bad="error", skip the files not checked yet
        pool.shutdown(wait=True, cancel_futures=True)


def _parquet_problem(check: _FileCheck, *, deep: bool) -> str | None:
    """What is wrong with one parquet file, in words, or None."""
    if not check.path.is_file():
        return "file not found"
    try:
        parquet = pq.ParquetFile(check.path)
        schema = parquet.schema_arrow
        n_rows = parquet.metadata.num_rows
    except (pa.ArrowException, OSError) as err:
        return f"not a readable parquet file ({err})"
    names = tuple(schema.names)
    if names != check.columns:
        missing = [c for c in check.columns if c not in names]
        extra = [c for c in names if c not in check.columns]
        if missing or extra:
            return f"columns differ from the contract: missing {_short(missing)}, unexpected {_short(extra)}"
        return (f"columns are in the wrong order: {_short(list(names))}, "
                f"expected {_short(list(check.columns))}")
    not_float = [f.name for f in schema if f.name != SPEC_TIME_COLUMN and not pa.types.is_floating(f.type)]
    if not_float:
        return f"columns {_short(not_float)} are not floating point"
    if check.exact_rows is not None and n_rows != check.exact_rows:
        return f"has {n_rows} rows, expected exactly {check.exact_rows} for {check.need}"
    if n_rows < check.min_rows:
        return f"too short: {n_rows} rows, but {check.need} needs {check.min_rows}"
    if deep:
        try:  # page checksums, where the writer stored them, are verified too
            pq.ParquetFile(check.path, page_checksum_verification=True).read()
        except (pa.ArrowException, OSError) as err:
            return f"not a readable parquet file ({err})"
    return None


def _short(items: list, limit: int = 5) -> str:
    return str(items[:limit])[:-1] + (", ...]" if len(items) > limit else "]")


# --------------------------------------------------------------------------------- manifest
def write_manifest(data_dir: str | os.PathLike, manifest_out: str | os.PathLike, *, threads: int = 1,
                   skip: Iterable[Path] = ()) -> int:
    """Write ``"<sha256>  <relative path>"`` lines for every file under ``data_dir``, sorted.

    Parameters
    ----------
    data_dir : path-like
        The data folder (followed if it is a symbolic link).
    manifest_out : path-like
        File to write atomically; ``sha256sum -c`` run in ``data_dir`` accepts it.
    threads : int
        Threads for hashing (hashlib releases the GIL on large buffers).
    skip : iterable of Path
        Resolved paths to leave out (the manifest and report when they live inside).

    Returns
    -------
    int
        Number of files hashed.
    """
    from tqdm import tqdm

    root = Path(data_dir)
    skip = set(skip)
    files = sorted((p for p in _walk_files(root) if p.resolve() not in skip),
                   key=lambda p: p.relative_to(root).as_posix())
    with ThreadPoolExecutor(max_workers=threads) as pool:
        digests = list(tqdm(pool.map(sha256_file, files), total=len(files), desc="sha256", unit="file",
                            disable=None, leave=False))
    lines = [f"{digest}  {path.relative_to(root).as_posix()}\n" for path, digest in zip(files, digests)]
    atomic.write_text(manifest_out, "".join(lines))
    return len(files)


def _walk_files(root: Path):
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in names:
            yield Path(folder) / name



# ---------------------------------------------------------------------------------- summary
def _counts(train: pd.DataFrame, test: pd.DataFrame, n_files: int) -> dict:
    return {
        "train_rows": int(len(train)),
        "train_recordings": int(train["eeg_id"].nunique()),
        "train_spectrograms": int(train["spectrogram_id"].nunique()),
        "patients": int(train["patient_id"].nunique()),
        "test_recordings": int(len(test)),
        "files": int(n_files),
    }


def _vote_stats(train: pd.DataFrame) -> dict:
    totals = train[list(VOTE_COLUMNS)].sum(axis=1).to_numpy()
    return {
        "total_min": int(totals.min()), "total_median": float(np.median(totals)),
        "total_max": int(totals.max()), "total_mean": round(float(totals.mean()), 3),
        "fraction_below_high_vote": round(float((totals < HIGH_VOTE_THRESHOLD).mean()), 4),
        "n_high_vote": int((totals >= HIGH_VOTE_THRESHOLD).sum()),
        "high_vote_threshold": HIGH_VOTE_THRESHOLD,
        "consensus_counts": {c: int((train["expert_consensus"] == c).sum()) for c in CLASSES},
        "vote_totals": {c: int(train[c].sum()) for c in VOTE_COLUMNS},
    }
