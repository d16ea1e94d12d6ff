"""Recording-level cleaning: NaN gaps, DC removal and ICA artifact removal (numpy / MNE).

This is the part of preprocessing that cannot go inside the ONNX graph. First the
high-passed EKG channel is regressed out of each EEG channel (optional, default on). Then
ICA is fitted once per recording on a high-passed (1 Hz) copy of the 19 EEG channels, and
components are labelled by ``labeler``: "iclabel" (:mod:`hms_core.signal.iclabel`, the ICLabel
network's class probabilities against the ``reject`` thresholds, on the average-referenced
extended-infomax decomposition it was trained on), or "rules", three transparent rules, each
with a configurable threshold:

- cardiac: ``|corr(component, EKG)| >= ekg_corr`` (both high-passed);
- eye: mixing weights concentrated on Fp1/Fp2 (share of squared weights >= eye_frontal_share)
  and power mostly below ``eye_max_hz`` (share >= eye_low_share);
- muscle: power mostly above ``muscle_min_hz`` (share >= muscle_hf_share) with a flat
  spectrum there (spectral flatness >= muscle_flatness, so mains lines are not taken).

The rejected components are subtracted from the unfiltered (DC-removed) data.
"""
from __future__ import annotations

import functools
import logging
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import signal as sp_signal

from hms_core.config import check_option
from hms_core.contract import CHANNEL_INDEX, EEG_CHANNELS, EKG_CHANNEL, N_RAW_CHANNELS, SAMPLING_RATE_HZ
from hms_core.errors import ConfigError, DataError
from hms_core.signal import iclabel
from hms_core.signal.ica_solver import fit_picard
from hms_core.signal.nan import interpolate_short_gaps

logger = logging.getLogger(__name__)

IcaMethod = Literal["picard", "fastica"]
ICA_METHODS = typing.get_args(IcaMethod)
IcaFitOn = Literal["recording", "window"]
ICA_FIT_ON = typing.get_args(IcaFitOn)
IcaLabeler = Literal["iclabel", "rules"]
ICA_LABELERS = typing.get_args(IcaLabeler)
FRONTAL_CHANNELS = ("Fp1", "Fp2")
_FLAT_STD_UV = 1e-3  # a channel with less spread than this is treated as flat
_DEFAULT_TOL = {"rules": 1e-3, "iclabel": 1e-4}  # IcaConfig.tol None: the solver tolerance per labeler
_ACTIVE_FRACTION = 0.1  # spectral rules look at each component's loudest 10% of 2 s segments
_EKG_COLUMN = CHANNEL_INDEX[EKG_CHANNEL]
_APPLY_ROWS = 8192  # rows per block of RecordingCleaner.apply_filled
_HIGHPASS_ROWS = 4  # channels per FFT batch of _highpass_rows
if _EKG_COLUMN != N_RAW_CHANNELS - 1:  # RecordingCleaner.apply_filled reads EEG and EKG as one block
    raise ImportError("hms_core.signal.ica expects the EKG as the last raw channel")


@dataclass
class IcaConfig:
    """ICA artifact removal, once per recording or once per labelled window.

    Parameters
    ----------
    enabled : bool
        Run ICA at all; default True.
    fit_on : {"recording", "window"}
        What the cleaning (NaN gaps, median, EKG regression, ICA) is fitted on when the
        window stores are written. "recording" (default): once on the whole recording
        (often many minutes), before its windows are cut. "window": on each labelled 50 s
        window by itself, exactly as ``hms predict`` cleans a 50 s test file, so training
        and prediction see the same cleaning. ``hms predict`` always fits on the 50 s it
        is given; with "recording" it logs that skew.
    method : {"picard", "fastica"}
        ICA solver; default "picard".
    n_components : int | None
        Components to fit; None (default) uses the rank of the data (at most 19).
    highpass_hz : float
        High-pass (Hz) of the copy ICA is fitted on; default 1.0.
    labeler : {"iclabel", "rules"}
        How components are picked for removal. "rules" (default): the three rules below,
        on a picard (extended=False, ortho=True) decomposition of the high-passed copy.
        "iclabel": the ICLabel network (mne-icalabel, CPU) on the decomposition it was
        trained on (extended-infomax-equivalent picard of the average-referenced copy),
        rejecting by ``reject``; needs ``method: picard``.
    reject : dict of str to float
        ICLabel labeler: a component is removed when its probability of one of these classes
        is >= the threshold (0-1); classes muscle, eye, heart, line_noise, channel_noise,
        other; a class not listed is never removed. Default 0.8 for each but other.
    ekg_corr : float
        Cardiac rule: reject when |corr with EKG| >= this; default 0.6.
    eye_frontal_share, eye_low_share, eye_max_hz : float
        Eye rule: Fp1+Fp2 share of squared mixing weights >= 0.45, and share of power below
        ``eye_max_hz`` (4 Hz) >= 0.6.
    muscle_min_hz, muscle_hf_share, muscle_flatness : float
        Muscle rule: share of power above ``muscle_min_hz`` (25 Hz) >= 0.4 and spectral
        flatness (geometric / arithmetic mean of the PSD) above it >= 0.3.
    ekg_regression : bool
        Before ICA, regress the high-passed EKG channel out of each EEG channel; default True.
        (An EKG leak far below the background is out of ICA's reach, and the channel is given.)
    max_removed : int
        At most this many components are removed (highest scores first); default 6.
    min_duration_s : float
        Recordings with fewer finite seconds skip ICA with a warning; default 20.
    max_fit_samples : int
        ICA is fitted on at most this many samples (evenly spaced over the valid ones);
        default 4000 (20 s worth: the solver's cost grows with it, the artifact reduction
        measured by tests/signal/test_ica.py does not).
    max_iter : int
        Iteration limit of the ICA solver; default 300.
    tol : float | None
        Convergence tolerance of the solver; None (default) takes 1e-3 with the "rules"
        labeler and 1e-4 with "iclabel". With the rules, 1e-3 halves the solver time of 1e-4
        for no systematic change in the artifact reduction of tests/signal/test_ica.py over
        six synthetic recordings (picard's own 1e-7 costs about twice the iterations of 1e-4).
        With ICLabel, 1e-3 loses the blink component of tests/signal/test_iclabel.py's recording.
    random_state : int
        Seed of the ICA solver; default 0.
    """

    enabled: bool = True
    fit_on: IcaFitOn = "recording"
    method: IcaMethod = "picard"
    n_components: int | None = None
    highpass_hz: float = 1.0
    labeler: IcaLabeler = "rules"
    reject: dict[str, float] = field(default_factory=iclabel.default_reject)
    ekg_corr: float = 0.6
    eye_frontal_share: float = 0.45
    eye_low_share: float = 0.6
    eye_max_hz: float = 4.0
    muscle_min_hz: float = 25.0
    muscle_hf_share: float = 0.4
    muscle_flatness: float = 0.3
    ekg_regression: bool = True
    max_removed: int = 6
    min_duration_s: float = 20.0
    max_fit_samples: int = 4000
    max_iter: int = 300
    tol: float | None = None
    random_state: int = 0

    def validate(self, path: str = "preprocessing.ica") -> None:
        """Raise ConfigError naming ``<path>.<key>`` for a solver, size or threshold out of range."""
        check_option(f"{path}.method", self.method, ICA_METHODS)
        check_option(f"{path}.fit_on", self.fit_on, ICA_FIT_ON)
        check_option(f"{path}.labeler", self.labeler, ICA_LABELERS)
        iclabel.check_reject(self.reject, f"{path}.reject")
        if self.labeler == "iclabel" and self.method != "picard":
            raise ConfigError(f"{path}.method: {self.method!r} cannot give ICLabel the extended-infomax "
                              f"decomposition it was trained on; use 'picard' with labeler 'iclabel'")
        if self.n_components is not None and not 2 <= self.n_components <= len(EEG_CHANNELS):
            raise ConfigError(f"{path}.n_components: {self.n_components!r} must be null or in "
                              f"[2, {len(EEG_CHANNELS)}]")
        if self.tol is not None and not self.tol > 0:
            raise ConfigError(f"{path}.tol: {self.tol!r} must be null or > 0")
        for key in ("ekg_corr", "eye_frontal_share", "eye_low_share", "muscle_hf_share", "muscle_flatness"):
            if not 0 < getattr(self, key) <= 1:
                raise ConfigError(f"{path}.{key}: {getattr(self, key)!r} must lie in (0, 1]")


