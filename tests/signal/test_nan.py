from types import SimpleNamespace

import numpy as np
import pytest

from hms_core.errors import DataError
from hms_core.signal.ica import IcaConfig, clean_recording
from hms_core.signal.nan import NanConfig, interpolate_short_gaps


def test_short_gaps_interpolated_long_gaps_left():
    x = np.arange(20, dtype=float)[:, None].repeat(2, axis=1)
    x[3:5, 0] = np.nan  # 2 samples: interpolated
    x[8:16, 0] = np.nan  # 8 samples: too long
    x[0:2, 1] = np.nan  # short gap at the edge: nearest value
    out = interpolate_short_gaps(x, max_gap_samples=3)
    assert np.allclose(out[3:5, 0], [3, 4])
    assert np.isnan(out[8:16, 0]).all()
    assert np.allclose(out[0:2, 1], 2)
    assert np.isnan(x[3, 0])  # input untouched


def cfg(ica=False, max_interp_s=0.5):
    return SimpleNamespace(nan=NanConfig(max_interp_s=max_interp_s), ica=IcaConfig(enabled=ica))


def test_clean_recording_removes_median_zeroes_long_gaps_and_reports_fraction():
    rng = np.random.default_rng(0)
    raw = (rng.standard_normal((4000, 20)) * 10 + 500).astype(np.float32)
    raw[100:150] = np.nan  # 0.25 s: interpolated
    raw[1000:1400] = np.nan  # 2 s: zeroed
    out, info = clean_recording(raw, cfg())
    assert not np.isnan(out).any()
    assert np.all(out[1000:1400] == 0)
    assert np.all(np.abs(out[100:150]) < 60)  # interpolated near the (removed) level, not zero-filled steps
    assert np.abs(np.median(out[:1000], axis=0)).max() < 2  # DC of 500 uV removed
    assert info["nan_fraction"] == pytest.approx(450 / 4000)
    assert info["zeroed_fraction"] == pytest.approx(400 / 4000)
    assert info["ica"]["status"] == "disabled"


def test_all_nan_recording_is_a_data_error():
    raw = np.full((2000, 20), np.nan, dtype=np.float32)
    with pytest.raises(DataError, match=r"x\.parquet \(eeg_id 7\): all EEG values are NaN"):
        clean_recording(raw, cfg(), eeg_id=7, path="x.parquet")


def test_wrong_channel_count_is_a_data_error():
    with pytest.raises(DataError, match="expected"):
        clean_recording(np.zeros((100, 19), dtype=np.float32), cfg(), eeg_id=3)


def test_infinite_samples_are_gaps_not_propagated():
    rng = np.random.default_rng(1)
    raw = (rng.standard_normal((4000, 20)) * 10).astype(np.float32)
    raw[2000, 5] = np.inf  # one sample: interpolated like a short NaN gap
    raw[3000:3600, 2] = -np.inf  # 3 s: zeroed like a long NaN gap
    out, info = clean_recording(raw, cfg())
    assert np.isfinite(out).all()
    assert abs(out[2000, 5]) < 60 and np.all(out[3000:3600, 2] == 0)
    assert info["nan_fraction"] == pytest.approx(601 / (4000 * 19))
    filled = interpolate_short_gaps(np.array([[0.0], [np.inf], [2.0]]), max_gap_samples=1)
    assert filled[1, 0] == 1.0
