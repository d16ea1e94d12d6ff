import numpy as np
import torch
from scipy import signal as sp_signal

from hms_core.contract import (
    CHANNEL_INDEX, RAW_CHANNELS, REGION_CHAIN_ROWS, SAMPLING_RATE_HZ, SPEC_COLUMNS, SPEC_FREQS_HZ,
    SPEC_REGIONS,
)
from hms_core.signal.frontend import kaggle_spec_image
from hms_core.signal.spectrogram import (
    RegionSpectrogram, SpectrogramConfig, kaggle_spectrogram, mel_filterbank,
)

torch.set_num_threads(1)


def test_stft_power_equals_numpy_fft_and_regions_average_chains():
    cfg = SpectrogramConfig(n_fft=128, hop=20, fmin_hz=1.0, fmax_hz=20.0, n_mels=16)
    module = RegionSpectrogram(cfg)
    chains = torch.randn(2, 18, 2000) * 30
    power = module.power(chains).numpy()  # (2, 16, F, 100)
    freqs = cfg.bin_freqs_hz()
    assert power.shape == (2, 16, len(freqs), 100)
    x = np.pad(chains[1, 5].double().numpy(), (64, 44), mode="reflect")
    window = sp_signal.get_window("hann", 128)
    frames = np.stack([x[k * 20:k * 20 + 128] for k in range(100)])
    spectrum = np.fft.rfft(frames * window, axis=1)[:, np.isin(np.fft.rfftfreq(128, 1 / 200), freqs)]
    expected = (np.abs(spectrum) ** 2 / np.sum(window ** 2)).T
    assert np.abs(power[1, 5] - expected).max() < 1e-5 * expected.max()
    spec, mel = module(chains)
    rows = REGION_CHAIN_ROWS["RL"]  # region 1 averages chains 4..7 (= power rows 4..7)
    assert np.allclose(spec[0, 1].numpy(), np.log(np.clip(power[0, 4:8].mean(axis=0), 1e-4, None)), atol=1e-4)
    assert rows == (4, 5, 6, 7)
    assert mel.shape == (2, 4, 16, 100)


def test_sine_lands_in_its_bin():
    cfg = SpectrogramConfig()
    t = np.arange(10000) / 200
    chains = torch.tensor(np.sin(2 * np.pi * 7.8125 * t), dtype=torch.float32).repeat(1, 18, 1)
    spec, mel = RegionSpectrogram(cfg)(chains)
    assert spec.shape == (1, 4, 50, 250) and mel.shape == (1, 4, 64, 250)
    peak = cfg.bin_freqs_hz()[spec[0, 0].mean(dim=-1).argmax()]
    assert abs(peak - 7.8125) < 0.4
    # mel rows are nearly linear in Hz below 20 Hz: 7.8 Hz sits about 37 % up the 0.78-19.9 Hz band
    assert 0.3 < mel[0, 0].mean(dim=-1).argmax().item() / 64 < 0.45


def test_mel_filterbank_has_no_empty_rows_and_averages():
    fb = mel_filterbank(np.arange(2, 52) * 200 / 512, 64)
    assert fb.shape == (64, 50)
    assert np.allclose(fb.sum(axis=1), 1) and (fb.max(axis=1) > 0).all()


def test_center_zoom_spectrogram():
    from hms_core.signal.frontend import WindowFrontend

    frontend = WindowFrontend()
    spec, mel = frontend.center_spectrograms(torch.randn(2, 18, 10000))
    assert spec.shape == (2, 4, 50, 250) and mel.shape == (2, 4, 64, 250)


def test_kaggle_spec_image_layout_log_and_nan():
    b, t, r, f = 2, 300, 4, 100
    power = np.empty((b, t, 400), dtype=np.float32)
    for col, name in enumerate(SPEC_COLUMNS):
        region = ("LL", "RL", "LP", "RP").index(name.split("_")[0])
        power[:, :, col] = np.exp(0.01 * col % 3) * (1 + region) + np.arange(t)[None, :] * 1e-3
    power[1, 10, 250] = np.nan
    power[0, 0, 0] = 1e9  # clipped at exp(8)
    image = kaggle_spec_image(torch.from_numpy(power)).numpy()
    assert image.shape == (b, r, f, t)
    assert np.isclose(image[1, 2, 50, 10], -4.0)  # NaN -> the log floor; column 250 = LP (region 2), bin 50
    assert np.isclose(image[0, 0, 0, 0], 8.0)
    assert np.isclose(image[0, 3, 7, 123], np.log(power[0, 123, 307]))
    assert np.isclose(image[1, 1, 99, 299], np.log(power[1, 299, 199]))


def test_kaggle_spectrogram_puts_a_sine_in_its_region_and_bin_and_nan_in_its_rows():
    n_rows, fs = 30, SAMPLING_RATE_HZ  # 60 s, one row every 2 s
    t = np.arange(n_rows * 2 * fs) / fs
    raw = np.zeros((t.size, len(RAW_CHANNELS)), dtype=np.float32)
    raw[:, CHANNEL_INDEX["T5"]] = 50 * np.sin(2 * np.pi * SPEC_FREQS_HZ[47] * t)  # T5: left temporal only
    power = kaggle_spectrogram(raw, n_rows)
    assert power.shape == (n_rows, len(SPEC_COLUMNS)) and power.dtype == np.float32
    regions = power.reshape(n_rows, len(SPEC_REGIONS), len(SPEC_FREQS_HZ))
    assert (regions[:, 0].argmax(axis=1) == 47).all()
    assert (regions[:, 1:] == 0).all()
    raw[5000, CHANNEL_INDEX["Fp2"]] = np.nan  # 25 s: inside the 5.12 s frames of rows 11-13 only
    regions = kaggle_spectrogram(raw, n_rows).reshape(n_rows, len(SPEC_REGIONS), len(SPEC_FREQS_HZ))
    nan_rows = np.flatnonzero(np.isnan(regions).any(axis=(1, 2)))
    assert nan_rows.tolist() == [11, 12, 13]
    right = [SPEC_REGIONS.index("RL"), SPEC_REGIONS.index("RP")]
    assert np.isnan(regions[nan_rows][:, right]).all()
    assert np.isfinite(np.delete(regions[nan_rows], right, axis=1)).all()


def test_kaggle_spec_gaps_are_left_out_of_the_standardisation():
    """A NaN stretch of the Kaggle spectrogram must read as a gap, not as 1 uV^2 of power."""
    from hms_core.models.efficientnet import standardise_log_power

    rng = np.random.default_rng(0)
    # real Kaggle spectrograms span powers from below 1 uV^2 (log < 0) to thousands
    power = np.exp(rng.uniform(-3.0, 6.0, size=(1, 300, 400))).astype(np.float32)
    gapped = power.copy()
    gapped[0, 100:200] = np.nan  # a third of the window lost, as in a disconnected recording
    z_full = standardise_log_power(kaggle_spec_image(torch.from_numpy(power)))
    z_gap = standardise_log_power(kaggle_spec_image(torch.from_numpy(gapped)))
    assert torch.all(z_gap[..., 100:200] == 0)
    kept = np.r_[0:100, 200:300]
    # the statistics of the kept cells hardly move (a third fewer samples of the same law);
    # the full window's single lowest cell is left out as a presumed floor, so compare the rest
    both = (z_full[..., kept] != 0)
    assert torch.allclose(z_gap[..., kept][both], z_full[..., kept][both], atol=0.05)
