"""One synthetic recording: background, class patterns and artifacts mixed over time.

The latent class-probability vector may drift over the recording (anchors linearly
interpolated); it weights the class signatures of :mod:`hms_core.data.synthetic.sources`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.fft

from hms_core.contract import CHANNEL_INDEX, CLASSES, N_CLASSES, N_RAW_CHANNELS
from hms_core.data.synthetic.artifacts import (
    ARTIFACT_TYPES,
    blink_artifact,
    ekg_leak,
    ekg_trace,
    muscle_artifact,
    pop_artifact,
)
from hms_core.data.synthetic.sources import (
    FS,
    N_EEG,
    bandpass_spectrum,
    class_sources,
    rfft_freqs,
    scalp_field,
    shaped_noise,
    to_channels,
)

_EKG_COL = CHANNEL_INDEX["EKG"]


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
    eeg = clean[:N_EEG]

    # Background: per-channel 1/f noise, a posterior alpha rhythm, polymorphic activity for Other.
    n_fft = scipy.fft.next_fast_len(n, real=True)  # noise is made this long, then cut to n
    f = rfft_freqs(n_fft)[None, :].astype(np.float32)
    exponents = rng.uniform(0.5, 0.8, (N_EEG, 1)).astype(np.float32)
    pink = np.exp(-exponents * np.log(np.maximum(f, 0.3))) * ((f > 0.3) / (1 + (f / 45) ** 4))
    alpha = np.exp(-0.5 * ((f - rng.uniform(8.5, 11.0)) / 0.6) ** 2)
    poly = np.repeat(bandpass_spectrum(f, 1.0, 7.0), N_EEG, axis=0)
    eeg += shaped_noise(n_fft, pink, rng)[:, :n] * rng.uniform(12, 22, (N_EEG, 1)).astype(np.float32)
    slow = shaped_noise(n_fft, np.concatenate([alpha, poly]), rng)[:, :n]
    eeg += to_channels(slow[0], scalp_field((0.0, -1.0), 0.6) * rng.uniform(8, 20))[:N_EEG]
    eeg += slow[1:] * (w_other * np.float32(rng.uniform(20, 35)))

    for k, make_wave, amplitude_uv, spatial, delays in class_sources(n, rng):
        w = weights[k]
        if w.max() < 1e-3:
            continue
        mixed = (make_wave() * amplitude_uv).astype(np.float32) * w
        for ch in range(N_EEG):
            d = int(delays[ch])
            eeg[ch, d:] += np.float32(spatial[ch]) * mixed[:n - d]

    ekg = ekg_trace(n, rng).astype(np.float32)
    clean[_EKG_COL] = ekg
    makers = {"blink": lambda: blink_artifact(n, w_other, rng, artifact_rate),
              "ekg": lambda: ekg_leak(ekg, rng),
              "muscle": lambda: muscle_artifact(n, w_other, rng, artifact_rate),
              "pop": lambda: pop_artifact(n, w_other, rng, artifact_rate)}
    artifacts_cm = {name: makers[name]() for name in ARTIFACT_TYPES if name in artifacts}

    dc = (rng.normal(0, 150, N_RAW_CHANNELS) if dc_offset else np.zeros(N_RAW_CHANNELS)).astype(np.float32)
    raw = clean + dc[:, None]
    for part in artifacts_cm.values():
        raw += part
    nan_mask = np.zeros(n, dtype=bool)
    if nan_stretches:
        add_nan_stretches(raw, nan_mask, 0, n, rng)
    # (n, 20) views of the channel-major buffers: each channel stays contiguous in memory.
    return SyntheticRecording(raw_uv=raw.T, clean_uv=clean.T,
                              artifacts_uv={k: v.T for k, v in artifacts_cm.items()}, ekg_uv=ekg,
                              class_weights=weights.T, dc_offset_uv=dc, nan_mask=nan_mask)


def add_nan_stretches(raw_cm: np.ndarray, nan_mask: np.ndarray, lo: int, hi: int,
                      rng: np.random.Generator) -> None:
    """Blank 1-3 stretches of 0.5-8 s (all channels) between samples ``lo`` and ``hi``, in place.

    ``raw_cm`` is channel-major ``(20, n)``; ``nan_mask`` ``(n,)`` marks the blanked samples.
    """
    for _ in range(rng.integers(1, 4)):
        length = int(rng.uniform(0.5, 8.0) * FS)
        start = lo + int(rng.integers(0, max(hi - lo - length, 1)))
        nan_mask[start:start + length] = True
    raw_cm[:, nan_mask] = np.nan
