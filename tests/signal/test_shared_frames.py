"""RecordingSpectrograms: overlapping windows of one recording share their STFT frames and
still give exactly the per-window spectrograms (within float32 rounding)."""
import numpy as np
import pytest
import torch

from hms_core.signal.filters import FilterConfig
from hms_core.signal.frontend import FrontendConfig, WindowFrontend
from hms_core.signal.shared_frames import RecordingSpectrograms
from hms_core.signal.spectrogram import SpectrogramConfig

WINDOW = 10_000


def _recording(seconds: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(seconds * 200) / 200
    rec = 40 * rng.standard_normal((20, len(t))) + 30 * np.sin(2 * np.pi * 3 * t)
    rec += rng.uniform(-300, 300, (20, 1))  # DC offsets: the window means differ
    return rec.astype(np.float32)


def _both(frontend, rec, starts, batch=5):
    windows = torch.from_numpy(np.stack([rec[:, s:s + WINDOW] for s in starts]))
    shared = RecordingSpectrograms(frontend, starts, WINDOW)
    with torch.no_grad():
        chains, _ = frontend.signals(windows)
        want = frontend.spectrogram(chains)
        parts = [shared(windows[a:a + batch], chains[a:a + batch], starts[a:a + batch])
                 for a in range(0, len(starts), batch)]
    got = tuple(torch.cat([p[i] for p in parts]) for i in range(2))
    return want, got, shared


def _assert_float16_close(want, got):
    for w, g in zip(want, got):
        assert torch.all((w - g).abs() <= 2.0 ** -10 * w.abs() + 1e-3)


def test_overlapping_windows_share_frames_and_equal_the_per_window_spectrograms():
    rec = _recording(200)
    rec[:, 22_000:22_050] += 5000  # a burst past the clip level under some windows
    # whole- and half-second offsets (two phases modulo the 40-sample hop), out of order
    starts = np.array([0, 400, 2000, 800, 100, 1300, 20_000, 12_000, 30_000, 29_600])
    frontend = WindowFrontend(fir_method="fft").eval()
    want, got, shared = _both(frontend, rec, starts)
    _assert_float16_close(want, got)
    assert shared.n_copied > 0.4 * len(starts) * want[0].shape[-1]
    assert shared.n_computed + shared.n_copied == len(starts) * want[0].shape[-1]


def test_clipped_frames_are_not_shared():
    # Without the high-pass the filter passes each window's own mean shift in full, so a
    # burst past the clip level is cut at a different depth under each window.
    rec = _recording(120, seed=1)
    rec[3, 9_000:9_400] += np.linspace(0, 2000, 400, dtype=np.float32)
    rec[3, 12_000:16_000] += 600  # moves the window means apart
    starts = np.array([0, 4000, 8000])
    frontend = WindowFrontend(FrontendConfig(filter=FilterConfig(l_freq_hz=None)), fir_method="fft").eval()
    want, got, shared = _both(frontend, rec, starts)
    _assert_float16_close(want, got)
    # The clipped frames were computed by each window (a shared copy would differ: the clip
    # level cuts the burst at a different depth under each window's own DC shift).
    clean = RecordingSpectrograms(frontend, starts, WINDOW)
    with torch.no_grad():
        chains, _ = frontend.signals(torch.from_numpy(np.stack([rec[:, s:s + WINDOW] for s in starts])))
    clipped = clean._clipped_frames(frontend.spectrogram.region_chains(chains), want[0].shape[-1])
    assert clipped.any(axis=1).all()
    assert shared.n_computed >= clipped.sum()


@pytest.mark.parametrize("window, fmin", [("hamming", 0.0), ("hann", 0.0)])
def test_a_window_with_a_dc_response_is_corrected_exactly(window, fmin):
    # fmin 0 keeps the DC bin, where each window's own mean shift shows: the copies carry it
    cfg = FrontendConfig(filter=FilterConfig(l_freq_hz=None), spectrogram=SpectrogramConfig(window=window, fmin_hz=fmin))
    frontend = WindowFrontend(cfg, fir_method="fft").eval()
    rec = _recording(120, seed=2)
    starts = np.array([0, 1000, 2000, 3000])
    want, got, shared = _both(frontend, rec, starts)
    assert shared.n_copied > 0
    _assert_float16_close(want, got)


def test_windows_with_nan_are_computed_per_window():
    rec = _recording(100, seed=3)
    rec[2, 3000:3100] = np.nan
    starts = np.array([0, 400, 800])
    frontend = WindowFrontend(fir_method="fft").eval()
    want, got, shared = _both(frontend, rec, starts)
    assert shared.n_copied == 0
    for w, g in zip(want, got):
        assert torch.equal(torch.isnan(w), torch.isnan(g))
        assert torch.allclose(torch.nan_to_num(w), torch.nan_to_num(g))
