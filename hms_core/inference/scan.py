"""The window arithmetic of ``hms annotate``: where each 50 s window and its 600 s
spectrogram context sit in a recording, how much of them is padding, and the recording's
Kaggle-style spectrogram and cleaning, each computed in bounded pieces.

Window ``k`` scores the 10 s from ``onset_s = k * step_s``: its 50 s EEG window starts
20 s earlier (the labelled centre of a Kaggle window), and its 600 s spectrogram context is
centred on the same point, as in the Kaggle layout (and the synthetic data set), where the
spectrogram window starts 275 s before the EEG window. Parts outside the recording are
NaN: cleaning zeroes them as long gaps and :func:`~hms_core.signal.frontend.kaggle_spec_image`
gives NaN spectrogram cells the log floor, as it does for gaps in training data.
"""
from __future__ import annotations

import logging
import math

import numpy as np

from hms_core.contract import (CENTER_S, N_EEG_CHANNELS, N_RAW_CHANNELS, SAMPLING_RATE_HZ, SPEC_COLUMNS, SPEC_STEP_S,
                               SPEC_WINDOW_ROWS, SPEC_WINDOW_S, WINDOW_S)
from hms_core.data.recording import Recording
from hms_core.errors import DataError
from hms_core.signal.ica import RecordingCleaner, clean_recording, fit_cleaner
from hms_core.signal.spectrogram import kaggle_spectrogram

logger = logging.getLogger(__name__)

LEAD_S = (WINDOW_S - CENTER_S) / 2  # 20 s of the window before its scored centre
SPEC_LEAD_S = (SPEC_WINDOW_S - WINDOW_S) / 2  # 275 s of spectrogram before the EEG window
ROW_SAMPLES = SPEC_STEP_S * SAMPLING_RATE_HZ  # 400 samples per spectrogram row
FIT_SEGMENT_S = 60.0  # a recording-level cleaning is fitted on segments this long ...
FIT_MAX_S = 600.0  # ... evenly spread, at most this much in all


def scan_onsets(duration_s: float, step_s: float) -> np.ndarray:
    """Onsets (s) of the scored 10 s segments: ``0, step_s, ...`` while inside the recording."""
    return np.arange(math.ceil(duration_s / step_s)) * float(step_s)


def window_start(onset_s: float) -> int:
    """First sample (200 Hz) of the 50 s window scoring the 10 s from ``onset_s``; may be < 0."""
    return int(round((onset_s - LEAD_S) * SAMPLING_RATE_HZ))


def n_outside(start: int, length: int, n_total: int) -> int:
    """How many of ``[start, start + length)`` lie outside ``[0, n_total)`` (samples or rows)."""
    return max(0, -start) + max(0, start + length - n_total)


def spec_first_row(onset_s: float) -> int:
    """First spectrogram row (time ``2k + 1`` s) of the 600 s context of a window; may be < 0.

    The Kaggle rule of :func:`hms_core.data.io.spectrogram_first_row` (first row at or after
    the context's start), without its clamp at 0, so the rows before the recording are counted
    as padding.
    """
    offset_s = onset_s - LEAD_S - SPEC_LEAD_S
    return math.ceil((offset_s - SPEC_STEP_S / 2) / SPEC_STEP_S)


def spec_context(power: np.ndarray, onset_s: float) -> tuple[np.ndarray, float]:
    """The ``(300, 400)`` context of a window, NaN outside ``power``, and its padding in s."""
    first = spec_first_row(onset_s)
    out = np.full((SPEC_WINDOW_ROWS, len(SPEC_COLUMNS)), np.nan, dtype=np.float32)
    lo, hi = max(first, 0), min(first + SPEC_WINDOW_ROWS, len(power))
    if hi > lo:
        out[lo - first:hi - first] = power[lo:hi]
    return out, float(n_outside(first, SPEC_WINDOW_ROWS, len(power)) * SPEC_STEP_S)