def clean_recording(raw_uv: np.ndarray, cfg, *, eeg_id: int | None = None,
                    path=None) -> tuple[np.ndarray, dict[str, Any]]:
    """Clean one whole recording before its windows are cut.

    Parameters
    ----------
    raw_uv : np.ndarray
        ``(n_samples, 20)`` in ``RAW_CHANNELS`` order, uV, 200 Hz; may contain NaN (and
        +-inf, cleaned as NaN).
    cfg : PreprocessConfig
        Uses its ``nan`` (:class:`NanConfig`) and ``ica`` (:class:`IcaConfig`) sections.
    eeg_id, path
        Named in errors and warnings.

    Returns
    -------
    cleaned_uv : np.ndarray
        float32 ``(n_samples, 20)``: short NaN gaps interpolated, each channel's median
        removed, long gaps set to 0, ICA artifact components subtracted from the EEG
        channels (the EKG channel is only DC-corrected).
    info : dict
        ``nan_fraction`` (of EEG values), ``zeroed_fraction`` (left as 0 after interpolation),
        ``ica`` (status, method, n_components, removed: list of {component, reasons, scores}).

    Raises
    ------
    DataError
        Wrong shape, or no finite EEG value at all.
    """
    cleaner, filled, long_gap = _fit_cleaner(raw_uv, cfg, eeg_id=eeg_id, path=path)
    return cleaner.apply_filled(filled, long_gap), dict(cleaner.info)


