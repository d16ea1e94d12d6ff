"""A synthetic HMS data set in the exact Kaggle layout, with a known answer key.

Each session (one spectrogram) is a continuous multichannel EEG of at least 600 s:
a 1/f background with a posterior alpha rhythm, the six class signatures mixed by a
latent class-probability vector that drifts over the session, and additive artifacts
(eye blinks, EKG leak, temporal muscle bursts, electrode pops) with fixed spatial
mixing. One or two EEG files are cut from a session; each has overlapping labelled
sub-windows whose expert votes are multinomial draws from the latent vector of the
window's central 10 s. The Kaggle spectrogram is computed from the same signal along
the contract's chains. The latent vectors are kept in ``answer_key/`` so tests can
compute the best achievable KL.

Class signatures (unit waveforms, scaled per session):

- Seizure: rhythmic spike-and-wave whose frequency (2-7 Hz) and amplitude evolve.
- LPD: sharp discharges every 0.8-1.6 s over one hemisphere.
- GPD: sharp (triphasic) discharges every 0.5-2 s over both hemispheres, frontal maximum.
- LRDA: rhythmic 1-3 Hz delta over one hemisphere.
- GRDA: rhythmic 1-3 Hz delta over both hemispheres, frontal maximum.
- Other: irregular polymorphic 1-7 Hz activity, and more blinks, muscle and pops.

``expert_consensus`` is the argmax of the votes; a tie goes to the tied class with
the larger latent probability.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.fft
import scipy.signal

from hms_core import atomic
from hms_core.contract import (
    CENTER_SAMPLES,
    CENTER_START_SAMPLE,
    CHAINS,
    CHANNEL_INDEX,
    CLASSES,
    EEG_CHANNELS,
    N_CLASSES,
    N_RAW_CHANNELS,
    RAW_CHANNELS,
    SAMPLING_RATE_HZ,
    SPEC_COLUMNS,
    SPEC_FREQS_HZ,
    SPEC_REGIONS,
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
    WINDOW_S,
    WINDOW_SAMPLES,
)
from hms_core.config import dataclass_from_dict
from hms_core.errors import ConfigError, DataError
from hms_core.status import update_status

logger = logging.getLogger(__name__)

ARTIFACT_TYPES = ("blink", "ekg", "muscle", "pop")
ANSWER_KEY_DIR = "answer_key"
LATENT_FILE = "latent.parquet"
TEST_LATENT_FILE = "test_latent.parquet"
LATENT_COLUMNS = tuple(f"p_{c.lower()}" for c in CLASSES)
MAX_VOTES = 28
FS = SAMPLING_RATE_HZ
_N_EEG = len(EEG_CHANNELS)
_EKG_COL = CHANNEL_INDEX["EKG"]
# Spectrogram frames: a 1024-sample Hann window (5.12 s) centred on each row time; its
# bins 3..102 are exactly SPEC_FREQS_HZ (k * 200/1024 Hz).
SPEC_NFFT = 1024
_SPEC_BINS = np.rint(SPEC_FREQS_HZ * SPEC_NFFT / FS).astype(int)
# The Kaggle window centre sits this far into a session after the EEG window start (s).
_SPEC_LEAD_S = SPEC_WINDOW_S / 2 - WINDOW_S / 2  # 275 s

# Approximate 10-20 scalp positions (x: left -1 .. right +1, y: back -1 .. front +1).
_POSITIONS = {
    "Fp1": (-0.3, 0.95), "Fp2": (0.3, 0.95), "F7": (-0.8, 0.6), "F3": (-0.4, 0.5),
    "Fz": (0.0, 0.5), "F4": (0.4, 0.5), "F8": (0.8, 0.6), "T3": (-1.0, 0.0),
    "C3": (-0.5, 0.0), "Cz": (0.0, 0.0), "C4": (0.5, 0.0), "T4": (1.0, 0.0),
    "T5": (-0.8, -0.6), "P3": (-0.4, -0.5), "Pz": (0.0, -0.5), "P4": (0.4, -0.5),
    "T6": (0.8, -0.6), "O1": (-0.3, -0.95), "O2": (0.3, -0.95),
}
_XY = np.array([_POSITIONS[c] for c in EEG_CHANNELS])  # (19, 2)


@dataclass
class SyntheticRecording:
    """One synthetic recording; all arrays float32, channels in ``RAW_CHANNELS`` order.

    ``raw_uv = clean_uv + sum(artifacts_uv.values()) + dc_offset_uv`` with NaN rows where
    ``nan_mask``. The EKG column of ``clean_uv`` holds the EKG itself (it is the channel's
    signal there, not an artifact); ``artifacts_uv["ekg"]`` is its leak into the EEG.

    Attributes
    ----------
    raw_uv : (n, 20) what goes to the parquet (uV).
    clean_uv : (n, 20) class patterns + background, no artifacts, NaN or DC (uV).
    artifacts_uv : dict name -> (n, 20) additive artifact of each requested type (uV).
    ekg_uv : (n,) the EKG (uV).
    class_weights : (n, 6) the latent class-probability vector at each sample.
    dc_offset_uv : (20,) the constant added to each channel (uV).
    nan_mask : (n,) bool, rows set to NaN in ``raw_uv``.
    """

    raw_uv: np.ndarray
    clean_uv: np.ndarray
    artifacts_uv: dict[str, np.ndarray]
    ekg_uv: np.ndarray
    class_weights: np.ndarray
    dc_offset_uv: np.ndarray
    nan_mask: np.ndarray


# ------------------------------------------------------------------------- spatial fields
def _field(focus: tuple[float, float], spread: float) -> np.ndarray:
    """Gaussian scalp field (19,) around ``focus``: how strongly each electrode sees a source."""
    d2 = ((_XY - np.asarray(focus)) ** 2).sum(axis=1)
    return np.exp(-d2 / (2 * spread**2))


def _delays(focus: tuple[float, float], rng: np.random.Generator, *, ms_per_unit: float) -> np.ndarray:
    """Integer sample delays (19,) growing with the distance from the focus (field spread)."""
    d = np.sqrt(((_XY - np.asarray(focus)) ** 2).sum(axis=1))
    delay_s = d * ms_per_unit / 1000 + rng.uniform(0, 0.008, _N_EEG)
    return np.rint(delay_s * FS).astype(int)


def _lateral_focus(rng: np.random.Generator) -> tuple[float, float]:
    side = rng.choice((-1.0, 1.0))
    return side * rng.uniform(0.55, 0.9), rng.uniform(-0.5, 0.5)


def _general_focus(rng: np.random.Generator) -> tuple[float, float]:
    return rng.uniform(-0.1, 0.1), rng.uniform(0.3, 0.8)


# -------------------------------------------------------------------- class waveforms (n,)
def _evolving_phase(n: int, rng: np.random.Generator, f_lo: float, f_hi: float,
                    period_s: float) -> np.ndarray:
    t = np.arange(n, dtype=np.float64) / FS
    sweep = 0.5 - 0.5 * np.cos(2 * np.pi * t / period_s + rng.uniform(0, 2 * np.pi))
    freq = f_lo + (f_hi - f_lo) * sweep
    return 2 * np.pi * np.cumsum(freq) / FS


def _seizure_wave(n: int, rng: np.random.Generator) -> np.ndarray:
    phase = _evolving_phase(n, rng, rng.uniform(2.0, 3.0), rng.uniform(4.0, 7.0),
                            rng.uniform(25, 60))
    u = np.mod(phase, 2 * np.pi)
    spike = np.exp(-0.5 * ((u - 0.6) / 0.17) ** 2)
    slow = np.exp(-0.5 * ((u - 3.0) / 0.9) ** 2)
    wave = spike - 0.55 * slow
    t = np.arange(n) / FS
    envelope = 0.65 + 0.35 * np.sin(2 * np.pi * t / rng.uniform(20, 45) + rng.uniform(0, 6.3))
    return (wave - wave.mean()) * envelope


def _discharge_train(n: int, rng: np.random.Generator, period_s: float, template: np.ndarray) -> np.ndarray:
    out = np.zeros(n)
    gap = period_s * FS
    k = np.arange(int(n / gap) + 2)
    onsets = (k * gap + rng.normal(0, 0.06 * gap, k.size) + rng.uniform(0, gap)).astype(int)
    gains = rng.uniform(0.7, 1.2, k.size)
    _add_events(out, onsets, gains, template)
    return out


def _sharp_template(width_s: float, triphasic: bool) -> np.ndarray:
    tau = np.arange(int(0.45 * FS)) / FS - 0.1
    sharp = np.exp(-0.5 * (tau / width_s) ** 2)
    after = np.exp(-0.5 * ((tau - 0.16) / 0.07) ** 2)
    wave = sharp - 0.45 * after
    if triphasic:
        wave = wave - 0.35 * np.exp(-0.5 * ((tau + 0.045) / 0.02) ** 2)
    return wave


def _rhythmic_delta(n: int, rng: np.random.Generator) -> np.ndarray:
    f0 = rng.uniform(1.0, 3.0)
    phase = _evolving_phase(n, rng, f0 * 0.93, f0 * 1.07, rng.uniform(15, 40))
    t = np.arange(n) / FS
    envelope = 0.75 + 0.25 * np.sin(2 * np.pi * t / rng.uniform(8, 20) + rng.uniform(0, 6.3))
    return (np.sin(phase) + 0.25 * np.sin(2 * phase + np.pi / 2)) * envelope


def _class_sources(n: int, rng: np.random.Generator):
    """Yield (class index, waveform (n,), amplitude uV, field (19,), delays (19,)) for 5 patterns."""
    lpd_focus, lrda_focus = _lateral_focus(rng), _lateral_focus(rng)
    gpd_focus, grda_focus = _general_focus(rng), _general_focus(rng)
    sz_focus = (rng.uniform(-0.6, 0.6), rng.uniform(-0.5, 0.6))
    yield (0, lambda: _seizure_wave(n, rng), rng.uniform(90, 180),
           _field(sz_focus, rng.uniform(0.6, 0.9)), _delays(sz_focus, rng, ms_per_unit=20))
    yield (1, lambda: _discharge_train(n, rng, rng.uniform(0.8, 1.6),
                                       _sharp_template(rng.uniform(0.02, 0.035), False)),
           rng.uniform(110, 220), _field(lpd_focus, rng.uniform(0.45, 0.6)),
           _delays(lpd_focus, rng, ms_per_unit=25))
    yield (2, lambda: _discharge_train(n, rng, rng.uniform(0.5, 2.0),
                                       _sharp_template(rng.uniform(0.025, 0.04), True)),
           rng.uniform(110, 220), _field(gpd_focus, rng.uniform(0.9, 1.2)),
           _delays(gpd_focus, rng, ms_per_unit=30))
    yield (3, lambda: _rhythmic_delta(n, rng), rng.uniform(70, 140),
           _field(lrda_focus, rng.uniform(0.45, 0.6)), _delays(lrda_focus, rng, ms_per_unit=30))
    yield (4, lambda: _rhythmic_delta(n, rng), rng.uniform(70, 140),
           _field(grda_focus, rng.uniform(0.9, 1.2)), _delays(grda_focus, rng, ms_per_unit=40))


# ------------------------------------------------------------------------- noise shaping
def _shaped_noise(n: int, spectra: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise (k, n) whose amplitude spectra are the rows of ``spectra`` (k, n//2+1).

    Each row has unit expected RMS. Random coefficients are drawn only up to the last
    bin where some spectrum is non-negligible (low-pass sources are cheap).
    """
    k, n_f = spectra.shape
    spectra = spectra.astype(np.float32, copy=False)
    hi = int(np.flatnonzero(spectra.max(axis=0) > 1e-3 * spectra.max())[-1]) + 1
    # Parseval: a one-sided spectrum S with unit complex-normal coefficients gives
    # variance 4 * sum(S**2) / n**2 after the inverse transform.
    power = np.einsum("ij,ij->i", spectra, spectra, dtype=np.float64)[:, None]
    scaled = spectra[:, :hi] * (np.sqrt(12) * n / (2 * np.sqrt(power) + 1e-12)).astype(np.float32)
    # Unit-variance uniform real and imaginary parts (cheaper than normal draws): each output
    # sample sums thousands of them, so the noise is Gaussian all the same.
    pairs = rng.random((k, hi, 2), dtype=np.float32)
    pairs -= np.float32(0.5)
    pairs *= scaled[:, :, None]
    coeffs = pairs.view(np.complex64)[..., 0]  # (k, hi)
    return scipy.fft.irfft(coeffs, n=n, axis=-1)


