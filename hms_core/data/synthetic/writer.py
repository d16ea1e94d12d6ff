"""Write a synthetic data set in the exact Kaggle layout, one session at a time.

Each session (one spectrogram) is a continuous multichannel EEG of at least 600 s
(:func:`hms_core.data.synthetic.signals.synthesize_recording`); its EEG files and their
labelled sub-windows come from :mod:`hms_core.data.synthetic.plan`. The expert votes of a
sub-window are multinomial draws from the latent vector of its central 10 s, and the
Kaggle spectrogram is computed from the same signal along the contract's chains.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hms_core import atomic
from hms_core.config import from_mapping
from hms_core.contract import (
    CLASSES,
    N_CLASSES,
    N_RAW_CHANNELS,
    RAW_CHANNELS,
    SAMPLING_RATE_HZ,
    SPEC_COLUMNS,
    SPEC_STEP_S,
    SPEC_TIME_COLUMN,
    SPEC_WINDOW_S,
    SUBMISSION_COLUMNS,
    TEST_COLUMNS,
    TEST_EEG_DIR,
    TEST_SPEC_DIR,
    TRAIN_COLUMNS,
    TRAIN_EEG_DIR,
    TRAIN_SPEC_DIR,
    VOTE_COLUMNS,
    WINDOW_SAMPLES,
)
from hms_core.data.synthetic.answer_key import LATENT_COLUMNS, write_answer_key
from hms_core.data.synthetic.config import SyntheticConfig
from hms_core.data.synthetic.plan import (
    MAX_VOTES,
    SPEC_LEAD_S,
    Ids,
    SessionPlan,
    anchor_latent,
    draw_votes,
    lay_out_session,
    plan_sessions,
    session_anchors,
    session_rng,
    window_latent,
)
from hms_core.data.synthetic.signals import add_nan_stretches, synthesize_recording
from hms_core.errors import DataError
from hms_core.signal.spectrogram import kaggle_spectrogram
from hms_core.status import update_status

logger = logging.getLogger(__name__)
FS = SAMPLING_RATE_HZ
_CHUNK_ROWS = 20_000  # train.csv rows held as dicts before they become a DataFrame


def _write_eeg(path: Path, raw_uv: np.ndarray) -> None:
    """An EEG parquet: ``raw_uv`` ``(n, 20)`` as one float32 column per ``RAW_CHANNELS`` name (uV)."""
    channels = raw_uv.T  # (20, n): contiguous per channel for the recordings built here
    arrays = [pa.array(np.ascontiguousarray(channels[j]), type=pa.float32()) for j in range(N_RAW_CHANNELS)]
    pq.write_table(pa.Table.from_arrays(arrays, names=list(RAW_CHANNELS)), path, use_dictionary=False,
                   write_page_checksum=True)


def _write_spectrogram(path: Path, power: np.ndarray) -> None:
    """A spectrogram parquet: the ``time`` column (s) and ``power`` ``(rows, 400)`` in uV^2/Hz."""
    time_s = np.arange(power.shape[0], dtype=np.int64) * SPEC_STEP_S + SPEC_STEP_S // 2
    arrays = [pa.array(time_s)] + [pa.array(np.ascontiguousarray(power[:, j]), type=pa.float32())
                                   for j in range(power.shape[1])]
    pq.write_table(pa.Table.from_arrays(arrays, names=[SPEC_TIME_COLUMN, *SPEC_COLUMNS]), path,
                   use_dictionary=False, write_page_checksum=True)


def _generate_train_session(out: Path, session: SessionPlan, rng: np.random.Generator,
                            *, nan_fraction: float, metadata_only: bool = False) -> tuple[list[dict], list[dict]]:
    """Write one session's spectrogram and EEG files; return its train.csv rows and latents.

    With ``metadata_only`` no signal is synthesised or written: the latent of each window
    comes from the session's anchors (:func:`anchor_latent`); ids and offsets are the same
    as with signals, the votes are drawn from a different random state.
    """
    n = lay_out_session(session, rng)
    anchors, times = session_anchors(rng, session.main_class, n / FS)
    if metadata_only:
        def latent_at(start_sample: int) -> np.ndarray:
            return anchor_latent(anchors, times, start_sample)
    else:
        rec = synthesize_recording(n, anchors, rng, anchor_times_s=times, nan_stretches=False)
        for eeg in session.eegs:  # NaN stretches where they matter: inside the EEG files
            if rng.random() < nan_fraction:
                start = int(round(eeg.start_s * FS))
                add_nan_stretches(rec.raw_uv.T, rec.nan_mask, start, start + eeg.length_samples, rng)
        power = kaggle_spectrogram(rec.raw_uv, n // (SPEC_STEP_S * FS))
        _write_spectrogram(out / TRAIN_SPEC_DIR / f"{session.spectrogram_id}.parquet", power)

        def latent_at(start_sample: int) -> np.ndarray:
            return window_latent(rec.class_weights, start_sample)
    rows, latents = [], []
    for eeg in session.eegs:
        start = int(round(eeg.start_s * FS))
        if not metadata_only:
            _write_eeg(out / TRAIN_EEG_DIR / f"{eeg.eeg_id}.parquet",
                       rec.raw_uv[start:start + eeg.length_samples])
        for sub_id, offset_s in enumerate(eeg.offsets_s):
            latent = latent_at(start + int(round(offset_s * FS)))
            n_votes = eeg.n_votes  # mostly the same annotators for a whole recording
            if rng.random() < 0.2:
                n_votes = int(np.clip(n_votes + rng.integers(-2, 3), 1, MAX_VOTES))
            votes, consensus = draw_votes(rng, latent, n_votes)
            rows.append({"eeg_id": eeg.eeg_id, "eeg_sub_id": sub_id,
                         "eeg_label_offset_seconds": float(offset_s),
                         "spectrogram_id": session.spectrogram_id, "spectrogram_sub_id": len(rows),
                         "spectrogram_label_offset_seconds": float(eeg.start_s + offset_s - SPEC_LEAD_S),
                         "label_id": 0, "patient_id": session.patient_id,
                         "expert_consensus": consensus, **dict(zip(VOTE_COLUMNS, votes.tolist()))})
            latents.append(dict(zip(LATENT_COLUMNS, latent.tolist())))
    return rows, latents


def _generate_test_recording(out: Path, rng: np.random.Generator, *, eeg_id: int, spectrogram_id: int,
                             nan_fraction: float) -> np.ndarray:
    """Write one test recording (600 s spectrogram, central 50 s EEG); return its latent (6,)."""
    n = SPEC_WINDOW_S * FS
    anchors, times = session_anchors(rng, int(rng.integers(N_CLASSES)), SPEC_WINDOW_S)
    rec = synthesize_recording(n, anchors, rng, anchor_times_s=times, nan_stretches=False)
    start = int(SPEC_LEAD_S * FS)
    if rng.random() < nan_fraction:
        add_nan_stretches(rec.raw_uv.T, rec.nan_mask, start, start + WINDOW_SAMPLES, rng)
    power = kaggle_spectrogram(rec.raw_uv, SPEC_WINDOW_S // SPEC_STEP_S)
    _write_spectrogram(out / TEST_SPEC_DIR / f"{spectrogram_id}.parquet", power)
    _write_eeg(out / TEST_EEG_DIR / f"{eeg_id}.parquet", rec.raw_uv[start:start + WINDOW_SAMPLES])
    return window_latent(rec.class_weights, start)


def generate_dataset(out_dir: str | os.PathLike, *, n_patients: int, seed: int = 0,
                     recordings_per_patient: tuple[int, int] = (1, 3), n_test: int = 4,
                     save_answer_key: bool = True, sub_windows: tuple[int, int] = (1, 11),
                     two_eeg_fraction: float = 0.3, nan_fraction: float = 0.35,
                     status_path=None) -> dict:
    """Write a synthetic data set in the Kaggle layout to ``out_dir``.

    Generates and writes one session at a time (memory does not grow with the size);
    the whole folder appears atomically at the end. ``out_dir`` must be absent, empty,
    or a previous data set (it has a ``train.csv``), which is replaced.

    Parameters
    ----------
    out_dir : path-like
        Folder to write (``train.csv``, ``train_eegs/``, ..., ``answer_key/``).
    n_patients : int
        Number of training patients.
    seed : int
        The same seed gives byte-identical files.
    recordings_per_patient : (int, int)
        Inclusive range of EEG files per patient.
    n_test : int
        Number of test recordings (each its own patient).
    save_answer_key : bool
        Write ``answer_key/latent.parquet`` (label_id + ``p_<class>``) and
        ``answer_key/test_latent.parquet`` (eeg_id + ``p_<class>``).
    sub_windows : (int, int)
        Inclusive range of labelled sub-windows per EEG file.
    two_eeg_fraction : float
        Fraction of sessions whose spectrogram serves two EEG files.
    nan_fraction : float
        Fraction of EEG files with NaN stretches.
    status_path : path-like, optional
        ``status/run.json`` to update with progress.

    Returns
    -------
    dict
        Summary: ``out_dir``, counts of patients, recordings, spectrograms, rows and
        test recordings, ``class_counts``, vote statistics and ``seconds``.
    """
    cfg = from_mapping(SyntheticConfig, {"patients": n_patients, "seed": seed, "n_test": n_test,
                                         "recordings_per_patient": recordings_per_patient,
                                         "sub_windows": sub_windows, "two_eeg_fraction": two_eeg_fraction,
                                         "nan_fraction": nan_fraction, "save_answer_key": save_answer_key},
                       "data.synthetic")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "train.csv").exists():
        raise DataError(out_dir, "refusing to replace a non-empty folder that is not a data set "
                                 "(no train.csv); choose an empty or new folder")
    plan_rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0]))
    ids = Ids(np.random.default_rng(np.random.SeedSequence([cfg.seed, 1])))
    sessions = plan_sessions(plan_rng, ids, n_patients=cfg.patients,
                             recordings_per_patient=cfg.recordings_per_patient,
                             sub_windows=cfg.sub_windows, two_eeg_fraction=cfg.two_eeg_fraction)
    return write_dataset(out_dir, sessions, len(sessions), ids, seed=cfg.seed, n_test=cfg.n_test,
                         nan_fraction=cfg.nan_fraction, save_answer_key=cfg.save_answer_key,
                         status_path=status_path)


def write_dataset(out_dir: str | os.PathLike, sessions: Iterable[SessionPlan], n_sessions: int, ids: Ids, *,
                  seed: int, n_test: int, nan_fraction: float, save_answer_key: bool,
                  metadata_only: bool = False, status_path=None) -> dict:
    """Write planned ``sessions`` (any iterable, consumed once) and ``n_test`` test recordings.

    Signals are made and written one session at a time; only the train.csv rows and
    latents are kept (as one small DataFrame per session). With ``metadata_only`` only
    the CSV files (and the answer key) are written, no parquet files. See
    :func:`generate_dataset` for ``out_dir`` and the returned summary.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "train.csv").exists():
        raise DataError(out_dir, "refusing to replace a non-empty folder that is not a data set "
                                 "(no train.csv); choose an empty or new folder")
    started = time.perf_counter()
    with atomic.atomic_path(out_dir) as tmp:
        for sub in (TRAIN_EEG_DIR, TRAIN_SPEC_DIR, TEST_EEG_DIR, TEST_SPEC_DIR):
            (tmp / sub).mkdir(parents=True)
        train, latent = _generate_train(tmp, sessions, n_sessions, seed=seed, nan_fraction=nan_fraction,
                                        metadata_only=metadata_only, status_path=status_path)
        train["label_id"] = [ids.draw("label", 100_000, 4_294_967_295) for _ in range(len(train))]
        latent.insert(0, "label_id", train["label_id"].to_numpy())
        order = np.lexsort((train["eeg_sub_id"].to_numpy(), train["eeg_id"].to_numpy()))
        train = train.iloc[order].reset_index(drop=True)
        latent = latent.iloc[order].reset_index(drop=True)
        train.to_csv(tmp / "train.csv", index=False)

        test_rows, test_latents = [], []
        for i in range(n_test):
            eeg_id = ids.draw("eeg", 500_000, 4_294_967_295)
            spectrogram_id = ids.draw("spectrogram", 300_000, 2_147_483_647)
            patient_id = ids.draw("patient", 10_000, 65_536)
            rng = session_rng(seed, 3, i)
            if metadata_only:
                anchors, times = session_anchors(rng, int(rng.integers(N_CLASSES)), SPEC_WINDOW_S)
                p = anchor_latent(anchors, times, int(SPEC_LEAD_S * FS))
            else:
                p = _generate_test_recording(tmp, rng, eeg_id=eeg_id, spectrogram_id=spectrogram_id,
                                             nan_fraction=nan_fraction)
            test_rows.append({"spectrogram_id": spectrogram_id, "eeg_id": eeg_id, "patient_id": patient_id})
            test_latents.append({"eeg_id": eeg_id, **dict(zip(LATENT_COLUMNS, p.tolist()))})
        test = pd.DataFrame(test_rows, columns=list(TEST_COLUMNS)).astype("int64")
        test.to_csv(tmp / "test.csv", index=False)
        submission = pd.DataFrame({"eeg_id": test["eeg_id"],
                                   **{c: np.full(len(test), 1 / N_CLASSES) for c in VOTE_COLUMNS}})
        submission[list(SUBMISSION_COLUMNS)].to_csv(tmp / "sample_submission.csv", index=False)
        if save_answer_key:
            write_answer_key(tmp, latent, pd.DataFrame(test_latents, columns=["eeg_id", *LATENT_COLUMNS]))
    summary = _summary(out_dir, train, test, time.perf_counter() - started)
    summary["metadata_only"] = bool(metadata_only)
    logger.info("wrote synthetic data set to %s: %d patients, %d recordings, %d spectrograms, "
                "%d labelled rows, %d test recordings in %.1f s%s", out_dir, summary["n_patients"],
                summary["n_recordings"], summary["n_spectrograms"], summary["n_rows"],
                summary["n_test"], summary["seconds"], " (metadata only)" if metadata_only else "")
    return summary