def _dc_removed(raw_uv: np.ndarray, cfg, median_uv: np.ndarray | None = None,
                missing: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Short gaps interpolated, ``median_uv`` (default: the data's own) removed, long gaps 0.

    Returns ``(filled (n, 20) float32, long_gap (n, 20) bool, median_uv (20,) float64)``;
    ``filled`` is computed in float64 and rounded once. ``missing``: ``~np.isfinite(raw_uv)``
    when the caller has it. Only the channels with a missing value are interpolated (in
    float64, one at a time); the others have the median removed a block of rows at a time.
    """
    if missing is None:
        missing = ~np.isfinite(raw_uv)
    n, n_channels = raw_uv.shape
    gappy = np.flatnonzero(missing.any(axis=0))
    max_gap = int(round(cfg.nan.max_interp_s * SAMPLING_RATE_HZ))
    interpolated = {c: interpolate_short_gaps(raw_uv[:, c:c + 1], max_gap_samples=max_gap)[:, 0] for c in gappy}
    if median_uv is None:
        median_uv = np.zeros(n_channels)
        complete = np.setdiff1d(np.arange(n_channels), gappy)
        if n and len(complete):
            median_uv[complete] = _column_medians_of(raw_uv, complete)
        for c, values in interpolated.items():
            values = values[~np.isnan(values)]
            if len(values):  # an all-NaN channel keeps median 0
                median_uv[c] = _median(values)
    filled = np.empty(raw_uv.shape, dtype=np.float32)
    for start in range(0, n, _APPLY_ROWS):
        rows = slice(start, start + _APPLY_ROWS)
        np.subtract(raw_uv[rows], median_uv, out=filled[rows], casting="same_kind")  # in float64, rounded once
    long_gap = np.zeros(raw_uv.shape, dtype=bool)
    for c, values in interpolated.items():
        values -= median_uv[c]
        long_gap[:, c] = gap = np.isnan(values)
        values[gap] = 0.0
        filled[:, c] = values
    return filled, long_gap, median_uv


def _transposed(x: np.ndarray, dtype=None, out: np.ndarray | None = None) -> np.ndarray:
    """``x.T`` of a 2-D ``x`` copied into ``out`` (default: a new C-ordered array of ``dtype``)
    in blocks of rows that stay in cache: numpy's own transposing copy of a long recording
    is about twice slower."""
    if out is None:
        out = np.empty(x.shape[::-1], dtype=dtype)
    step = 1024
    for start in range(0, len(x), step):
        out[:, start:start + step] = x[start:start + step].T
    return out


def _column_medians_of(x: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``np.median(x[:, cols].astype(np.float64), axis=0)`` of a NaN-free ``x (n, C)``, bit for bit, faster.

    Floyd-Rivest selection: the middle order statistics lie, almost surely, between two
    order statistics of an evenly spaced sample of about 1000 values; one pass counts the
    values below that band and keeps those inside (a few percent), and only those are
    partitioned. When the band misses them, the whole column is partitioned. The counting and
    the band are read a block of rows at a time (no transposed copy of the recording).
    """
    n = len(x)
    ranks = [n // 2] if n % 2 else [n // 2 - 1, n // 2]
    sample = np.sort(x[::max(1, n // 1000)][:, cols], axis=0)  # (m, c)
    m = len(sample)
    if n < 5000 or m < 100:
        return np.array([_middle_mean(np.ascontiguousarray(x[:, c]), ranks) for c in cols])
    spread = 3 * int(np.sqrt(m))  # sample ranks: the band is about +-9% of the data
    lo, hi = sample[max(m // 2 - spread, 0)], sample[min(m // 2 + spread, m - 1)]  # (c,)
    n_below = np.zeros(len(cols), dtype=np.int64)
    pieces: list[list[np.ndarray]] = [[] for _ in cols]
    for start in range(0, n, _APPLY_ROWS):
        block = x[start:start + _APPLY_ROWS][:, cols]
        n_below += np.count_nonzero(block < lo, axis=0)
        inside = (block >= lo) & (block <= hi)
        for j, piece in enumerate(pieces):
            piece.append(block[inside[:, j], j])
    out = np.empty(len(cols))
    for j, c in enumerate(cols):
        band = np.concatenate(pieces[j])
        if n_below[j] <= ranks[0] and ranks[-1] < n_below[j] + len(band):
            out[j] = _middle_mean(band, [r - n_below[j] for r in ranks])
        else:  # the band missed the middle: select from the whole column
            out[j] = _middle_mean(np.ascontiguousarray(x[:, c]), ranks)
    return out


def _middle_mean(values: np.ndarray, ranks: list[int]) -> float:
    """Mean, in float64, of the order statistics ``ranks`` of ``values``."""
    return float(np.mean(np.partition(values, ranks)[ranks].astype(np.float64)))


def _median(x: np.ndarray) -> float:
    """``np.median(x.astype(np.float64))`` of a 1-D ``x`` without NaN, bit for bit, faster
    (:func:`_column_medians_of` of one column)."""
    return float(_column_medians_of(x[:, None], np.array([0]))[0])


def fit_cleaner(raw_uv: np.ndarray, cfg, *, eeg_id: int | None = None, path=None) -> "RecordingCleaner":
    """Fit :func:`clean_recording`'s cleaning on ``raw_uv`` without applying it.

    The returned :class:`RecordingCleaner` applies the same cleaning (the median and the
    artifact model fitted here) to any stretch of the recording, so a long recording can be
    fitted on a bounded sample and cleaned piece by piece. Arguments and errors as
    :func:`clean_recording`.
    """
    return _fit_cleaner(raw_uv, cfg, eeg_id=eeg_id, path=path)[0]


def _fit_cleaner(raw_uv: np.ndarray, cfg, *, eeg_id: int | None = None,
                 path=None) -> tuple["RecordingCleaner", np.ndarray, np.ndarray]:
    """:func:`fit_cleaner`, plus the gap-filled, median-removed data and its long-gap mask
    (``_dc_removed``), so that cleaning the same recording need not compute them again."""
    raw_uv = np.asarray(raw_uv)
    where = path if path is not None else "<recording>"
    if raw_uv.ndim != 2 or raw_uv.shape[1] != N_RAW_CHANNELS:
        raise DataError(where, f"expected (n_samples, {N_RAW_CHANNELS}) samples, got {raw_uv.shape}", eeg_id=eeg_id)
    n_eeg = len(EEG_CHANNELS)
    missing = ~np.isfinite(raw_uv)  # +-inf is missing like NaN (signal.nan)
    n_missing = np.count_nonzero(missing, axis=0)  # per channel
    n_eeg_values = len(raw_uv) * n_eeg
    if n_missing[:n_eeg].sum() == n_eeg_values:
        raise DataError(where, "all EEG values are NaN", eeg_id=eeg_id)
    filled, long_gap, median_uv = _dc_removed(raw_uv, cfg, missing=missing)
    gaps = bool(n_missing.any())
    info: dict[str, Any] = {
        "nan_fraction": float(n_missing[:n_eeg].sum() / n_eeg_values),
        "zeroed_fraction": float(long_gap[:, :n_eeg].mean()) if gaps else 0.0,
    }
    model = None
    if cfg.ica.enabled:
        valid = ~long_gap[:, :n_eeg].any(axis=1) if gaps else np.ones(len(raw_uv), dtype=bool)
        model, info["ica"] = fit_artifact_model(
            filled[:, :n_eeg], ekg_uv=filled[:, CHANNEL_INDEX[EKG_CHANNEL]], valid=valid,
            cfg=cfg.ica, label=_label(eeg_id, path))
    else:
        info["ica"] = {"status": "disabled", "removed": []}
    return RecordingCleaner(cfg=cfg, median_uv=median_uv, model=model, info=info), filled, long_gap


@dataclass
class RecordingCleaner:
    """The fitted cleaning of one recording (:func:`fit_cleaner`), applicable to parts of it.

    ``apply`` interpolates short NaN gaps, removes the fitted per-channel median (uV), sets
    long gaps to 0 and subtracts the fitted artifact model (EKG regression and rejected ICA
    components) from the EEG channels.
    """

    cfg: Any  # PreprocessConfig: its nan and ica sections
    median_uv: np.ndarray  # (20,)
    model: "ArtifactModel | None"
    info: dict[str, Any]

    def apply(self, raw_uv: np.ndarray) -> np.ndarray:
        """Cleaned float32 copy of ``raw_uv (n, 20)`` (uV, 200 Hz, RAW_CHANNELS order, NaN allowed)."""
        filled, long_gap, _ = _dc_removed(np.asarray(raw_uv), self.cfg, self.median_uv)
        return self.apply_filled(filled, long_gap)

    def apply_filled(self, filled: np.ndarray, long_gap: np.ndarray) -> np.ndarray:
        """:meth:`apply` from ``_dc_removed``'s output: ``filled`` cleaned in place and returned."""
        n_eeg = len(EEG_CHANNELS)
        ekg_median = None
        if self.model is not None and self.model.ekg_coef_uv is not None:
            ekg_median = _median(np.ascontiguousarray(filled[:, _EKG_COLUMN]))
        factors = None if self.model is None else self.model.factored(n_eeg, ekg_median)
        if factors is None:
            return filled
        left, shift, right = factors
        source = filled[:, :len(left)]  # the EEG, and the EKG (the last raw column) when regressed
        for start in range(0, len(filled), _APPLY_ROWS):  # blocks that stay in cache
            rows = slice(start, start + _APPLY_ROWS)
            correction = (source[rows] @ left + shift) @ right  # float64
            np.subtract(filled[rows, :n_eeg], correction, out=filled[rows, :n_eeg], casting="same_kind")
        if long_gap.any():
            filled[long_gap] = 0.0
        return filled


@dataclass
class ArtifactModel:
    """The fitted, linear cleaning of one recording's EEG channels.

    ``apply`` computes ``x - b * (ekg - median(ekg))`` (EKG regression, the weights ``b``
    fitted on high-passed copies, when fitted) and then removes
    the rejected ICA components: ``y - K (y - offset)`` on the non-flat channels, exactly as
    MNE's ``ICA.apply`` with all PCA components kept. Being linear, it can be applied to
    parts of a signal separately (the quality tests use this to measure how much of an
    injected artifact and of the clean signal survive).
    """

    channels: np.ndarray  # (k,) EEG channel indices ICA was fitted on
    highpass_hz: float
    ekg_coef_uv: np.ndarray | None = None  # (19,) per-channel EKG regression weight
    removal: np.ndarray | None = None  # (k, k) K: channel-space operator of the rejected components
    offset_uv: np.ndarray | None = None  # (k,)
    removal_factors: tuple[np.ndarray, np.ndarray] | None = None  # (k, r), (r, k) with K their product

    def apply(self, eeg_uv: np.ndarray, ekg_uv: np.ndarray | None) -> np.ndarray:
        """Cleaned float64 copy of ``eeg_uv (n, 19)`` given the EKG channel ``ekg_uv (n,)`` in uV."""
        x = np.asarray(eeg_uv, dtype=np.float64)
        with_ekg = self.ekg_coef_uv is not None and ekg_uv is not None
        factors = self.factored(x.shape[1], float(np.median(ekg_uv)) if with_ekg else None)
        if factors is None:
            return x.copy()
        left, shift, right = factors
        source = np.column_stack([x, ekg_uv]) if with_ekg else x
        return x - (source @ left + shift) @ right

    def factored(self, n_eeg: int, ekg_median_uv: float | None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The cleaning as a low-rank affine map of the channels, or None for the identity.

        Returns ``(left, shift, right)``: the cleaned EEG is ``x - (source @ left + shift)
        @ right``, ``source`` the EEG ``x (n, n_eeg)`` and, when ``ekg_median_uv`` (the
        median of that EKG) is given and an EKG regression was fitted, the EKG as one more
        column. With ``K = A U`` (the removal factors; ``A = K, U = I`` without them), ``b``
        the regression weights and ``e`` the EKG minus its median, on the fitted channels G
        ``y = x - e b`` then ``y_G - (y_G - offset) K^T`` is ``x_G - S A^T - e b_G`` with the
        component time courses ``S = x_G U^T - e (U b_G)^T - (U offset)^T``; elsewhere ``x - e b``.
        """
        with_ekg = self.ekg_coef_uv is not None and ekg_median_uv is not None
        if not with_ekg and self.removal is None:
            return None
        ch = self.channels
        if self.removal is None:
            mixing, unmixing = np.zeros((len(ch), 0)), np.zeros((0, len(ch)))
        elif self.removal_factors is not None:
            mixing, unmixing = self.removal_factors
        else:
            mixing, unmixing = self.removal, np.eye(len(ch))
        r = len(unmixing)
        left = np.zeros((n_eeg + with_ekg, r + with_ekg))
        shift = np.zeros(r + with_ekg)
        right = np.zeros((r + with_ekg, n_eeg))
        left[ch, :r] = unmixing.T
        right[:r, ch] = mixing.T
        if r:
            shift[:r] = -(unmixing @ self.offset_uv)
        if with_ekg:
            u_b = unmixing @ self.ekg_coef_uv[ch]
            left[n_eeg, :r] = -u_b
            left[n_eeg, r] = 1.0
            shift[:r] += ekg_median_uv * u_b
            shift[r] = -ekg_median_uv
            right[r] = self.ekg_coef_uv
        return left, shift, right


def highpass(x_uv: np.ndarray, l_freq_hz: float) -> np.ndarray:
    """Zero-phase FIR high-pass of ``x_uv (n, C)`` at ``l_freq_hz``, returned as float64.

    The kernel and the edge padding (a limited odd reflection) are those of MNE's
    ``filter_data`` with its defaults; the convolution is one float32 FFT product per channel
    over the whole padded recording, about 4x less CPU than MNE's float64 overlap-add, and
    equal to it within float32 rounding (about 1e-6 of the signal's range).
    """
    rows = np.ascontiguousarray(np.asarray(x_uv).T, dtype=np.float32)
    return _highpass_rows(rows, l_freq_hz).T.astype(np.float64)


def _highpass_rows(x_uv: np.ndarray, l_freq_hz: float, out: np.ndarray | None = None) -> np.ndarray:
    """:func:`highpass` of the rows of a float32 ``x_uv (C, n)``: float32 ``(C, n)`` in ``out``
    (default: a new array; ``out`` may be ``x_uv`` itself).

    A few channels at a time: the padded copy and the spectra are then a fraction of the
    recording's size (fewer fresh pages on a long recording), and the FFT of each row is the
    same whatever the batch.
    """
    import scipy.fft
    import torch

    kernel = _highpass_kernel(float(l_freq_hz))
    x = torch.from_numpy(np.ascontiguousarray(x_uv, dtype=np.float32))  # (C, n)
    n_channels, n_times = x.shape
    n_edge = max(min(len(kernel), n_times) - 1, 0)
    n_fft = scipy.fft.next_fast_len(n_times + 2 * n_edge + len(kernel) - 1, real=True)  # linear, not circular
    kernel_spectrum = torch.fft.rfft(torch.from_numpy(kernel.astype(np.float32)), n=n_fft)
    shift = (len(kernel) - 1) // 2 + n_edge
    if out is None:
        out = np.empty((n_channels, n_times), dtype=np.float32)
    for start in range(0, n_channels, _HIGHPASS_ROWS):  # each block is read (padded) before it is written
        rows = x[start:start + _HIGHPASS_ROWS]
        padded = torch.cat([2 * rows[:, :1] - rows[:, 1:n_edge + 1].flip(1), rows,
                            2 * rows[:, -1:] - rows[:, n_times - n_edge - 1:n_times - 1].flip(1)], dim=1)
        spectrum = torch.fft.rfft(padded, n=n_fft)
        del padded
        spectrum *= kernel_spectrum
        out[start:start + _HIGHPASS_ROWS] = torch.fft.irfft(spectrum, n=n_fft)[:, shift:shift + n_times].numpy()
    return out


@functools.lru_cache(maxsize=4)
def _highpass_kernel(l_freq_hz: float) -> np.ndarray:
    """The kernel ``mne.filter.filter_data(..., l_freq=l_freq_hz, h_freq=None)`` designs at 200 Hz."""
    import mne

    return mne.filter.create_filter(None, SAMPLING_RATE_HZ, l_freq=l_freq_hz, h_freq=None, verbose=False)


def remove_artifacts(eeg_uv: np.ndarray, *, ekg_uv: np.ndarray | None, valid: np.ndarray,
                     cfg: IcaConfig, label: str = "recording") -> tuple[np.ndarray, dict[str, Any]]:
    """Fit :func:`fit_artifact_model` on ``eeg_uv (n, 19)`` and apply it; returns (cleaned, info)."""
    model, info = fit_artifact_model(eeg_uv, ekg_uv=ekg_uv, valid=valid, cfg=cfg, label=label)
    return model.apply(eeg_uv, ekg_uv), info


def fit_artifact_model(eeg_uv: np.ndarray, *, ekg_uv: np.ndarray | None, valid: np.ndarray,
                       cfg: IcaConfig, label: str = "recording") -> tuple[ArtifactModel, dict[str, Any]]:
    """Fit the cleaning of one recording: EKG regression, then ICA with the rejection rules.

    Parameters
    ----------
    eeg_uv : np.ndarray
        ``(n, 19)`` DC-removed EEG in uV, no NaN.
    ekg_uv : np.ndarray | None
        ``(n,)`` the EKG channel in uV, or None.
    valid : np.ndarray
        ``(n,)`` bool, samples the fit may use (not inside a zeroed NaN gap).

    Returns
    -------
    model : ArtifactModel
        Identity (nothing fitted) when ICA falls back: too short, too flat, rank too low,
        or the solver fails; a warning says why and ``info["status"]`` records it.
    info : dict
        status, method, labeler, n_components, ekg_regression, removed: one dict per removed
        component: ``component``, ``labeler``, ``reasons`` and, for "rules", the rule scores,
        for "iclabel", ``class``, ``probability`` and all class ``probabilities``.

    Notes
    -----
    The channels are handled channel-major (``(channels, n)``) from here on. With the
    "rules" labeler and picard, the ICA is :func:`hms_core.signal.ica_solver.fit_picard`
    (MNE's ``ICA.fit`` arithmetic without its Raw objects); "iclabel" and fastica go through
    ``mne.preprocessing.ICA``.
    """
    base: dict[str, Any] = {"method": cfg.method, "labeler": cfg.labeler, "n_components": 0,
                            "ekg_regression": False, "removed": []}
    n_valid = int(valid.sum())
    if n_valid < cfg.min_duration_s * SAMPLING_RATE_HZ:
        return ArtifactModel(np.arange(0), cfg.highpass_hz), _skip(
            base, f"too short for ICA ({n_valid / SAMPLING_RATE_HZ:.1f} s finite)", label)
    all_valid = n_valid == len(valid)
    n_eeg = eeg_uv.shape[1]
    # one float32 (channels, n) copy: what the high-pass filters, and the spread checks
    x = np.empty((n_eeg + (ekg_uv is not None), len(eeg_uv)), dtype=np.float32)
    _transposed(eeg_uv, out=x[:n_eeg])
    if ekg_uv is not None:
        x[n_eeg] = ekg_uv
    spread = np.array([(row if all_valid else row[valid]).astype(np.float64).std() for row in x])
    good = np.flatnonzero(spread[:n_eeg] > _FLAT_STD_UV)
    model = ArtifactModel(good, cfg.highpass_hz)
    if len(good) < 3:
        return model, _skip(base, f"too flat for ICA ({len(good)} non-flat channels)", label)
    k = len(good)
    with_ekg = ekg_uv is not None and spread[n_eeg] > _FLAT_STD_UV
    picks = np.append(good, n_eeg) if with_ekg else good
    x = x if len(picks) == len(x) else x[picks]
    hp = _highpass_rows(x, cfg.highpass_hz, out=x)  # float32 (k [+1], n), in place
    del x
    if not all_valid:  # from here on only the valid samples, in order
        hp = hp[:, valid]
    ekg_hp = hp[k].astype(np.float64) if with_ekg else None
    coef = None  # (k,) EKG regression weights of the good channels
    if with_ekg and cfg.ekg_regression:
        coef = _dot64(hp[:k], ekg_hp) / (ekg_hp @ ekg_hp)
        model.ekg_coef_uv = np.zeros(n_eeg)
        model.ekg_coef_uv[good] = coef
        base["ekg_regression"] = True

    def decomposed(cols) -> np.ndarray:
        """``(k, len(cols))`` float64: the high-passed, EKG-regressed EEG ICA decomposes
        (average-referenced for ICLabel) at the samples ``cols``."""
        out = hp[:k, cols].astype(np.float64)
        if coef is not None:
            out -= coef[:, None] * ekg_hp[cols]
        return out - out.mean(axis=0) if cfg.labeler == "iclabel" else out

    decim = max(1, int(np.ceil(n_valid / cfg.max_fit_samples)))
    fit_data = decomposed(np.arange(0, n_valid, decim))  # (k, n_fit)
    rank = _rank(fit_data)
    n_components = min(cfg.n_components or k, rank, k)
    if n_components < 2:
        return model, _skip(base, f"rank {rank} too low for ICA", label)
    names = [EEG_CHANNELS[i] for i in good]
    fit_params = {"tol": cfg.tol if cfg.tol is not None else _DEFAULT_TOL[cfg.labeler]}
    if cfg.method == "picard":
        fit_params.update(iclabel.PICARD_FIT_PARAMS if cfg.labeler == "iclabel" else {"extended": False, "ortho": True})
    try:
        if cfg.labeler == "rules" and cfg.method == "picard":
            ica = fit_picard(fit_data, n_components, fit_params=fit_params, max_iter=cfg.max_iter,
                             random_state=cfg.random_state)
        else:
            ica = _fit_mne_ica(fit_data, names, n_components, cfg.method, fit_params, cfg, label)
        if cfg.labeler == "rules":
            weights, offset = _source_weights(ica)  # (c, k) on uV, (c,)
            if coef is not None:  # the regression folded in: sources of [eeg; ekg] directly
                weights = np.column_stack([weights, -weights @ coef])
            elif with_ekg:
                weights = np.column_stack([weights, np.zeros(len(weights))])
            # float32 sources (half the matrix-product time): the rules' scores read them
            # with float64 sums, and the cleaning itself is built from the fitted matrices
            sources = _sources_in_place(hp, weights, offset)  # (c, n_valid)
    except (np.linalg.LinAlgError, ValueError, RuntimeError) as err:
        return model, _skip(base, f"ICA fit failed ({err})", label)
    if cfg.labeler == "iclabel":
        raw = iclabel.labelling_raw(decomposed(slice(None)).T, names, cfg.highpass_hz)
        removed = iclabel.reject_by_label(iclabel.label_components(ica, raw), cfg.reject, cfg.max_removed)
    else:
        scores = component_scores(sources, ica.get_components(), names, ekg_hp=ekg_hp, cfg=cfg)
        removed = [{"labeler": "rules", **r} for r in reject_components(scores, cfg)]
    base.update(n_components=n_components, removed=removed, status="applied")
    if removed:
        exclude = [r["component"] for r in removed]
        model.removal, model.offset_uv = _removal_operator(ica, exclude)
        model.removal_factors = _removal_factors(ica, exclude)
    return model, base


def _sources_in_place(x: np.ndarray, weights: np.ndarray, offset: np.ndarray, step: int = 4096) -> np.ndarray:
    """``weights @ x - offset[:, None]`` in float32, written over the first rows of ``x``
    (float32 ``(m, n)``, ``weights (c, m)`` with ``c <= m``) a block of columns at a time;
    returns that ``(c, n)`` view. No new array the size of the recording."""
    w = weights.astype(np.float32)
    o = offset.astype(np.float32)[:, None]
    c = len(w)
    for start in range(0, x.shape[1], step):
        cols = slice(start, start + step)
        block = w @ x[:, cols]
        block -= o
        x[:c, cols] = block
    return x[:c]


def _dot64(rows: np.ndarray, v: np.ndarray, step: int = 2048) -> np.ndarray:
    """``rows.astype(np.float64) @ v`` for float32 ``rows (k, n)``, converted a block of
    columns at a time (no float64 copy of the whole recording)."""
    out = np.zeros(len(rows))
    for start in range(0, rows.shape[1], step):
        out += rows[:, start:start + step].astype(np.float64) @ v[start:start + step]
    return out


def _fit_mne_ica(fit_data: np.ndarray, names: list[str], n_components: int, method: str, fit_params: dict,
                 cfg: IcaConfig, label: str):
    """``mne.preprocessing.ICA`` fitted on ``fit_data (k, n_fit)`` (uV) as a RawArray."""
    import mne

    info = mne.create_info(names, SAMPLING_RATE_HZ, "eeg", verbose=False)
    ica = mne.preprocessing.ICA(n_components=n_components, method=method, fit_params=fit_params,
                                max_iter=cfg.max_iter, random_state=cfg.random_state, verbose=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ica.fit(mne.io.RawArray(fit_data * 1e-6, info, verbose=False), verbose=False)
    for w in caught:
        logger.debug("%s: ICA: %s", label, w.message)
    return ica


def _source_weights(ica) -> tuple[np.ndarray, np.ndarray]:
    """``(weights (c, k), offset (c,))`` with ``ica.get_sources`` of ``x (k, n)`` in uV equal to
    ``weights @ x - offset`` (``ica`` an MNE ICA or an :class:`IcaSolution`)."""
    unmixing = ica.unmixing_matrix_ @ ica.pca_components_[:ica.n_components_]  # (c, k) on pre-whitened volts
    weights = unmixing / (ica.pre_whitener_[:, 0] * 1e6)[None, :]  # on uV
    offset = unmixing @ ica.pca_mean_ if ica.pca_mean_ is not None else np.zeros(len(unmixing))
    return weights, offset


def _sources(ica, x_uv: np.ndarray) -> np.ndarray:
    """``ica.get_sources`` of ``x_uv (n, k)`` (uV), computed as one matrix product without
    MNE's copies of the whole recording into a Raw: ``(n_components, n)``."""
    weights, offset = _source_weights(ica)
    return weights @ x_uv.T - offset[:, None]


def _removal_operator(ica, exclude: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Channel-space ``K`` and offset (uV) such that MNE's ``ica.apply`` is ``x - K (x - offset)``."""
    n = ica.n_components_
    pca = ica.pca_components_
    mixing = pca[:n].T @ ica.mixing_matrix_[:, exclude]  # (k, r) in pre-whitened units
    unmixing = ica.unmixing_matrix_[exclude] @ pca[:n]  # (r, k)
    scale = ica.pre_whitener_[:, 0] * 1e6  # pre-whitened -> uV
    removal = (scale[:, None] * (mixing @ unmixing)) / scale[None, :]
    offset = ica.pca_mean_ * scale if ica.pca_mean_ is not None else np.zeros(len(scale))
    return removal, offset


def _removal_factors(ica, exclude: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(A (k, r), U (r, k))`` in uV with ``A @ U`` the ``K`` of :func:`_removal_operator`."""
    n = ica.n_components_
    pca = ica.pca_components_
    scale = ica.pre_whitener_[:, 0] * 1e6
    mixing = pca[:n].T @ ica.mixing_matrix_[:, exclude]
    unmixing = ica.unmixing_matrix_[exclude] @ pca[:n]
    return scale[:, None] * mixing, unmixing / scale[None, :]


def component_scores(sources: np.ndarray, mixing: np.ndarray, names: list[str], *,
                     ekg_hp: np.ndarray | None, cfg: IcaConfig) -> list[dict[str, float]]:
    """Per-component rule scores.

    Parameters
    ----------
    sources : np.ndarray
        ``(n_components, n)`` component time courses of the high-passed data, valid samples
        only (float32 or float64; sums are taken in float64).
    mixing : np.ndarray
        ``(n_channels, n_components)`` channel weights of each component.
    names : list of str
        Channel names of the rows of ``mixing``.
    ekg_hp : np.ndarray | None
        ``(n,)`` the high-passed EKG channel at the same samples, or None.

    Returns
    -------
    list of dict
        ``ekg_corr``, ``frontal_share``, ``low_share``, ``hf_share``, ``flatness`` per component.
    """
    _, low, high, flatness = _spectral_scores(sources, cfg)
    frontal_rows = [names.index(c) for c in FRONTAL_CHANNELS if c in names]
    weights = mixing ** 2
    frontal = weights[frontal_rows].sum(axis=0) / (weights.sum(axis=0) + 1e-30)
    corr = np.zeros(len(sources))
    if ekg_hp is not None:
        # Pearson correlation without a centred copy of the sources: e is centred, so
        # (s - mean s) . e = s . e, and |s - mean s|^2 = |s|^2 - n mean(s)^2
        n = sources.shape[1]
        e = np.asarray(ekg_hp, dtype=np.float64)
        e = e - e.mean()
        e_norm = np.linalg.norm(e)
        for i, row in enumerate(sources):
            row = row.astype(np.float64)
            norm = np.sqrt(max(row @ row - n * row.mean() ** 2, 0.0))
            corr[i] = (row @ e) / (norm * e_norm + 1e-30)
    return [{"ekg_corr": float(corr[i]), "frontal_share": float(frontal[i]), "low_share": float(low[i]),
             "hf_share": float(high[i]), "flatness": float(flatness[i])} for i in range(len(sources))]


def _spectral_scores(sources: np.ndarray, cfg: IcaConfig) -> tuple[np.ndarray, ...]:
    """Low-frequency share, high-frequency share and flatness of each component's spectrum.

    Muscle bursts are brief: over a whole recording their power drowns in the background a
    component also carries. So the spectrum is taken over the component's loudest 2 s
    segments (the top ``_ACTIVE_FRACTION`` by power at or above ``highpass_hz`` in their
    Welch density), where an artifact, if any, is active. The loudness of every segment is
    computed in the time domain (:func:`_segment_loudness`); the Welch densities only of the
    segments kept.
    """
    seg = 2 * SAMPLING_RATE_HZ
    n_seg = sources.shape[1] // seg
    segments = sources[:, :n_seg * seg].reshape(len(sources), n_seg, seg)
    loudness = _segment_loudness(segments, seg // 2, cfg.highpass_hz)  # (c, s)
    n_top = max(1, int(np.ceil(_ACTIVE_FRACTION * n_seg)))
    top = np.argsort(-loudness, axis=1)[:, :n_top]
    freqs, psd = _welch(np.take_along_axis(segments, top[..., None], axis=1), seg // 2)  # (c, n_top, f)
    active = psd.mean(axis=1)  # (c, f)
    band = freqs >= cfg.highpass_hz
    total = active[:, band].sum(axis=1) + 1e-30
    low = active[:, band & (freqs < cfg.eye_max_hz)].sum(axis=1) / total
    high_band = freqs >= cfg.muscle_min_hz
    high = active[:, high_band].sum(axis=1) / total
    hf_psd = active[:, high_band & (freqs <= 0.9 * SAMPLING_RATE_HZ / 2)] + 1e-30
    flatness = np.exp(np.log(hf_psd).mean(axis=1)) / hf_psd.mean(axis=1)
    return freqs, low, high, flatness


def _segment_loudness(segments: np.ndarray, nperseg: int, min_hz: float) -> np.ndarray:
    """``_welch(segments, nperseg)`` summed over the frequencies >= ``min_hz``, without FFTs.

    The Welch frames of a segment (half overlap) start at multiples of ``nperseg // 2``:
    each is two consecutive half-frame blocks. By Parseval the density summed over all
    frequencies is ``sum(xw ** 2) / (fs * sum(w ** 2))`` for the frame ``xw`` (mean removed,
    windowed); the bins below ``min_hz`` (the DC bin by default) are subtracted from their
    DFT sums. Every sum is a product of the blocks with a few fixed vectors: one matrix
    product for the whole recording instead of a Welch density per segment (equal to the
    FFT route within float rounding, tests/signal/test_ica.py).

    Parameters
    ----------
    segments : np.ndarray
        ``(c, s, seg)`` with ``seg`` a multiple of ``nperseg // 2`` and ``nperseg`` even.

    Returns
    -------
    np.ndarray
        ``(c, s)``.
    """
    half = nperseg // 2
    c, s, seg = segments.shape
    if nperseg % 2 or seg % half:
        raise ValueError(f"segments of {seg} samples do not split into frames of {nperseg}")
    window = sp_signal.get_window("hann", nperseg)
    freqs = np.fft.rfftfreq(nperseg, 1 / SAMPLING_RATE_HZ)
    below = np.flatnonzero(freqs < min_hz)  # bins left out of the sum
    t = np.arange(nperseg)
    dft = np.exp(-2j * np.pi * np.outer(below, t) / nperseg) * window  # (b, nperseg) windowed DFT rows
    # per block: sum x, and x against (w, w^2, windowed DFT rows), each frame half separately
    vectors = [np.ones(half)]
    for v in (window, window ** 2, *dft.real, *dft.imag):
        vectors += [v[:half], v[half:]]
    blocks = segments.reshape(c, s * (seg // half), half)  # a view
    vectors = np.stack(vectors, axis=1)
    squared_window = np.stack([window[:half] ** 2, window[half:] ** 2], axis=1)
    proj = np.empty((c, blocks.shape[1], vectors.shape[1]))
    squares = np.empty((c, blocks.shape[1], 2))
    values, buffer = np.empty(blocks.shape[1:]), np.empty(blocks.shape[1:])
    for i in range(c):  # in float64, one component at a time in two reused buffers
        values[...] = blocks[i]
        proj[i] = values @ vectors
        squares[i] = np.square(values, out=buffer) @ squared_window
    proj = proj.reshape(c, s, seg // half, -1)  # (c, s, blocks, m)
    squares = squares.reshape(c, s, seg // half, 2)

    def frame(col):  # (c, s, frames): first half from block j, second from block j + 1
        return proj[..., :-1, col] + proj[..., 1:, col + 1]

    mean = (proj[..., :-1, 0] + proj[..., 1:, 0]) / nperseg
    energy = (squares[..., :-1, 0] + squares[..., 1:, 1] - 2 * mean * frame(3)
              + mean ** 2 * (window ** 2).sum())  # sum((x - mean)^2 w^2)
    kept = nperseg * energy  # sum over all DFT bins of |X|^2 (Parseval)
    n_below = len(below)
    for i, k in enumerate(below):
        re = frame(5 + 2 * i) - mean * dft[i].real.sum()
        im = frame(5 + 2 * n_below + 2 * i) - mean * dft[i].imag.sum()
        # bins 0 and nperseg / 2 appear once in the one-sided density, the others twice
        # (and twice in the full-spectrum Parseval sum)
        kept -= (re ** 2 + im ** 2) * (1 if k == 0 or 2 * k == nperseg else 2)
    return kept.mean(axis=-1) / (SAMPLING_RATE_HZ * (window ** 2).sum())


def _welch(x: np.ndarray, nperseg: int) -> tuple[np.ndarray, np.ndarray]:
    """``scipy.signal.welch(x, fs=200, nperseg=nperseg, axis=-1)`` (Hann, half overlap, mean
    removed per segment, one-sided density) in plain numpy: the same numbers without scipy's
    per-call overhead, which dominated on many short 2 s segments. The frames and their FFT
    are float32 (relative error about 1e-6, far below the rule thresholds' resolution; half the
    memory traffic); the returned density is float64."""
    import scipy.fft

    window = sp_signal.get_window("hann", nperseg).astype(np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(np.asarray(x, dtype=np.float32), nperseg,
                                                     axis=-1)[..., ::nperseg - nperseg // 2, :]
    frames = (frames - frames.mean(axis=-1, keepdims=True)) * window
    spectrum = scipy.fft.rfft(frames, axis=-1)
    psd = (spectrum.real ** 2 + spectrum.imag ** 2).astype(np.float64) / (SAMPLING_RATE_HZ * float((window ** 2).sum()))
    psd[..., 1:nperseg // 2 + (nperseg % 2)] *= 2  # one-sided: all but DC (and Nyquist for even nperseg)
    return np.fft.rfftfreq(nperseg, 1 / SAMPLING_RATE_HZ), psd.mean(axis=-2)


def reject_components(scores: list[dict[str, float]], cfg: IcaConfig) -> list[dict[str, Any]]:
    """Apply the three rules; returns ``[{component, reasons, strength, **scores}]`` (at most max_removed)."""
    removed = []
    for i, s in enumerate(scores):
        margins = {}
        if abs(s["ekg_corr"]) >= cfg.ekg_corr:
            margins["cardiac"] = abs(s["ekg_corr"]) / cfg.ekg_corr
        if s["frontal_share"] >= cfg.eye_frontal_share and s["low_share"] >= cfg.eye_low_share:
            margins["eye"] = min(s["frontal_share"] / cfg.eye_frontal_share, s["low_share"] / cfg.eye_low_share)
        if s["hf_share"] >= cfg.muscle_hf_share and s["flatness"] >= cfg.muscle_flatness:
            margins["muscle"] = min(s["hf_share"] / cfg.muscle_hf_share, s["flatness"] / cfg.muscle_flatness)
        if margins:
            removed.append({"component": i, "reasons": sorted(margins), "strength": max(margins.values()),
                            **{k: round(v, 4) for k, v in s.items()}})
    removed.sort(key=lambda r: -r["strength"])
    if len(removed) > cfg.max_removed:
        logger.warning("ICA: %d components match the artifact rules; removing the %d strongest",
                       len(removed), cfg.max_removed)
    return sorted(removed[:cfg.max_removed], key=lambda r: r["component"])


def _rank(data: np.ndarray) -> int:
    """Numerical rank of ``data (k, n)`` with each row scaled to unit spread: the singular
    values above 1e-5 of the largest, from the eigenvalues of the ``(k, k)`` Gram matrix
    (above 1e-10 of the largest: far above its float64 rounding, about 1e-14)."""
    std = data.std(axis=1, keepdims=True)
    scaled = data / np.where(std > 0, std, 1.0)
    eigenvalues = np.linalg.eigvalsh(scaled @ scaled.T)
    return int((eigenvalues > eigenvalues[-1] * 1e-10).sum())


def _skip(info: dict[str, Any], reason: str, label: str) -> dict[str, Any]:
    logger.warning("%s: %s; ICA skipped", label, reason)
    return {**info, "status": f"skipped: {reason}"}


def _label(eeg_id, path) -> str:
    if eeg_id is not None:
        return f"eeg_id {eeg_id}"
    return str(path) if path is not None else "recording"
