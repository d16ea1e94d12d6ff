"""``hms predict``: a Kaggle submission from a test folder and the exported ONNX ensemble.

Per test row: read the 50 s EEG and the 600 s Kaggle spectrogram, clean the recording with
:func:`hms_core.signal.ica.clean_recording` (NaN gaps, ICA: the one step that cannot go
inside ONNX; its settings, the ``preprocessing`` config section, are read from the model's
``hms.preprocessing`` metadata; it is fitted on the 50 s window, which matches training
when ``preprocessing.ica.fit_on`` is "window", and a warning says so when it is "recording"), then
run ``ensemble.onnx`` (window preprocessing, members, stacker, temperature, uncertainty).

A bad test file (missing, malformed, too short, or one the model gives non-finite
probabilities for) is reported with its eeg_id and its row left out, while the other rows
are predicted; ``hms predict`` then exits with status 1. When ``training_results.json``
beside the model's run folder records the model's SHA-256, the file must match it.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping

import numpy as np
import pandas as pd

from hms_core import atomic
from hms_core.config import check_option, from_mapping
from hms_core.contract import (SPEC_WINDOW_ROWS, SUBMISSION_COLUMNS, TEST_EEG_DIR, TEST_SPEC_DIR,
                               VOTE_COLUMNS, WINDOW_SAMPLES)
from hms_core.data import io
from hms_core.ensemble.conformal import set_columns
from hms_core.errors import DataError
from hms_core.hashing import sha256_file
from hms_core.preprocess import PreprocessConfig
from hms_core.signal.ica import clean_recording

logger = logging.getLogger(__name__)

UNCERTAINTY_COLUMNS = ("entropy", "member_spread")
RESULTS_FILE = "training_results.json"


def cleaning_config(preprocessing: Mapping[str, Any] | None) -> PreprocessConfig:
    """The ``preprocessing`` section (as stored in ``ensemble.onnx``) as the config that
    :func:`clean_recording` takes (it uses the ``nan`` and ``ica`` parts)."""
    return from_mapping(PreprocessConfig, preprocessing, "preprocessing")


def cleaning_skew(cleaning: PreprocessConfig) -> str | None:
    """How prediction-time cleaning differs from the training stores', or None when it does not.

    A test file is 50 s, so ``hms predict`` always fits the cleaning (ICA included) on that
    window. It matches training when ICA was off or ``preprocessing.ica.fit_on`` was
    "window"; with "recording" the training windows were cleaned by an ICA fitted on their
    whole (often minutes-long) recording.
    """
    if cleaning.ica.enabled and cleaning.ica.fit_on == "recording":
        return ("ICA is fitted on each 50 s test window here, but the model was trained on windows "
                "cleaned by an ICA fitted on their whole recording (preprocessing.ica.fit_on: "
                "recording): a train/test skew; train with fit_on: window to remove it")
    return None


def _middle(n_have: int, n_need: int) -> slice:
    start = (n_have - n_need) // 2
    return slice(start, start + n_need)


def read_test_window(data_dir: str | os.PathLike, eeg_id: int, spectrogram_id: int,
                     cleaning: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """One test row as the ensemble's inputs.

    Returns
    -------
    raw_uv : np.ndarray
        ``(20, 10000)`` float32 uV, cleaned. Test files are exactly 50 s; a longer file gives
        its middle 50 s.
    spec_power : np.ndarray
        ``(300, 400)`` float32; the middle 600 s of a longer spectrogram.

    Raises
    ------
    DataError
        A file is missing, unreadable, too short or all NaN.
    """
    path = io.eeg_path(data_dir, eeg_id, split="test")
    eeg = io.read_eeg(path, eeg_id=eeg_id)
    if len(eeg) < WINDOW_SAMPLES:
        raise DataError(path, f"has {len(eeg)} rows; a test EEG needs {WINDOW_SAMPLES} (50 s at 200 Hz)",
                        eeg_id=eeg_id)
    cleaned, _ = clean_recording(eeg[_middle(len(eeg), WINDOW_SAMPLES)], cleaning, eeg_id=eeg_id, path=path)
    spec_file = io.spectrogram_path(data_dir, spectrogram_id, split="test")
    _, power = io.read_spectrogram(spec_file, spectrogram_id=spectrogram_id)
    if len(power) < SPEC_WINDOW_ROWS:
        raise DataError(spec_file, f"has {len(power)} rows; a test spectrogram needs {SPEC_WINDOW_ROWS} "
                                   "(600 s, one row every 2 s)", eeg_id=eeg_id)
    return cleaned.T.copy(), power[_middle(len(power), SPEC_WINDOW_ROWS)]


def _check_test_folder(data_dir: Path) -> pd.DataFrame:
    if not data_dir.is_dir():
        raise DataError(data_dir, "test data folder not found")
    test = io.read_test_csv(data_dir / "test.csv")
    if len(test) == 0:
        raise DataError(data_dir / "test.csv", "has no rows")
    for sub in (TEST_EEG_DIR, TEST_SPEC_DIR):
        if not (data_dir / sub).is_dir():
            raise DataError(data_dir / sub, "folder not found (expected the Kaggle test layout)")
    return test


def check_model_checksum(model_path: str | os.PathLike) -> str | None:
    """Compare ``model_path`` with the SHA-256 that ``training_results.json`` records for it.

    The results file is looked for in the folders above the model (a run's
    ``models/onnx/ensemble.onnx`` is listed as that relative path in its artifacts).

    Returns
    -------
    str or None
        The verified digest, or None when no results file records the model.

    Raises
    ------
    DataError
        The digests differ, or the results file cannot be read.
    """
    model_path = Path(model_path).resolve()
    for folder in model_path.parents:
        results = folder / RESULTS_FILE
        if not results.is_file():
            continue
        try:
            artifacts = json.loads(results.read_text()).get("artifacts", {})
        except (OSError, ValueError, AttributeError) as err:
            raise DataError(results, f"cannot be read to check the model's checksum ({err})") from None
        recorded = artifacts.get(model_path.relative_to(folder).as_posix(), {}).get("sha256")
        if recorded is None:
            continue
        actual = sha256_file(model_path)
        if actual != recorded:
            raise DataError(model_path, f"SHA-256 {actual[:12]}... differs from the {recorded[:12]}... "
                                        f"recorded in {results}: the file changed since training; "
                                        "export it again or use the model that run produced")
        logger.info("%s matches the SHA-256 recorded in %s", model_path, results)
        return actual
    return None


def _batches(test: pd.DataFrame, batch_size: int) -> Iterator[pd.DataFrame]:
    for start in range(0, len(test), batch_size):
        yield test.iloc[start:start + batch_size]


def predict(data_dir: str | os.PathLike, out_csv: str | os.PathLike, *,
            model_path: str | os.PathLike = "models/onnx/ensemble.onnx", uncertainty: bool = False,
            batch_size: int = 8, provider: str = "auto", threads: int | None = None,
            progress: bool = True, on_bad_file: Literal["skip", "error"] = "skip") -> pd.DataFrame:
    """Write a submission for every row of ``data_dir/test.csv`` whose files are good.

    Parameters
    ----------
    data_dir : path
        Folder with ``test.csv``, ``test_eegs/`` and ``test_spectrograms/``.
    out_csv : path
        Submission written atomically: ``eeg_id`` and the six ``*_vote`` probabilities (rows
        sum to 1), one row per good test eeg_id in test.csv order.
    model_path : path
        ``ensemble.onnx`` from :func:`hms_core.export.onnx.export_ensemble`; checked against
        the SHA-256 in the run's ``training_results.json`` when that records it.
    uncertainty : bool
        Add ``entropy`` (nats, of the calibrated prediction) and ``member_spread`` (std of
        the member/fold probabilities) columns, and the conformal ``prediction_set`` (e.g.
        ``"Seizure|LPD"``) and ``set_size`` columns when the model carries a threshold
        (:func:`hms_core.ensemble.conformal.set_columns`).
    batch_size : int
        Windows per ONNX Runtime call.
    provider : str
        "auto" (CUDA when available), "cpu" or "cuda".
    threads : int, optional
        ONNX Runtime intra-op threads (default: its own choice).
    progress : bool
        Show a tqdm progress bar.
    on_bad_file : {"skip", "error"}
        skip: log each bad test file (a :class:`DataError` naming file and eeg_id), leave its
        row out and predict the others (default); error: raise the first one.

    Returns
    -------
    pd.DataFrame
        What was written; ``.attrs["bad_files"]`` lists the skipped rows' errors (str).

    Raises
    ------
    DataError
        Missing or malformed test.csv, a model file that is not an exported ensemble or does
        not match its recorded checksum, or (``on_bad_file="error"``) a bad test file.
    """
    from tqdm import tqdm

    from hms_core.export.runtime import ort_session, read_metadata

    check_option("on_bad_file", on_bad_file, ("skip", "error"))
    data_dir, model_path = Path(data_dir), Path(model_path)
    meta = read_metadata(model_path)
    if meta.get("kind") != "ensemble":
        raise DataError(model_path, f"not an exported ensemble (hms.kind is {meta.get('kind')!r}); "
                                    "use models/onnx/ensemble.onnx")
    check_model_checksum(model_path)
    cleaning = cleaning_config(meta.get("preprocessing"))
    skew = cleaning_skew(cleaning)
    if skew is not None:
        logger.warning("%s", skew)
    else:
        logger.info("cleaning each 50 s test window as the training windows were cleaned "
                    "(ICA %s)", f"fitted on the {cleaning.ica.fit_on}" if cleaning.ica.enabled else "off")
    test = _check_test_folder(data_dir)
    session = ort_session(model_path, provider=provider, threads=threads)
    outputs = ["probs", *UNCERTAINTY_COLUMNS]
    rows: dict[int, np.ndarray] = {}  # test.csv position -> probs and the uncertainty columns
    bad: list[str] = []

    def reject(err: DataError) -> None:
        if on_bad_file == "error":
            raise err
        logger.error("skipped: %s", err)
        bad.append(str(err))

    with tqdm(total=len(test), desc="hms predict", unit="window", disable=not progress) as bar:
        for chunk in _batches(test, batch_size):
            windows = {}
            for pos, r in zip(chunk.index, chunk.itertuples(index=False)):
                try:
                    windows[pos] = read_test_window(data_dir, int(r.eeg_id), int(r.spectrogram_id), cleaning)
                except DataError as err:
                    reject(err)
            bar.update(len(chunk))
            if not windows:
                continue
            raw = np.stack([w[0] for w in windows.values()]).astype(np.float32)
            spec = np.stack([w[1] for w in windows.values()]).astype(np.float32)
            p, entropy, spread = session.run(outputs, {"raw_uv": raw, "spec_power": spec})
            for i, pos in enumerate(windows):
                if not np.isfinite(p[i]).all():
                    eeg_id = int(test.at[pos, "eeg_id"])
                    reject(DataError(io.eeg_path(data_dir, eeg_id, split="test"),
                                     f"the model returned non-finite probabilities for this window "
                                     f"({model_path.name}); check the recording's values", eeg_id=eeg_id))
                    continue
                rows[pos] = np.concatenate([p[i], [entropy[i], spread[i]]]).astype(np.float64)
    kept = [pos for pos in test.index if pos in rows]
    values = np.stack([rows[pos] for pos in kept]) if kept else np.zeros((0, len(VOTE_COLUMNS) + 2))
    p = values[:, :len(VOTE_COLUMNS)]
    p = p / p.sum(axis=1, keepdims=True)
    submission = pd.DataFrame({"eeg_id": test.loc[kept, "eeg_id"].to_numpy(np.int64)})
    for j, col in enumerate(VOTE_COLUMNS):
        submission[col] = p[:, j]
    submission = submission[list(SUBMISSION_COLUMNS)]
    if uncertainty:
        for j, col in enumerate(UNCERTAINTY_COLUMNS):
            submission[col] = values[:, len(VOTE_COLUMNS) + j]
        conformal = meta.get("conformal")
        if conformal is None:
            logger.warning("%s carries no conformal threshold (exported before prediction sets): "
                           "no prediction_set column", model_path)
        else:
            for col, column in set_columns(p, float(conformal["threshold"])).items():
                submission[col] = column
    with atomic.atomic_path(out_csv) as tmp:
        submission.to_csv(tmp, index=False)
    submission.attrs["bad_files"] = bad
    logger.info("wrote %d predictions to %s", len(submission), out_csv)
    return submission


def main(data_dir: str | os.PathLike, out_csv: str | os.PathLike,
         model_path: str | os.PathLike = "models/onnx/ensemble.onnx", uncertainty: bool = False) -> int:
    """Entry point of ``hms predict --data DIR --out submission.csv [--model ...] [--uncertainty]``.

    Returns 0, or 1 when bad test files were skipped (each is printed to stderr).
    """
    submission = predict(data_dir, out_csv, model_path=model_path, uncertainty=uncertainty)
    bad = submission.attrs.get("bad_files", [])
    print(f"wrote {len(submission)} rows to {out_csv}")
    if bad:
        for err in bad:
            print(f"hms predict: bad test file: {err}", file=sys.stderr)
        print(f"hms predict: {len(bad)} of {len(submission) + len(bad)} test rows skipped (listed above); "
              f"{out_csv} holds the other rows", file=sys.stderr)
        return 1
    return 0
