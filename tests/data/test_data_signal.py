"""What synthesize_recording puts in a recording, and that the data set files carry it."""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.signal

from hms_core.contract import (
    CHAINS, CHANNEL_INDEX, CLASSES, RAW_CHANNELS, SAMPLING_RATE_HZ, SPEC_FREQS_HZ, SPEC_REGIONS,
    SPEC_WINDOW_S, WINDOW_S,
)
from hms_core.data import io
from hms_core.data.synthetic import synthesize_recording

FS = SAMPLING_RATE_HZ
EKG = CHANNEL_INDEX["EKG"]
TEMPORAL = [CHANNEL_INDEX[c] for c in ("F7", "T3", "T5", "F8", "T4", "T6")]


def _rec(seconds, probs=(0, 0, 0, 0, 0, 1), seed=0, **kwargs):
    return synthesize_recording(int(seconds * FS), np.asarray(probs, float), np.random.default_rng(seed), **kwargs)


def test_parts_add_up_and_nan_stretches_are_whole_rows():
    rec = _rec(30, nan_stretches=True)
    n = 30 * FS
    assert rec.raw_uv.shape == rec.clean_uv.shape == (n, 20) and rec.ekg_uv.shape == (n,)
    assert rec.raw_uv.dtype == rec.clean_uv.dtype == np.float32
    assert set(rec.artifacts_uv) == {"blink", "ekg", "muscle", "pop"}
    nan_rows = np.isnan(rec.raw_uv)
    assert nan_rows.any() and np.array_equal(nan_rows.any(axis=1), nan_rows.all(axis=1))
    assert np.array_equal(nan_rows.any(axis=1), rec.nan_mask)
    assert not np.isnan(rec.clean_uv).any()
    rebuilt = rec.clean_uv + sum(rec.artifacts_uv.values()) + rec.dc_offset_uv
    ok = ~rec.nan_mask
    np.testing.assert_allclose(rec.raw_uv[ok], rebuilt[ok], atol=1e-3)
    assert np.allclose(rec.class_weights, [0, 0, 0, 0, 0, 1])


def test_background_is_tens_of_microvolts_with_dc_offsets():
    rec = _rec(20, artifacts=(), nan_stretches=False)
    std = rec.clean_uv[:, :19].std(axis=0)
    assert (std > 8).all() and (std < 80).all()
    assert rec.dc_offset_uv.std() > 30  # per-channel offsets of tens to hundreds of uV
    np.testing.assert_allclose(np.median(rec.raw_uv - rec.clean_uv, axis=0), rec.dc_offset_uv, atol=1e-3)
    assert not _rec(5, artifacts=(), nan_stretches=False, dc_offset=False).dc_offset_uv.any()
    # Posterior alpha: 8-12 Hz power is larger over O1/O2 than over Fp1/Fp2.
    f, p = scipy.signal.welch(rec.clean_uv.T, fs=FS, nperseg=1024)
    alpha = p[:, (f >= 8) & (f <= 12)].mean(axis=1)
    assert alpha[[CHANNEL_INDEX["O1"], CHANNEL_INDEX["O2"]]].mean() > \
        2 * alpha[[CHANNEL_INDEX["Fp1"], CHANNEL_INDEX["Fp2"]]].mean()


def test_ekg_is_a_realistic_qrs_train_that_leaks_into_the_eeg():
    rec = _rec(60, probs=np.full(6, 1 / 6), nan_stretches=False)
    ekg = rec.ekg_uv
    sign = np.sign(ekg[np.argmax(np.abs(ekg))])
    peaks, props = scipy.signal.find_peaks(sign * ekg, height=0.5 * np.abs(ekg).max(), distance=int(0.3 * FS))
    rate_bpm = 60 * (len(peaks) - 1) / ((peaks[-1] - peaks[0]) / FS)
    assert 50 <= rate_bpm <= 105
    widths_s = scipy.signal.peak_widths(sign * ekg, peaks, rel_height=0.5)[0] / FS
    assert np.median(widths_s) < 0.04  # a narrow QRS complex
    assert 200 < np.abs(ekg).max() < 2000
    np.testing.assert_allclose(rec.clean_uv[:, EKG], ekg)
    leak = rec.artifacts_uv["ekg"]
    assert not leak[:, EKG].any()
    for ch in range(19):  # every EEG channel carries a scaled copy of the EKG
        assert abs(np.corrcoef(leak[:, ch], ekg)[0, 1]) > 0.999
    assert 1 < np.abs(leak[:, :19]).max() < 60


def test_artifacts_have_fixed_spatial_mixing_and_their_signatures():
    rec = _rec(60, artifact_rate=20, nan_stretches=False)
    for name, max_rank in (("blink", 1), ("ekg", 1), ("muscle", 2), ("pop", 1)):
        s = np.linalg.svd(rec.artifacts_uv[name][:, :19].astype(np.float64), compute_uv=False)
        assert s[max_rank] < 1e-4 * s[0], name
    blink = rec.artifacts_uv["blink"]
    assert set(np.argsort(np.abs(blink).max(axis=0))[-2:]) == {CHANNEL_INDEX["Fp1"], CHANNEL_INDEX["Fp2"]}
    f, p = scipy.signal.welch(blink[:, CHANNEL_INDEX["Fp1"]], fs=FS, nperseg=1024)
    assert p[f < 4].sum() > 0.9 * p.sum()
    muscle = rec.artifacts_uv["muscle"]
    assert np.argmax(np.abs(muscle).max(axis=0)) in TEMPORAL
    f, p = scipy.signal.welch(muscle[:, TEMPORAL].T, fs=FS, nperseg=512)
    assert p[:, f >= 20].sum() > 0.8 * p.sum()
    pop = rec.artifacts_uv["pop"]
    assert (np.abs(pop).max(axis=0) > 0).sum() == 1 and np.abs(pop).max() > 200
    raw_peak = np.nanmax(np.abs(rec.raw_uv[:, :19] - rec.dc_offset_uv[:19]))
    assert raw_peak > 500  # artifacts reach hundreds to thousands of uV