def generate_from_config(cfg: SyntheticConfig, out_dir: str | os.PathLike, *, status_path=None) -> dict:
    """Write the data set that the ``data.synthetic`` section describes (see :func:`generate_dataset`)."""
    return generate_dataset(out_dir, n_patients=cfg.patients, seed=cfg.seed,
                            recordings_per_patient=cfg.recordings_per_patient,
                            n_test=cfg.n_test, save_answer_key=cfg.save_answer_key,
                            sub_windows=cfg.sub_windows, two_eeg_fraction=cfg.two_eeg_fraction,
                            nan_fraction=cfg.nan_fraction, status_path=status_path)


def _generate_train(out: Path, sessions: Iterable[SessionPlan], n_sessions: int, *, seed: int,
                    nan_fraction: float, metadata_only: bool, status_path) -> tuple[pd.DataFrame, pd.DataFrame]:
    from tqdm import tqdm

    # rows as dicts only until a chunk is full, then one DataFrame per chunk (compact)
    rows, latents, row_chunks, latent_chunks = [], [], [], []

    def flush():
        row_chunks.append(pd.DataFrame(rows, columns=list(TRAIN_COLUMNS)))
        latent_chunks.append(pd.DataFrame(latents, columns=list(LATENT_COLUMNS)))
        rows.clear()
        latents.clear()

    for i, session in enumerate(tqdm(sessions, total=n_sessions, desc="synthetic sessions", unit="session",
                                     disable=None, leave=False)):
        session_rows, session_latents = _generate_train_session(
            out, session, session_rng(seed, 2, i), nan_fraction=nan_fraction, metadata_only=metadata_only)
        rows += session_rows
        latents += session_latents
        if len(rows) >= _CHUNK_ROWS:
            flush()
        if status_path is not None and (i % 20 == 0 or i == n_sessions - 1):
            update_status(status_path, "synthetic_data", done=i + 1, total=n_sessions, unit="sessions")
    flush()
    return pd.concat(row_chunks, ignore_index=True), pd.concat(latent_chunks, ignore_index=True)


def _summary(out_dir: Path, train: pd.DataFrame, test: pd.DataFrame, seconds: float) -> dict:
    totals = train[list(VOTE_COLUMNS)].sum(axis=1)
    return {
        "out_dir": str(out_dir),
        "n_patients": int(train["patient_id"].nunique()),
        "n_recordings": int(train["eeg_id"].nunique()),
        "n_spectrograms": int(train["spectrogram_id"].nunique()),
        "n_rows": int(len(train)),
        "n_test": int(len(test)),
        "class_counts": {c: int((train["expert_consensus"] == c).sum()) for c in CLASSES},
        "votes_min": int(totals.min()), "votes_max": int(totals.max()),
        "fraction_below_10_votes": float((totals < 10).mean()),
        "seconds": round(seconds, 2),
    }
