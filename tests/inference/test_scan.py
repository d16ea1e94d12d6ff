"""The window arithmetic of ``hms annotate``: spectrogram rows, chunked spectrogram, cleaning fit."""
from __future__ import annotations

import mne
import numpy as np
import pytest

from hms_core.contract import RAW_CHANNELS, SPEC_WINDOW_ROWS, WINDOW_SAMPLES
from hms_core.data.io import spectrogram_first_row
from hms_core.data.recording import Recording, contract_name
from hms_core.data.synthetic import synthesize_recording
from hms_core.inference.predict import cleaning_config
from hms_core.inference.scan import (FIT_MAX_S, WindowCleaner, recording_spectrogram, spec_context, spec_first_row,
                                     window_start)
from hms_core.signal.ica import clean_recording
from hms_core.signal.spectrogram import kaggle_spectrogram


@pytest.fixture(scope="module")
def long_edf(tmp_path_factory):
    """A 700 s synthetic recording with NaN-free data, as EDF, and its samples (n, 20) uV."""
    rec = synthesize_recording(700 * 200, np.eye(6)[1], np.random.default_rng(3), nan_stretches=False)
    path = tmp_path_factory.mktemp("scan") / "long.edf"
    raw = mne.io.RawArray(rec.raw_uv.T.astype(np.float64) * 1e-6,
                          mne.create_info(list(RAW_CHANNELS), 200.0, ["eeg"] * 19 + ["ecg"]), verbose=False)
    mne.export.export_raw(path, raw, verbose=False)
    return path


@pytest.mark.parametrize(("name", "expected"), [("EEG Fp1-REF", "Fp1"), ("FP2", "Fp2"), ("T7", "T3"), ("EEG T8-LE", "T4"),
                                                ("p7", "T5"), ("P8-AVG", "T6"), ("ECG", "EKG"), ("EEG EKG1-REF", "EKG"),
                                                ("Photic", None), ("EEG A1-REF", None)])
def test_contract_name(name, expected):
    assert contract_name(name) == expected


def test_window_and_spectrogram_rows_follow_the_kaggle_layout():
    # Onset 20 s: the window is samples 0..10000, its context starts 275 s before it.
    assert window_start(20.0) == 0 and window_start(0.0) == -4000
    for onset in (295.0, 300.0, 301.0, 1000.0):
        assert spec_first_row(onset) == spectrogram_first_row(onset - 20 - 275)
    power = np.arange(400 * 400, dtype=np.float32).reshape(400, 400)
    context, padded = spec_context(power, 0.0)  # context starts at -295 s: rows -148 (time -295 s) .. 151
    assert padded == 148 * 2 and np.isnan(context[:148]).all() and np.array_equal(context[148:], power[:152])
    context, padded = spec_context(power, 400.0)
    assert padded == 0 and np.array_equal(context, power[spec_first_row(400.0):][:SPEC_WINDOW_ROWS])


def test_chunked_spectrogram_equals_one_call(long_edf):
    rec = Recording(long_edf)
    whole = rec.read(0, rec.n_samples)
    expected = kaggle_spectrogram(whole, rec.n_samples // 400)
    got = recording_spectrogram(rec, chunk_rows=37)  # chunk edges everywhere
    assert got.shape == expected.shape and np.allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_recording_fit_is_bounded_and_cleans_like_clean_recording(long_edf):
    rec = Recording(long_edf)
    cfg = cleaning_config({"ica": {"enabled": True, "fit_on": "recording"}})
    cleaner = WindowCleaner(rec, cfg)
    assert cleaner.fit_s == FIT_MAX_S and "fitted once on 600 s" in cleaner.describe()
    assert cleaner.cleaner.info["ica"]["status"] == "applied"
    window = rec.read(100_000, 100_000 + WINDOW_SAMPLES)
    applied = cleaner.clean(window)
    # The fitted cleaning is linear: applied to the window or cut from the whole, they agree up to a DC offset.
    whole = cleaner.cleaner.apply(rec.read(0, rec.n_samples))[100_000:100_000 + WINDOW_SAMPLES]
    assert np.allclose(applied - applied.mean(0), whole - whole.mean(0), atol=1e-2)
    per_window = WindowCleaner(rec, cleaning_config({"ica": {"enabled": True, "fit_on": "window"}}))
    assert per_window.cleaner is None
    assert np.array_equal(per_window.clean(window), clean_recording(window, per_window.cfg)[0])