def _band_features(raw_uv):
    x = raw_uv - np.median(raw_uv, axis=0)
    bands = [(0.5, 2), (2, 4), (4, 8), (8, 13), (13, 20)]
    regions = {}
    for region, pairs in CHAINS.items():
        chains = np.stack([x[:, CHANNEL_INDEX[a]] - x[:, CHANNEL_INDEX[b]] for a, b in pairs])
        f, p = scipy.signal.welch(chains, fs=FS, nperseg=512)
        regions[region] = np.log([p[:, (f >= lo) & (f < hi)].mean() for lo, hi in bands])
    asymmetry = [np.abs(regions["LL"] - regions["RL"]), np.abs(regions["LP"] - regions["RP"])]
    return np.concatenate([*regions.values(), *asymmetry])


def test_class_signatures_are_distinguishable():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(11)
    features, labels = [], []
    for k in range(len(CLASSES)):
        for _ in range(8):
            rec = synthesize_recording(WINDOW_S * FS, np.eye(6)[k], rng, nan_stretches=False)
            features.append(_band_features(rec.raw_uv))
            labels.append(k)
    x, y = np.array(features), np.array(labels)
    train = np.arange(len(y)) % 8 < 5
    scaler = StandardScaler().fit(x[train])
    model = LogisticRegression(max_iter=2000).fit(scaler.transform(x[train]), y[train])
    accuracy = (model.predict(scaler.transform(x[~train])) == y[~train]).mean()
    assert accuracy >= 0.6, accuracy  # chance is 1/6
    # Lateralised patterns are asymmetric between hemispheres, generalised ones are not.
    asym = x[:, -10:].mean(axis=1)
    lateral = asym[np.isin(y, [CLASSES.index("LPD"), CLASSES.index("LRDA")])].mean()
    general = asym[np.isin(y, [CLASSES.index("GPD"), CLASSES.index("GRDA")])].mean()
    assert lateral > 1.5 * general


def test_spectrogram_is_the_chain_power_of_the_eeg(tiny_dataset):
    train = io.read_train_csv(tiny_dataset / "train.csv")
    checked = 0
    for row in train.drop_duplicates("eeg_id").itertuples():
        eeg = io.read_eeg(io.eeg_path(tiny_dataset, row.eeg_id))
        time_s, power = io.read_spectrogram(io.spectrogram_path(tiny_dataset, row.spectrogram_id))
        # Session time of EEG sample 0: the 600 s and 50 s windows share their centre.
        eeg_start_s = row.spectrogram_label_offset_seconds - row.eeg_label_offset_seconds \
            + (SPEC_WINDOW_S - WINDOW_S) / 2
        for k in range(0, len(time_s), 3):
            centre = int(round((time_s[k] - eeg_start_s) * FS))
            if centre - 512 < 0 or centre + 512 > len(eeg):
                continue
            frame = eeg[centre - 512:centre + 512]
            if np.isnan(frame).any():
                assert np.isnan(power[k]).all()
                continue
            expected = []
            for region in SPEC_REGIONS:
                chains = np.stack([frame[:, CHANNEL_INDEX[a]] - frame[:, CHANNEL_INDEX[b]]
                                   for a, b in CHAINS[region]]).astype(np.float64)
                f, p = scipy.signal.periodogram(chains, fs=FS, window="hann", detrend="constant")
                bins = np.rint(SPEC_FREQS_HZ / (f[1] - f[0])).astype(int)
                expected.append(p[:, bins].mean(axis=0))
            np.testing.assert_allclose(power[k], np.concatenate(expected), rtol=2e-3, atol=1e-6)
            checked += 1
    assert checked > 20


def test_data_set_files_carry_nan_dc_ekg_and_label_drift(tiny_dataset):
    train = io.read_train_csv(tiny_dataset / "train.csv")
    nan_files = 0
    for eeg_id in train["eeg_id"].unique():
        eeg = io.read_eeg(io.eeg_path(tiny_dataset, eeg_id))
        rows = np.isnan(eeg)
        assert np.array_equal(rows.any(axis=1), rows.all(axis=1))
        nan_files += rows.any()
        assert np.abs(np.nanmedian(eeg[:, :19], axis=0)).max() > 50  # DC offsets
        assert np.nanmax(np.abs(eeg[:, RAW_CHANNELS.index("EKG")] - np.nanmedian(eeg[:, -1]))) > 150
    assert nan_files >= 1
    latent = pd.read_parquet(tiny_dataset / "answer_key" / "latent.parquet")
    merged = train.merge(latent, on="label_id")
    spread = merged.groupby("eeg_id")[[c for c in latent.columns if c.startswith("p_")]].agg(np.ptp)
    assert (spread.max(axis=1) > 0.02).any()  # the latent vector drifts within recordings
