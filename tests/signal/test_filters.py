import numpy as np
import pytest
import torch
from scipy.ndimage import convolve1d

from hms_core.config import from_mapping
from hms_core.errors import ConfigError
from hms_core.signal.filters import FilterConfig, ZeroPhaseFIR, design_kernel, frequency_response

torch.set_num_threads(1)


def gain(cfg, freqs):
    return np.abs(frequency_response(design_kernel(cfg), np.asarray(freqs, dtype=float)))


def test_bandpass_keeps_pass_band_and_attenuates_stop_bands():
    g = gain(FilterConfig(), [0.02, 1.0, 3.0, 10.0, 18.0, 30.0, 60.0])
    assert np.all(np.abs(g[1:5] - 1) < 0.01)  # 1-18 Hz within 1 %
    assert g[0] < 0.01 and g[5] < 0.01 and g[6] < 1e-3


def test_notch_removes_mains_inside_a_wide_pass_band():
    cfg = FilterConfig(l_freq_hz=0.5, h_freq_hz=None, notch_hz=60.0)
    g = gain(cfg, [10.0, 40.0, 60.0, 80.0])
    assert g[2] < 0.01
    assert np.all(np.abs(g[[0, 1, 3]] - 1) < 0.01)
    g50 = gain(FilterConfig(h_freq_hz=None, notch_hz=50.0), [50.0, 60.0])
    assert g50[0] < 0.01 and abs(g50[1] - 1) < 0.01


def test_everything_off_is_identity():
    k = design_kernel(FilterConfig(l_freq_hz=None, h_freq_hz=None, notch_hz=None, numtaps=11))
    assert k[5] == 1 and np.count_nonzero(k) == 1


def test_kernel_is_symmetric_and_application_is_zero_phase():
    kernel = design_kernel(FilterConfig())
    assert np.array_equal(kernel, kernel[::-1])
    t = np.arange(10000) / 200
    x = np.sin(2 * np.pi * 5 * t) + 3 * np.exp(-0.5 * ((t - 25) / 0.1) ** 2)  # 5 Hz + a pulse at 25 s
    y = ZeroPhaseFIR(kernel)(torch.tensor(x, dtype=torch.float32)[None, None])[0, 0].numpy()
    # Zero phase: the output equals filtering with the real, non-negative gain |H(f)| alone.
    freqs = np.fft.rfftfreq(len(x), 1 / 200)
    ideal = np.fft.irfft(np.fft.rfft(x) * np.abs(frequency_response(kernel, freqs)), n=len(x))
    middle = slice(1000, 9000)
    assert np.abs(y[middle] - ideal[middle]).max() < 1e-3
    assert np.argmax(y[4900:5100]) == np.argmax(x[4900:5100])  # the pulse peak is not delayed


def test_polyphase_convolution_equals_plain_convolution_with_reflect_edges():
    kernel = design_kernel(FilterConfig(numtaps=201))
    x = np.random.default_rng(0).standard_normal((2, 3, 1000)).astype(np.float32)
    expected = convolve1d(x.astype(np.float64), kernel, axis=-1, mode="mirror")
    got = ZeroPhaseFIR(kernel, phases=16)(torch.from_numpy(x)).numpy()
    assert np.abs(got - expected).max() < 1e-4


@pytest.mark.parametrize("n_times", [1000, 10000, 997])
def test_fft_convolution_equals_plain_convolution_with_reflect_edges(n_times):
    kernel = design_kernel(FilterConfig())  # 801 taps, as preprocessing uses it
    x = 100 * np.random.default_rng(1).standard_normal((2, 3, n_times)).astype(np.float32)
    expected = convolve1d(x.astype(np.float64), kernel, axis=-1, mode="mirror")
    got = ZeroPhaseFIR(kernel, method="fft")(torch.from_numpy(x)).numpy()
    assert got.shape == x.shape
    assert np.abs(got - expected).max() < 1e-5 * np.abs(x).max()
    assert "kernel" not in ZeroPhaseFIR(kernel, method="fft").state_dict()  # exports stay as they were
    with pytest.raises(ValueError, match="fft"):
        ZeroPhaseFIR(kernel, method="fir")


@pytest.mark.parametrize("bad", [{"notch_hz": 55}, {"numtaps": 800}, {"l_freq_hz": 30, "h_freq_hz": 20},
                                 {"h_freq_hz": 150}, {"cutoff": 3}])
def test_bad_filter_config_names_the_key(bad):
    with pytest.raises(ConfigError, match=list(bad)[0] if "cutoff" not in bad else "cutoff"):
        from_mapping(FilterConfig, bad, "preprocessing.filter")