def _freqs(n: int) -> np.ndarray:
    return np.fft.rfftfreq(n, d=1 / FS)


def _bandpass_spectrum(freqs: np.ndarray, lo_hz: float, hi_hz: float) -> np.ndarray:
    """Amplitude response of a smooth band-pass (4th-order low edge, 8th-order high edge)."""
    return 1 / (1 + (lo_hz / np.maximum(freqs, 1e-3)) ** 4) / (1 + (freqs / hi_hz) ** 8)


# ------------------------------------------------------------------------------ artifacts
def _event_onsets(rate_per_s: np.ndarray, rng: np.random.Generator, *, step: int = FS // 10) -> np.ndarray:
    """Onsets (sample indices) of a Poisson process with the time-varying rate (events/s)."""
    coarse = rate_per_s[::step]
    peak = float(coarse.max())
    if peak <= 0:
        return np.zeros(0, dtype=int)
    n = rate_per_s.size
    count = rng.poisson(peak * n / FS)
    onsets = np.sort(rng.integers(0, n, count))
    keep = rng.random(count) < rate_per_s[onsets] / peak
    return onsets[keep]


def _add_events(out: np.ndarray, onsets: np.ndarray, gains: np.ndarray, template: np.ndarray) -> None:
    n, m = out.shape[0], template.shape[0]
    for onset, gain in zip(onsets, gains):
        if onset >= n or onset + m <= 0:
            continue
        lo, hi = max(onset, 0), min(onset + m, n)
        out[lo:hi] += gain * template[lo - onset:hi - onset]


def _blink(n: int, w_other: np.ndarray, rng: np.random.Generator, rate: float) -> np.ndarray:
    source = np.zeros(n, dtype=np.float32)
    onsets = _event_onsets(rate * (0.04 + 0.3 * w_other), rng)
    sigma = rng.uniform(0.07, 0.11)
    tau = np.arange(int(0.6 * FS)) / FS
    _add_events(source, onsets, rng.uniform(80, 300, onsets.size),
                np.exp(-0.5 * ((tau - 0.3) / sigma) ** 2))
    return _to_channels(source, _field((rng.uniform(-0.08, 0.08), 1.25), 0.45))


def _ekg(n: int, rng: np.random.Generator) -> np.ndarray:
    """A realistic EKG (n,) in uV: P-QRS-T beats at 55-100 bpm with heart-rate variability."""
    rr_s = 60 / rng.uniform(55, 100)
    beats = np.cumsum(rr_s * (1 + 0.04 * rng.standard_normal(int(n / FS / rr_s) + 3)))
    beats -= rng.uniform(0, rr_s)
    tau = np.arange(int(0.7 * FS)) / FS - 0.25
    gauss = lambda mu, sd: np.exp(-0.5 * ((tau - mu) / sd) ** 2)  # noqa: E731
    beat = (0.12 * gauss(-0.16, 0.025) - 0.12 * gauss(-0.025, 0.008) + 1.0 * gauss(0.0, 0.010)
            - 0.25 * gauss(0.03, 0.010) + 0.3 * gauss(0.25, 0.045))
    ekg = np.zeros(n, dtype=np.float32)
    onsets = (beats * FS).astype(int) - int(0.25 * FS)
    _add_events(ekg, onsets, rng.uniform(0.9, 1.1, onsets.size), beat)
    return ekg * rng.uniform(300, 1200) * rng.choice((-1.0, 1.0))


def _ekg_leak(ekg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Strongest over the left temporal/posterior electrodes, as in referential recordings.
    spatial = 0.004 + 0.02 * _field((-0.7, -0.6), 0.6)
    spatial *= rng.uniform(0.5, 1.5) * rng.normal(1, 0.2, _N_EEG)
    return _to_channels(ekg, spatial)


_MUSCLE_SOS = scipy.signal.butter(4, (20, 80), btype="bandpass", fs=FS, output="sos")


def _muscle(n: int, w_other: np.ndarray, rng: np.random.Generator, rate: float) -> np.ndarray:
    """Two muscle sources (left and right temporal): 20-80 Hz noise bursts of 0.3-2 s."""
    out = np.zeros((N_RAW_CHANNELS, n), dtype=np.float32)
    for side in (-1.0, 1.0):
        source = np.zeros(n, dtype=np.float32)
        for onset in _event_onsets(rate * (0.015 + 0.1 * w_other), rng):
            length = int(rng.uniform(0.3, 2.0) * FS)
            burst = scipy.signal.sosfilt(_MUSCLE_SOS, rng.standard_normal(length + FS // 2))[FS // 2:]
            burst *= np.hanning(length) * rng.uniform(20, 120) / (burst.std() + 1e-12)
            _add_events(source, [onset], [1.0], burst)
        out += _to_channels(source, _field((side * 1.05, rng.uniform(-0.2, 0.4)), 0.35))
    return out


def _pop(n: int, w_other: np.ndarray, rng: np.random.Generator, rate: float) -> np.ndarray:
    source = np.zeros(n, dtype=np.float32)
    onsets = _event_onsets(rate * (0.003 + 0.02 * w_other), rng)
    decay = np.exp(-np.arange(int(1.5 * FS)) / (rng.uniform(0.1, 0.4) * FS))
    _add_events(source, onsets, rng.choice((-1, 1), onsets.size) * rng.uniform(200, 3000, onsets.size),
                decay)
    spatial = np.zeros(_N_EEG)
    spatial[rng.integers(_N_EEG)] = 1.0  # one loose electrode per recording
    return _to_channels(source, spatial)


def _to_channels(source: np.ndarray, spatial: np.ndarray) -> np.ndarray:
    """Channel-major ``(20, n)`` projection of one source through its fixed scalp field (19,)."""
    out = np.zeros((N_RAW_CHANNELS, source.shape[0]), dtype=np.float32)
    np.multiply(spatial.astype(np.float32)[:, None], source.astype(np.float32)[None, :], out=out[:_N_EEG])
    return out


# ------------------------------------------------------------------------- one recording
def _weights_over_time(n: int, class_probs, anchor_times_s) -> np.ndarray:
    """Class weights ``(6, n)`` (channel-major, like the signals)."""
    probs = np.asarray(class_probs, dtype=np.float64)
    if probs.ndim == 1:
        probs = probs[None, :]
    if probs.ndim != 2 or probs.shape[1] != N_CLASSES or (probs < 0).any():
        raise ValueError(f"class_probs must be (6,) or (k, 6) non-negative, got shape {probs.shape}")
    probs = probs / probs.sum(axis=1, keepdims=True)
    if probs.shape[0] == 1:
        return np.repeat(probs.astype(np.float32).T, n, axis=1)
    if anchor_times_s is None:
        anchor_times_s = np.linspace(0, n / FS, probs.shape[0])
    t = np.arange(n) / FS
    return np.stack([np.interp(t, anchor_times_s, probs[:, k]) for k in range(N_CLASSES)]).astype(np.float32)


def synthesize_recording(n_samples: int, class_probs, rng: np.random.Generator, *,
                         artifacts: Sequence[str] = ARTIFACT_TYPES, nan_stretches: bool = True,
                         dc_offset: bool = True, anchor_times_s=None,
                         artifact_rate: float = 1.0) -> SyntheticRecording:
    """Synthesize one 200 Hz multichannel EEG (19 EEG channels + EKG) in microvolts.

    Parameters
    ----------
    n_samples : int
        Length in samples (200 Hz).
    class_probs : array-like, (6,) or (k, 6)
        Latent class-probability vector(s) in ``CLASSES`` order; with k rows, anchors at
        ``anchor_times_s`` (default: evenly spaced over the recording), linearly
        interpolated in between. The pattern signal is the mixture of the class
        signatures weighted by it.
    rng : numpy.random.Generator
        All randomness comes from it.
    artifacts : sequence of str
        Subset of ``("blink", "ekg", "muscle", "pop")`` to add.
    nan_stretches : bool
        Set 1-3 stretches of 0.5-8 s (whole rows) to NaN in ``raw_uv``.
    dc_offset : bool
        Add a constant offset (about +-150 uV) per channel.
    anchor_times_s : array-like (k,), optional
        Times (s) of the rows of ``class_probs``.
    artifact_rate : float
        Multiplies the event rates of blinks (default about 0.04-0.34 /s, more with
        Other), muscle bursts (0.015-0.115 /s per side) and pops (0.003-0.023 /s).

    Returns
    -------
    SyntheticRecording
    """
    unknown = [a for a in artifacts if a not in ARTIFACT_TYPES]
    if unknown:
        raise ValueError(f"unknown artifacts {unknown}; allowed: {list(ARTIFACT_TYPES)}")
    n = int(n_samples)
    weights = _weights_over_time(n, class_probs, anchor_times_s)  # (6, n)
    w_other = weights[CLASSES.index("Other")]
    clean = np.zeros((N_RAW_CHANNELS, n), dtype=np.float32)  # channel-major while building
    eeg = clean[:_N_EEG]

    # Background: per-channel 1/f noise, a posterior alpha rhythm, polymorphic activity for Other.
    n_fft = scipy.fft.next_fast_len(n, real=True)  # noise is made this long, then cut to n
    f = _freqs(n_fft)[None, :].astype(np.float32)
    exponents = rng.uniform(0.5, 0.8, (_N_EEG, 1)).astype(np.float32)
    pink = np.exp(-exponents * np.log(np.maximum(f, 0.3))) * ((f > 0.3) / (1 + (f / 45) ** 4))
    alpha = np.exp(-0.5 * ((f - rng.uniform(8.5, 11.0)) / 0.6) ** 2)
    poly = np.repeat(_bandpass_spectrum(f, 1.0, 7.0), _N_EEG, axis=0)
    eeg += _shaped_noise(n_fft, pink, rng)[:, :n] * rng.uniform(12, 22, (_N_EEG, 1)).astype(np.float32)
    slow = _shaped_noise(n_fft, np.concatenate([alpha, poly]), rng)[:, :n]
    eeg += _to_channels(slow[0], _field((0.0, -1.0), 0.6) * rng.uniform(8, 20))[:_N_EEG]
    eeg += slow[1:] * (w_other * np.float32(rng.uniform(20, 35)))

    for k, make_wave, amplitude_uv, spatial, delays in _class_sources(n, rng):
        w = weights[k]
        if w.max() < 1e-3:
            continue
        mixed = (make_wave() * amplitude_uv).astype(np.float32) * w
        for ch in range(_N_EEG):
            d = int(delays[ch])
            eeg[ch, d:] += np.float32(spatial[ch]) * mixed[:n - d]

    ekg = _ekg(n, rng).astype(np.float32)
    clean[_EKG_COL] = ekg
    makers = {"blink": lambda: _blink(n, w_other, rng, artifact_rate), "ekg": lambda: _ekg_leak(ekg, rng),
              "muscle": lambda: _muscle(n, w_other, rng, artifact_rate),
              "pop": lambda: _pop(n, w_other, rng, artifact_rate)}
    artifacts_cm = {name: makers[name]() for name in ARTIFACT_TYPES if name in artifacts}

    dc = (rng.normal(0, 150, N_RAW_CHANNELS) if dc_offset else np.zeros(N_RAW_CHANNELS)).astype(np.float32)
    raw = clean + dc[:, None]
    for part in artifacts_cm.values():
        raw += part
    nan_mask = np.zeros(n, dtype=bool)
    if nan_stretches:
        _add_nan_stretches(raw, nan_mask, 0, n, rng)
    # (n, 20) views of the channel-major buffers: each channel stays contiguous in memory.
    return SyntheticRecording(raw_uv=raw.T, clean_uv=clean.T,
                              artifacts_uv={k: v.T for k, v in artifacts_cm.items()}, ekg_uv=ekg,
                              class_weights=weights.T, dc_offset_uv=dc, nan_mask=nan_mask)


def _add_nan_stretches(raw_cm: np.ndarray, nan_mask: np.ndarray, lo: int, hi: int,
                       rng: np.random.Generator) -> None:
    """Blank 1-3 stretches of 0.5-8 s (all channels) between samples ``lo`` and ``hi``."""
    for _ in range(rng.integers(1, 4)):
        length = int(rng.uniform(0.5, 8.0) * FS)
        start = lo + int(rng.integers(0, max(hi - lo - length, 1)))
        nan_mask[start:start + length] = True
    raw_cm[:, nan_mask] = np.nan


# --------------------------------------------------------------------- Kaggle spectrogram
_REGION_PAIRS = [(CHANNEL_INDEX[a], CHANNEL_INDEX[b]) for r in SPEC_REGIONS for a, b in CHAINS[r]]
_HANN = scipy.signal.get_window("hann", SPEC_NFFT).astype(np.float32)


def kaggle_spectrogram(raw_uv: np.ndarray, n_rows: int) -> np.ndarray:
    """Kaggle-style spectrogram of a recording, as the contract's chains define it.

    Row ``k`` (time ``2k+1`` s) is the Hann-windowed (1024 samples, centred on that time,
    mean removed) power spectral density of each of a region's 4 bipolar chains,
    averaged over them, at ``SPEC_FREQS_HZ``. A frame touching NaN gives a NaN row.

    Parameters
    ----------
    raw_uv : numpy.ndarray
        ``(n_samples, 20)`` in ``RAW_CHANNELS`` order, uV, 200 Hz, starting at time 0.
    n_rows : int
        Number of rows (one every 2 s).

    Returns
    -------
    numpy.ndarray
        float32 ``(n_rows, 400)`` in ``SPEC_COLUMNS`` order, uV^2/Hz.
    """
    channels = np.asarray(raw_uv, dtype=np.float32).T  # (20, n)
    chains = np.stack([channels[a] - channels[b] for a, b in _REGION_PAIRS])  # (16, n)
    half = SPEC_NFFT // 2
    padded = np.pad(chains, ((0, 0), (half, half)), mode="reflect")
    centres = (np.arange(n_rows) * SPEC_STEP_S + SPEC_STEP_S // 2) * FS
    frames = np.lib.stride_tricks.sliding_window_view(padded, SPEC_NFFT, axis=-1)[:, centres]  # (16, r, nfft)
    frames = frames - frames.mean(axis=-1, keepdims=True)
    frames *= _HANN
    spectrum = scipy.fft.rfft(frames, axis=-1)[..., _SPEC_BINS]
    psd = 2 * (spectrum.real**2 + spectrum.imag**2) / np.float32(FS * float((_HANN**2).sum()))
    regions = psd.reshape(len(SPEC_REGIONS), 4, n_rows, len(_SPEC_BINS)).mean(axis=1)  # (4, r, 100)
    return np.ascontiguousarray(regions.transpose(1, 0, 2).reshape(n_rows, -1), dtype=np.float32)


# ------------------------------------------------------------------------------ the data set
@dataclass
class SyntheticConfig:
    """Options of the synthetic data set (the ``data.synthetic`` config section).

    Parameters
    ----------
    patients : int
        Number of training patients (default 40).
    seed : int
        Random seed; the same seed gives byte-identical files (default 0).
    recordings_per_patient : (int, int)
        Inclusive range of EEG files per patient (default (1, 3)).
    sub_windows : (int, int)
        Inclusive range of labelled sub-windows per EEG file (default (1, 11)).
    n_test : int
        Number of test recordings (50 s EEG + 600 s spectrogram each; default 4).
    two_eeg_fraction : float
        Fraction of sessions (spectrograms) that serve two EEG files (default 0.3).
    nan_fraction : float
        Fraction of EEG files with 1-3 NaN stretches of 0.5-8 s (default 0.35).
    save_answer_key : bool
        Write ``answer_key/`` with the latent vectors (default True).
    """

    patients: int = 40
    seed: int = 0
    recordings_per_patient: tuple[int, int] = (1, 3)
    sub_windows: tuple[int, int] = (1, 11)
    n_test: int = 4
    two_eeg_fraction: float = 0.3
    nan_fraction: float = 0.35
    save_answer_key: bool = True

    @classmethod
    def from_dict(cls, d: Mapping | None) -> "SyntheticConfig":
        """Build from a config mapping; unknown keys raise ConfigError naming the key."""
        cfg = dataclass_from_dict(cls, d, section="data.synthetic")
        cfg.recordings_per_patient = _int_range("recordings_per_patient", cfg.recordings_per_patient, 1)
        cfg.sub_windows = _int_range("sub_windows", cfg.sub_windows, 1)
        for key in ("patients", "n_test"):
            value = getattr(cfg, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"data.synthetic.{key}: {value!r} is not a positive integer")
        for key in ("two_eeg_fraction", "nan_fraction"):
            value = getattr(cfg, key)
            if not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ConfigError(f"data.synthetic.{key}: {value!r} is not a fraction in [0, 1]")
        return cfg

    def generate(self, out_dir: str | os.PathLike, *, status_path=None) -> dict:
        """Write the data set to ``out_dir`` (see :func:`generate_dataset`)."""
        return generate_dataset(out_dir, n_patients=self.patients, seed=self.seed,
                                recordings_per_patient=self.recordings_per_patient,
                                n_test=self.n_test, save_answer_key=self.save_answer_key,
                                sub_windows=self.sub_windows, two_eeg_fraction=self.two_eeg_fraction,
                                nan_fraction=self.nan_fraction, status_path=status_path)


def _int_range(key: str, value, minimum: int) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"data.synthetic.{key}: {value!r} is not a [min, max] pair of integers") from None
    if not minimum <= lo <= hi:
        raise ConfigError(f"data.synthetic.{key}: {value!r} needs {minimum} <= min <= max")
    return lo, hi


class _Ids:
    """Unique random ids drawn like the real ones (large ints), deterministic from the rng."""

    def __init__(self, rng: np.random.Generator):
        self._rng = rng
        self._used: dict[str, set[int]] = {}

    def draw(self, kind: str, low: int, high: int) -> int:
        used = self._used.setdefault(kind, set())
        while True:
            value = int(self._rng.integers(low, high))
            if value not in used:
                used.add(value)
                return value


@dataclass
class _EegPlan:
    offsets_s: np.ndarray
    length_samples: int
    start_s: float = 0.0  # position in the session
    eeg_id: int = 0
    n_votes: int = 1


@dataclass
class _SessionPlan:
    patient_id: int
    main_class: int
    eegs: list[_EegPlan] = field(default_factory=list)
    spectrogram_id: int = 0


def _draw_vote_count(rng: np.random.Generator) -> int:
    """Total votes of a recording: 60% below 10 (mostly 3; about half the rows), else 10..28."""
    if rng.random() < 0.6:
        return int(rng.choice(np.arange(1, 10), p=[.12, .12, .4, .08, .08, .06, .05, .05, .04]))
    return int(rng.integers(10, MAX_VOTES + 1))


def _plan_sessions(rng: np.random.Generator, ids: _Ids, *, n_patients: int,
                   recordings_per_patient: tuple[int, int], sub_windows: tuple[int, int],
                   two_eeg_fraction: float) -> list[_SessionPlan]:
    sessions = []
    for _ in range(n_patients):
        patient_id = ids.draw("patient", 10_000, 65_536)
        patient_class = int(rng.integers(N_CLASSES))
        remaining = int(rng.integers(recordings_per_patient[0], recordings_per_patient[1] + 1))
        while remaining > 0:
            n_eegs = 2 if remaining >= 2 and rng.random() < two_eeg_fraction else 1
            remaining -= n_eegs
            main = patient_class if rng.random() < 0.6 else int(rng.integers(N_CLASSES))
            session = _SessionPlan(patient_id=patient_id, main_class=main,
                                   spectrogram_id=ids.draw("spectrogram", 300_000, 2_147_483_647))
            for _ in range(n_eegs):
                n_sub = int(rng.integers(sub_windows[0], sub_windows[1] + 1))
                steps = rng.integers(1, 11, n_sub - 1) * 2.0 + (rng.random(n_sub - 1) < 0.15) * 0.5
                offsets = np.concatenate([[0.0], np.cumsum(steps)])
                length_s = offsets[-1] + WINDOW_S + float(rng.integers(0, 3))
                session.eegs.append(_EegPlan(offsets_s=offsets, length_samples=int(round(length_s * FS)),
                                             eeg_id=ids.draw("eeg", 500_000, 4_294_967_295),
                                             n_votes=_draw_vote_count(rng)))
            sessions.append(session)
    return sessions


def _session_anchors(rng: np.random.Generator, main_class: int, duration_s: float):
    """Latent class vectors at anchors every ~40 s; the dominant class sometimes switches."""
    times = np.arange(0, duration_s + 40, 40.0)
    times[1:-1] += rng.uniform(-10, 10, max(times.size - 2, 0))
    times[-1] = max(times[-1], duration_s)
    probs, dominant = [], main_class
    for _ in times:
        if rng.random() < 0.2:
            dominant = int(rng.integers(N_CLASSES))
        alpha = np.full(N_CLASSES, 0.35)
        if rng.random() < 0.25:  # a mixed window: two classes share the weight
            second = int(rng.integers(N_CLASSES))
            alpha[dominant] += 4.0
            alpha[second] += 3.0
        else:
            alpha[dominant] += rng.uniform(5.0, 12.0)
        probs.append(rng.dirichlet(alpha))
    return np.array(probs), times


def _window_latent(weights: np.ndarray, start_sample: int) -> np.ndarray:
    """Mean class weights ``(6,)`` over the central 10 s of the window at ``start_sample``."""
    centre = slice(start_sample + CENTER_START_SAMPLE, start_sample + CENTER_START_SAMPLE + CENTER_SAMPLES)
    latent = weights[centre].astype(np.float64).mean(axis=0)
    return latent / latent.sum()


def _draw_votes(rng: np.random.Generator, latent: np.ndarray, n_votes: int) -> tuple[np.ndarray, str]:
    votes = rng.multinomial(n_votes, latent)
    tied = np.flatnonzero(votes == votes.max())
    winner = tied[np.argmax(latent[tied])]
    return votes, CLASSES[winner]


def _write_eeg(path: Path, raw_uv: np.ndarray) -> None:
    channels = raw_uv.T  # (20, n): contiguous per channel for the recordings built here
    arrays = [pa.array(np.ascontiguousarray(channels[j]), type=pa.float32()) for j in range(N_RAW_CHANNELS)]
    pq.write_table(pa.Table.from_arrays(arrays, names=list(RAW_CHANNELS)), path, use_dictionary=False,
                   write_page_checksum=True)


def _write_spectrogram(path: Path, power: np.ndarray) -> None:
    time_s = np.arange(power.shape[0], dtype=np.int64) * SPEC_STEP_S + SPEC_STEP_S // 2
    arrays = [pa.array(time_s)] + [pa.array(np.ascontiguousarray(power[:, j]), type=pa.float32())
                                   for j in range(power.shape[1])]
    pq.write_table(pa.Table.from_arrays(arrays, names=[SPEC_TIME_COLUMN, *SPEC_COLUMNS]), path,
                   use_dictionary=False, write_page_checksum=True)


def _session_rng(seed: int, kind: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, kind, index]))


def _lay_out_session(session: _SessionPlan, rng: np.random.Generator) -> int:
    """Place the EEG files in the session timeline; return the session length in samples."""
    cursor = _SPEC_LEAD_S + float(rng.integers(0, 20))
    for eeg in session.eegs:
        eeg.start_s = cursor
        cursor += eeg.length_samples / FS + float(rng.integers(4, 60))
    end_s = session.eegs[-1].start_s + session.eegs[-1].length_samples / FS + _SPEC_LEAD_S
    end_s += float(rng.integers(0, 20))
    rows = max(math.ceil(end_s / SPEC_STEP_S), SPEC_WINDOW_S // SPEC_STEP_S)
    return rows * SPEC_STEP_S * FS


def _generate_train_session(out: Path, session: _SessionPlan, rng: np.random.Generator,
                            *, nan_fraction: float) -> tuple[list[dict], list[dict]]:
    n = _lay_out_session(session, rng)
    anchors, times = _session_anchors(rng, session.main_class, n / FS)
    rec = synthesize_recording(n, anchors, rng, anchor_times_s=times, nan_stretches=False)
    for eeg in session.eegs:  # NaN stretches where they matter: inside the EEG files
        if rng.random() < nan_fraction:
            start = int(round(eeg.start_s * FS))
            _add_nan_stretches(rec.raw_uv.T, rec.nan_mask, start, start + eeg.length_samples, rng)
    power = kaggle_spectrogram(rec.raw_uv, n // (SPEC_STEP_S * FS))
    _write_spectrogram(out / TRAIN_SPEC_DIR / f"{session.spectrogram_id}.parquet", power)
    rows, latents = [], []
    for eeg in session.eegs:
        start = int(round(eeg.start_s * FS))
        _write_eeg(out / TRAIN_EEG_DIR / f"{eeg.eeg_id}.parquet",
                   rec.raw_uv[start:start + eeg.length_samples])
        for sub_id, offset_s in enumerate(eeg.offsets_s):
            latent = _window_latent(rec.class_weights, start + int(round(offset_s * FS)))
            n_votes = eeg.n_votes  # mostly the same annotators for a whole recording
            if rng.random() < 0.2:
                n_votes = int(np.clip(n_votes + rng.integers(-2, 3), 1, MAX_VOTES))
            votes, consensus = _draw_votes(rng, latent, n_votes)
            rows.append({"eeg_id": eeg.eeg_id, "eeg_sub_id": sub_id,
                         "eeg_label_offset_seconds": float(offset_s),
                         "spectrogram_id": session.spectrogram_id, "spectrogram_sub_id": len(rows),
                         "spectrogram_label_offset_seconds": float(eeg.start_s + offset_s - _SPEC_LEAD_S),
                         "label_id": 0, "patient_id": session.patient_id,
                         "expert_consensus": consensus, **dict(zip(VOTE_COLUMNS, votes.tolist()))})
            latents.append(dict(zip(LATENT_COLUMNS, latent.tolist())))
    return rows, latents


def _generate_test_recording(out: Path, rng: np.random.Generator, *, eeg_id: int, spectrogram_id: int,
                             nan_fraction: float) -> np.ndarray:
    n = SPEC_WINDOW_S * FS
    anchors, times = _session_anchors(rng, int(rng.integers(N_CLASSES)), SPEC_WINDOW_S)
    rec = synthesize_recording(n, anchors, rng, anchor_times_s=times, nan_stretches=False)
    start = int(_SPEC_LEAD_S * FS)
    if rng.random() < nan_fraction:
        _add_nan_stretches(rec.raw_uv.T, rec.nan_mask, start, start + WINDOW_SAMPLES, rng)
    power = kaggle_spectrogram(rec.raw_uv, SPEC_WINDOW_S // SPEC_STEP_S)
    _write_spectrogram(out / TEST_SPEC_DIR / f"{spectrogram_id}.parquet", power)
    _write_eeg(out / TEST_EEG_DIR / f"{eeg_id}.parquet", rec.raw_uv[start:start + WINDOW_SAMPLES])
    return _window_latent(rec.class_weights, start)


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
    cfg = SyntheticConfig.from_dict({"patients": n_patients, "seed": seed, "n_test": n_test,
                                     "recordings_per_patient": recordings_per_patient,
                                     "sub_windows": sub_windows, "two_eeg_fraction": two_eeg_fraction,
                                     "nan_fraction": nan_fraction, "save_answer_key": save_answer_key})
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "train.csv").exists():
        raise DataError(out_dir, "refusing to replace a non-empty folder that is not a data set "
                                 "(no train.csv); choose an empty or new folder")
    started = time.perf_counter()
    plan_rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0]))
    ids = _Ids(np.random.default_rng(np.random.SeedSequence([cfg.seed, 1])))
    sessions = _plan_sessions(plan_rng, ids, n_patients=cfg.patients,
                              recordings_per_patient=cfg.recordings_per_patient,
                              sub_windows=cfg.sub_windows, two_eeg_fraction=cfg.two_eeg_fraction)
    with atomic.atomic_path(out_dir) as tmp:
        for sub in (TRAIN_EEG_DIR, TRAIN_SPEC_DIR, TEST_EEG_DIR, TEST_SPEC_DIR):
            (tmp / sub).mkdir(parents=True)
        rows, latents = _generate_train(tmp, sessions, cfg, status_path)
        train = pd.DataFrame(rows, columns=list(TRAIN_COLUMNS))
        train["label_id"] = [ids.draw("label", 100_000, 4_294_967_295) for _ in range(len(train))]
        latent = pd.DataFrame(latents, columns=list(LATENT_COLUMNS))
        latent.insert(0, "label_id", train["label_id"].to_numpy())
        order = np.lexsort((train["eeg_sub_id"].to_numpy(), train["eeg_id"].to_numpy()))
        train = train.iloc[order].reset_index(drop=True)
        latent = latent.iloc[order].reset_index(drop=True)
        train.to_csv(tmp / "train.csv", index=False)

        test_rows, test_latents = [], []
        for i in range(cfg.n_test):
            eeg_id = ids.draw("eeg", 500_000, 4_294_967_295)
            spectrogram_id = ids.draw("spectrogram", 300_000, 2_147_483_647)
            patient_id = ids.draw("patient", 10_000, 65_536)
            p = _generate_test_recording(tmp, _session_rng(cfg.seed, 3, i), eeg_id=eeg_id,
                                         spectrogram_id=spectrogram_id, nan_fraction=cfg.nan_fraction)
            test_rows.append({"spectrogram_id": spectrogram_id, "eeg_id": eeg_id, "patient_id": patient_id})
            test_latents.append({"eeg_id": eeg_id, **dict(zip(LATENT_COLUMNS, p.tolist()))})
        test = pd.DataFrame(test_rows, columns=list(TEST_COLUMNS)).astype("int64")
        test.to_csv(tmp / "test.csv", index=False)
        submission = pd.DataFrame({"eeg_id": test["eeg_id"],
                                   **{c: np.full(len(test), 1 / N_CLASSES) for c in VOTE_COLUMNS}})
        submission[list(SUBMISSION_COLUMNS)].to_csv(tmp / "sample_submission.csv", index=False)
        if cfg.save_answer_key:
            (tmp / ANSWER_KEY_DIR).mkdir()
            pq.write_table(pa.Table.from_pandas(latent, preserve_index=False),
                           tmp / ANSWER_KEY_DIR / LATENT_FILE)
            test_latent = pd.DataFrame(test_latents, columns=["eeg_id", *LATENT_COLUMNS])
            pq.write_table(pa.Table.from_pandas(test_latent, preserve_index=False),
                           tmp / ANSWER_KEY_DIR / TEST_LATENT_FILE)
    summary = _summary(out_dir, train, test, time.perf_counter() - started)
    logger.info("wrote synthetic data set to %s: %d patients, %d recordings, %d spectrograms, "
                "%d labelled rows, %d test recordings in %.1f s", out_dir, summary["n_patients"],
                summary["n_recordings"], summary["n_spectrograms"], summary["n_rows"],
                summary["n_test"], summary["seconds"])
    return summary


def _generate_train(out: Path, sessions: list[_SessionPlan], cfg: SyntheticConfig, status_path):
    from tqdm import tqdm

    rows, latents = [], []
    for i, session in enumerate(tqdm(sessions, desc="synthetic sessions", unit="session",
                                     disable=None, leave=False)):
        session_rows, session_latents = _generate_train_session(
            out, session, _session_rng(cfg.seed, 2, i), nan_fraction=cfg.nan_fraction)
        rows += session_rows
        latents += session_latents
        if status_path is not None and (i % 20 == 0 or i == len(sessions) - 1):
            update_status(status_path, "synthetic_data", done=i + 1, total=len(sessions),
                          unit="sessions")
    return rows, latents


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


# ------------------------------------------------------------------------------ answer key
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


# ---------------------------------------------------------------------------------- the CLI
def main(out: str | os.PathLike, patients: int, seed: int = 0) -> dict:
    """``hms synth OUT --patients N --seed S``: write a synthetic data set and print a summary."""
    summary = generate_dataset(out, n_patients=patients, seed=seed)
    kl = best_achievable_kl(out)
    print(f"wrote {summary['out_dir']}: {summary['n_patients']} patients, {summary['n_recordings']} EEG "
          f"recordings, {summary['n_spectrograms']} spectrograms, {summary['n_rows']} labelled rows, "
          f"{summary['n_test']} test recordings in {summary['seconds']:.1f} s")
    print("expert consensus: " + ", ".join(f"{c} {n}" for c, n in summary["class_counts"].items()))
    print(f"votes per row {summary['votes_min']}-{summary['votes_max']}, "
          f"{summary['fraction_below_10_votes']:.0%} below 10; best achievable KL {kl:.3f}")
    return summary
