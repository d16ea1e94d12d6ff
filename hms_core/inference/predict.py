"""``hms predict``: a Kaggle submission from a test folder and the exported ONNX ensemble.

Per test row: read the 50 s EEG and the 600 s Kaggle spectrogram, clean the recording with
:func:`hms_core.signal.ica.clean_recording` (NaN gaps, ICA: the one step that cannot go
inside ONNX; its settings, the ``preprocessing`` config section, are read from the model's
``hms.preprocessing`` metadata; it is fitted on the 50 s window, which matches training
when ``preprocessing.ica.fit_on`` is "window", and a warning says so when it is "recording"), then
run ``ensemble.onnx`` (window preprocessing, members, stacker, temperature, uncertainty).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pandas as pd

from hms_core import atomic
from hms_core.config import from_mapping
from hms_core.contract import (SPEC_WINDOW_ROWS, SUBMISSION_COLUMNS, TEST_EEG_DIR, TEST_SPEC_DIR,
                               VOTE_COLUMNS, WINDOW_SAMPLES)
from hms_core.data import io
from hms_core.ensemble.conformal import set_columns
from hms_core.errors import DataError
from hms_core.preprocess import PreprocessConfig
from hms_core.signal.ica import clean_recording

logger = logging.getLogger(__name__)

UNCERTAINTY_COLUMNS = ("entropy", "member_spread")


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


def _batches(test: pd.DataFrame, batch_size: int) -> Iterator[pd.DataFrame]:
    for start in range(0, len(test), batch_size):
        yield test.iloc[start:start + batch_size]


def predict(data_dir: str | os.PathLike, out_csv: str | os.PathLike, *,
            model_path: str | os.PathLike = "models/onnx/ensemble.onnx", uncertainty: bool = False,
            batch_size: int = 8, provider: str = "auto", threads: int | None = None,
            progress: bool = True) -> pd.DataFrame:
    """Write a submission for every row of ``data_dir/test.csv``.

    Parameters
    ----------
    data_dir : path
        Folder with ``test.csv``, ``test_eegs/`` and ``test_spectrograms/``.
    out_csv : path
        Submission written atomically: ``eeg_id`` and the six ``*_vote`` probabilities (rows
        sum to 1), one row per test eeg_id in test.csv order.
    model_path : path
        ``ensemble.onnx`` from :func:`hms_core.export.onnx.export_ensemble`.
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

    Returns
    -------
    pd.DataFrame
        What was written.

    Raises
    ------
    DataError
        Missing or malformed test.csv, EEG or spectrogram file, or a model file that is not an
        exported ensemble.
    """
    from tqdm import tqdm

    from hms_core.export.runtime import ort_session, read_metadata

    data_dir, model_path = Path(data_dir), Path(model_path)
    meta = read_metadata(model_path)
    if meta.get("kind") != "ensemble":
        raise DataError(model_path, f"not an exported ensemble (hms.kind is {meta.get('kind')!r}); "
                                    "use models/onnx/ensemble.onnx")
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
    probs, extra = [], []
    with tqdm(total=len(test), desc="hms predict", unit="window", disable=not progress) as bar:
        for chunk in _batches(test, batch_size):
            windows = [read_test_window(data_dir, int(r.eeg_id), int(r.spectrogram_id), cleaning)
                       for r in chunk.itertuples(index=False)]
            raw = np.stack([w[0] for w in windows]).astype(np.float32)
            spec = np.stack([w[1] for w in windows]).astype(np.float32)
            p, entropy, spread = session.run(outputs, {"raw_uv": raw, "spec_power": spec})
            probs.append(p)
            extra.append(np.stack([entropy, spread], axis=1))
            bar.update(len(chunk))
    p = np.concatenate(probs).astype(np.float64)
    if not np.isfinite(p).all():
        raise DataError(model_path, "the model returned non-finite probabilities")
    p = p / p.sum(axis=1, keepdims=True)
    submission = pd.DataFrame({"eeg_id": test["eeg_id"].to_numpy(np.int64)})
    for j, col in enumerate(VOTE_COLUMNS):
        submission[col] = p[:, j]
    submission = submission[list(SUBMISSION_COLUMNS)]
    if uncertainty:
        u = np.concatenate(extra)
        for j, col in enumerate(UNCERTAINTY_COLUMNS):
            submission[col] = u[:, j].astype(np.float64)
        conformal = meta.get("conformal")
        if conformal is None:
            logger.warning("%s carries no conformal threshold (exported before prediction sets): "
                           "no prediction_set column", model_path)
        else:
            for col, values in set_columns(p, float(conformal["threshold"])).items():
                submission[col] = values
    with atomic.atomic_path(out_csv) as tmp:
        submission.to_csv(tmp, index=False)
    logger.info("wrote %d predictions to %s", len(submission), out_csv)
    return submission


def main(data_dir: str | os.PathLike, out_csv: str | os.PathLike,
         model_path: str | os.PathLike = "models/onnx/ensemble.onnx", uncertainty: bool = False) -> int:
    """Entry point of ``hms predict --data DIR --out submission.csv [--model ...] [--uncertainty]``."""
    submission = predict(data_dir, out_csv, model_path=model_path, uncertainty=uncertainty)
    print(f"wrote {len(submission)} rows to {out_csv}")
    return 0