def recording_spectrogram(rec: Recording, *, chunk_rows: int = 300) -> np.ndarray:
    """:func:`kaggle_spectrogram` of the whole recording, ``(n_samples // 400, 400)`` float32.

    Computed ``chunk_rows`` rows (600 s) at a time, each chunk read with two extra rows on
    either side so that the rows kept never see a chunk edge: the result equals one call on
    the whole recording (it reflects at the recording's own ends only). Memory: the chunk
    read plus the output (0.8 MB per 10 minutes of recording).
    """
    n_rows = rec.n_samples // ROW_SAMPLES
    power = np.full((n_rows, len(SPEC_COLUMNS)), np.nan, dtype=np.float32)
    margin = 2
    for k0 in range(0, n_rows, chunk_rows):
        k1 = min(k0 + chunk_rows, n_rows)
        lead = min(k0, margin)
        first_row = k0 - lead
        stop = rec.n_samples if k1 + margin >= n_rows else (k1 + margin) * ROW_SAMPLES
        chunk = rec.read(first_row * ROW_SAMPLES, stop)
        rows = kaggle_spectrogram(chunk, len(chunk) // ROW_SAMPLES)
        power[k0:k1] = rows[lead:lead + k1 - k0]
    return power


class WindowCleaner:
    """Cleans each window the way the training windows were cleaned (``preprocessing`` of the model).

    ``ica.fit_on`` "window": :func:`clean_recording` on each 50 s window by itself. "recording":
    :func:`fit_cleaner` once on the recording (the whole of it up to :data:`FIT_MAX_S`; longer
    ones on :data:`FIT_MAX_S` / :data:`FIT_SEGMENT_S` evenly spaced segments joined by NaN gaps,
    which the fit leaves out), then that cleaning applied to each window.
    """

    def __init__(self, rec: Recording, cfg):
        self.cfg = cfg
        self.cleaner: RecordingCleaner | None = None
        self.fit_s = 0.0
        if cfg.ica.fit_on == "recording":
            sample = self._fit_sample(rec)
            self.cleaner = fit_cleaner(sample, cfg, path=rec.path)
            self.fit_s = float(np.isfinite(sample[:, 0]).sum()) / SAMPLING_RATE_HZ
            logger.info("%s: cleaning (ICA %s) fitted on %.0f s of the recording", rec.path.name,
                        self.cleaner.info["ica"].get("status", "?"), self.fit_s)

    def _fit_sample(self, rec: Recording) -> np.ndarray:
        if rec.duration_s <= FIT_MAX_S:
            return rec.read(0, rec.n_samples)
        n_seg = int(FIT_MAX_S // FIT_SEGMENT_S)
        seg = int(FIT_SEGMENT_S * SAMPLING_RATE_HZ)
        gap = np.full((int((self.cfg.nan.max_interp_s + 1) * SAMPLING_RATE_HZ), N_RAW_CHANNELS), np.nan,
                      dtype=np.float32)
        starts = np.linspace(0, rec.n_samples - seg, n_seg).astype(int)
        parts = []
        for s in starts:
            parts += [rec.read(int(s), int(s) + seg), gap]
        return np.concatenate(parts[:-1])

    def describe(self) -> str:
        ica = "ICA " + (f"on ({self.cfg.ica.method})" if self.cfg.ica.enabled else "off")
        if self.cleaner is None:
            return f"{ica}; fitted on each 50 s window (preprocessing.ica.fit_on: window)"
        return f"{ica}; fitted once on {self.fit_s:.0f} s of the recording (preprocessing.ica.fit_on: recording)"

    def clean(self, window_uv: np.ndarray) -> np.ndarray:
        """Cleaned float32 ``(10000, 20)``; raises DataError when the window's EEG is all NaN."""
        if self.cleaner is None:
            return clean_recording(window_uv, self.cfg)[0]
        if np.isnan(window_uv[:, :N_EEG_CHANNELS]).all():
            raise DataError("<window>", "all EEG values are NaN")
        return self.cleaner.apply(window_uv)

