"""Additive artifacts of the synthetic EEG: eye blinks, EKG (and its leak), muscle, pops.

Each artifact maker returns a channel-major ``(20, n)`` float32 array in uV (``ekg_trace``
returns the EKG itself, ``(n,)``); blink, muscle and pop rates (events/s) grow with the
latent weight of the Other class (``w_other``, ``(n,)``) and scale with ``rate``.
"""
from __future__ import annotations

import numpy as np
import scipy.signal

from hms_core.contract import N_RAW_CHANNELS
from hms_core.data.synthetic.sources import FS, N_EEG, add_events, scalp_field, to_channels

ARTIFACT_TYPES = ("blink", "ekg", "muscle", "pop")


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


def blink_artifact(n: int, w_other: np.ndarray, rng: np.random.Generator, rate: float) -> np.ndarray:
    """Eye blinks: 80-300 uV Gaussian bumps (sigma 70-110 ms) with a frontal field."""
    source = np.zeros(n, dtype=np.float32)
    onsets = _event_onsets(rate * (0.04 + 0.3 * w_other), rng)
    sigma = rng.uniform(0.07, 0.11)
    tau = np.arange(int(0.6 * FS)) / FS
    add_events(source, onsets, rng.uniform(80, 300, onsets.size),
               np.exp(-0.5 * ((tau - 0.3) / sigma) ** 2))
    return to_channels(source, scalp_field((rng.uniform(-0.08, 0.08), 1.25), 0.45))


def ekg_trace(n: int, rng: np.random.Generator) -> np.ndarray:
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
    add_events(ekg, onsets, rng.uniform(0.9, 1.1, onsets.size), beat)
    return ekg * rng.uniform(300, 1200) * rng.choice((-1.0, 1.0))


def ekg_leak(ekg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The EKG ``(n,)`` leaking into the EEG channels at about 0.2-4 % of its amplitude.

    Strongest over the left temporal/posterior electrodes, as in referential recordings.
    """
    spatial = 0.004 + 0.02 * scalp_field((-0.7, -0.6), 0.6)
    spatial *= rng.uniform(0.5, 1.5) * rng.normal(1, 0.2, N_EEG)
    return to_channels(ekg, spatial)


_MUSCLE_SOS = scipy.signal.butter(4, (20, 80), btype="bandpass", fs=FS, output="sos")


def muscle_artifact(n: int, w_other: np.ndarray, rng: np.random.Generator, rate: float) -> np.ndarray:
    """Two muscle sources (left and right temporal): 20-80 Hz noise bursts of 0.3-2 s."""
    out = np.zeros((N_RAW_CHANNELS, n), dtype=np.float32)
    for side in (-1.0, 1.0):
        source = np.zeros(n, dtype=np.float32)
        for onset in _event_onsets(rate * (0.015 + 0.1 * w_other), rng):
            length = int(rng.uniform(0.3, 2.0) * FS)
            burst = scipy.signal.sosfilt(_MUSCLE_SOS, rng.standard_normal(length + FS // 2))[FS // 2:]
            burst *= np.hanning(length) * rng.uniform(20, 120) / (burst.std() + 1e-12)
            add_events(source, [onset], [1.0], burst)
        out += to_channels(source, scalp_field((side * 1.05, rng.uniform(-0.2, 0.4)), 0.35))
    return out


def pop_artifact(n: int, w_other: np.ndarray, rng: np.random.Generator, rate: float) -> np.ndarray:
    """Electrode pops: 200-3000 uV steps decaying in 0.1-0.4 s, on one loose electrode."""
    source = np.zeros(n, dtype=np.float32)
    onsets = _event_onsets(rate * (0.003 + 0.02 * w_other), rng)
    decay = np.exp(-np.arange(int(1.5 * FS)) / (rng.uniform(0.1, 0.4) * FS))
    add_events(source, onsets, rng.choice((-1, 1), onsets.size) * rng.uniform(200, 3000, onsets.size),
               decay)
    spatial = np.zeros(N_EEG)
    spatial[rng.integers(N_EEG)] = 1.0  # one loose electrode per recording
    return to_channels(source, spatial)
