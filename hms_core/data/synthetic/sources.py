"""Sources of the synthetic EEG: scalp geometry, class waveforms and shaped noise.

Class signatures (unit waveforms, scaled per session):

- Seizure: rhythmic spike-and-wave whose frequency (2-7 Hz) and amplitude evolve.
- LPD: sharp discharges every 0.8-1.6 s over one hemisphere.
- GPD: sharp (triphasic) discharges every 0.5-2 s over both hemispheres, frontal maximum.
- LRDA: rhythmic 1-3 Hz delta over one hemisphere.
- GRDA: rhythmic 1-3 Hz delta over both hemispheres, frontal maximum.
- Other: irregular polymorphic 1-7 Hz activity (``bandpass_spectrum`` noise, see
  :mod:`hms_core.data.synthetic.signals`), and more artifacts.

Every source reaches the 19 EEG electrodes through a fixed Gaussian scalp field
(``scalp_field``) and ``to_channels``.
"""
from __future__ import annotations

import numpy as np
import scipy.fft

from hms_core.contract import EEG_CHANNELS, N_RAW_CHANNELS, SAMPLING_RATE_HZ

FS = SAMPLING_RATE_HZ
N_EEG = len(EEG_CHANNELS)

# Approximate 10-20 scalp positions (x: left -1 .. right +1, y: back -1 .. front +1).
_POSITIONS = {
    "Fp1": (-0.3, 0.95), "Fp2": (0.3, 0.95), "F7": (-0.8, 0.6), "F3": (-0.4, 0.5),
    "Fz": (0.0, 0.5), "F4": (0.4, 0.5), "F8": (0.8, 0.6), "T3": (-1.0, 0.0),
    "C3": (-0.5, 0.0), "Cz": (0.0, 0.0), "C4": (0.5, 0.0), "T4": (1.0, 0.0),
    "T5": (-0.8, -0.6), "P3": (-0.4, -0.5), "Pz": (0.0, -0.5), "P4": (0.4, -0.5),
    "T6": (0.8, -0.6), "O1": (-0.3, -0.95), "O2": (0.3, -0.95),
}
_XY = np.array([_POSITIONS[c] for c in EEG_CHANNELS])  # (19, 2)


# ------------------------------------------------------------------------- spatial fields
def scalp_field(focus: tuple[float, float], spread: float) -> np.ndarray:
    """Gaussian scalp field (19,) around ``focus``: how strongly each electrode sees a source."""
    d2 = ((_XY - np.asarray(focus)) ** 2).sum(axis=1)
    return np.exp(-d2 / (2 * spread**2))


def _delays(focus: tuple[float, float], rng: np.random.Generator, *, ms_per_unit: float) -> np.ndarray:
    """Integer sample delays (19,) growing with the distance from the focus (field spread)."""
    d = np.sqrt(((_XY - np.asarray(focus)) ** 2).sum(axis=1))
    delay_s = d * ms_per_unit / 1000 + rng.uniform(0, 0.008, N_EEG)
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
    add_events(out, onsets, gains, template)
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


def class_sources(n: int, rng: np.random.Generator):
    """The five class patterns (all but Other) of one recording, in ``CLASSES`` order.

    Yields ``(class index, make_wave, amplitude_uv, field (19,), delays (19,))``, where
    ``make_wave()`` returns the unit waveform ``(n,)``; it draws from ``rng`` only when
    called, so a pattern whose weight is zero costs no waveform draws.
    """
    lpd_focus, lrda_focus = _lateral_focus(rng), _lateral_focus(rng)
    gpd_focus, grda_focus = _general_focus(rng), _general_focus(rng)
    sz_focus = (rng.uniform(-0.6, 0.6), rng.uniform(-0.5, 0.6))
    yield (0, lambda: _seizure_wave(n, rng), rng.uniform(90, 180),
           scalp_field(sz_focus, rng.uniform(0.6, 0.9)), _delays(sz_focus, rng, ms_per_unit=20))
    yield (1, lambda: _discharge_train(n, rng, rng.uniform(0.8, 1.6),
                                       _sharp_template(rng.uniform(0.02, 0.035), False)),
           rng.uniform(110, 220), scalp_field(lpd_focus, rng.uniform(0.45, 0.6)),
           _delays(lpd_focus, rng, ms_per_unit=25))
    yield (2, lambda: _discharge_train(n, rng, rng.uniform(0.5, 2.0),
                                       _sharp_template(rng.uniform(0.025, 0.04), True)),
           rng.uniform(110, 220), scalp_field(gpd_focus, rng.uniform(0.9, 1.2)),
           _delays(gpd_focus, rng, ms_per_unit=30))
    yield (3, lambda: _rhythmic_delta(n, rng), rng.uniform(70, 140),
           scalp_field(lrda_focus, rng.uniform(0.45, 0.6)), _delays(lrda_focus, rng, ms_per_unit=30))
    yield (4, lambda: _rhythmic_delta(n, rng), rng.uniform(70, 140),
           scalp_field(grda_focus, rng.uniform(0.9, 1.2)), _delays(grda_focus, rng, ms_per_unit=40))


# ------------------------------------------------------------------------- noise shaping
def shaped_noise(n: int, spectra: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise (k, n) whose amplitude spectra are the rows of ``spectra`` (k, n//2+1).

    Each row has unit expected RMS. Random coefficients are drawn only up to the last
    bin where some spectrum is non-negligible (low-pass sources are cheap).
    """
    k, _ = spectra.shape
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


def rfft_freqs(n: int) -> np.ndarray:
    """Frequencies (Hz) of the ``n // 2 + 1`` bins of a real FFT of ``n`` samples at 200 Hz."""
    return np.fft.rfftfreq(n, d=1 / FS)


def bandpass_spectrum(freqs: np.ndarray, lo_hz: float, hi_hz: float) -> np.ndarray:
    """Amplitude response of a smooth band-pass (4th-order low edge, 8th-order high edge)."""
    return 1 / (1 + (lo_hz / np.maximum(freqs, 1e-3)) ** 4) / (1 + (freqs / hi_hz) ** 8)


def add_events(out: np.ndarray, onsets: np.ndarray, gains: np.ndarray, template: np.ndarray) -> None:
    """Add ``gain * template`` at each onset (sample index) to ``out`` (n,), in place, clipped at the ends."""
    n, m = out.shape[0], template.shape[0]
    for onset, gain in zip(onsets, gains):
        if onset >= n or onset + m <= 0:
            continue
        lo, hi = max(onset, 0), min(onset + m, n)
        out[lo:hi] += gain * template[lo - onset:hi - onset]


def to_channels(source: np.ndarray, spatial: np.ndarray) -> np.ndarray:
    """Channel-major ``(20, n)`` projection of one source through its fixed scalp field (19,)."""
    out = np.zeros((N_RAW_CHANNELS, source.shape[0]), dtype=np.float32)
    np.multiply(spatial.astype(np.float32)[:, None], source.astype(np.float32)[None, :], out=out[:N_EEG])
    return out
