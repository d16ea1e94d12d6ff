"""The rules labeler's fast paths against the references they replace: MNE's ICA.fit (picard),
picard itself, scipy's Welch density, numpy's median and the step-by-step cleaning."""
import warnings

import numpy as np
import pytest

from hms_core.signal.ica import ArtifactModel, _median, _segment_loudness, _welch, highpass
from hms_core.signal.ica_solver import _picard_ortho, fit_picard

RULES_FIT = {"tol": 1e-3, "extended": False, "ortho": True}


def _recording_fit_data(seed: int, n_seconds: int = 40) -> np.ndarray:
    """``(19, n)`` high-passed EEG (uV) of a synthetic recording with blinks, EKG and muscle."""
    from hms_core.data.synthetic import synthesize_recording

    rec = synthesize_recording(n_seconds * 200, np.array([0.3, 0.1, 0.1, 0.2, 0.1, 0.2]),
                               np.random.default_rng(seed), artifacts=("blink", "ekg", "muscle"),
                               nan_stretches=False, dc_offset=False)
    return highpass(rec.raw_uv[:, :19].astype(np.float64), 1.0)[::2].T


@pytest.mark.parametrize("n_components", [19, 12])
def test_fit_picard_equals_mne_ica(n_components):
    import mne

    data = _recording_fit_data(seed=3)
    names = [f"c{i}" for i in range(len(data))]
    ica = mne.preprocessing.ICA(n_components=n_components, method="picard", fit_params=dict(RULES_FIT),
                                max_iter=300, random_state=0, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not high-pass filtered (it is, the Raw just does not say so)
        ica.fit(mne.io.RawArray(data * 1e-6, mne.create_info(names, 200.0, "eeg", verbose=False), verbose=False),
                verbose=False)
    got = fit_picard(data, n_components, fit_params=RULES_FIT, max_iter=300, random_state=0)
    assert got.n_components_ == ica.n_components_ and got.n_iter_ == ica.n_iter_
    for name in ("unmixing_matrix_", "mixing_matrix_", "pca_components_", "pca_mean_", "pre_whitener_"):
        want = getattr(ica, name)
        assert np.allclose(getattr(got, name), want, rtol=0, atol=1e-10 * np.abs(want).max()), name
    assert np.allclose(got.get_components(), ica.get_components(), rtol=0, atol=1e-10 * np.abs(ica.get_components()).max())


def test_fit_picard_rejects_non_finite_data():
    data = _recording_fit_data(seed=4, n_seconds=25)
    data[3, 10] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        fit_picard(data, 19, fit_params=RULES_FIT, max_iter=300, random_state=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_picard_ortho_takes_picards_iterates(seed):
    from picard import picard

    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 20))
    sources = np.concatenate([rng.laplace(size=(n - 1, 3000)), rng.uniform(-1, 1, size=(1, 3000))])
    x = np.linalg.svd(rng.standard_normal((n, n)) @ sources, full_matrices=False)[2] * np.sqrt(2999)
    for tol, max_iter in ((1e-3, 300), (1e-7, 40)):  # converged, and stopped by max_iter
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # picard warns when max_iter stops it
            _, want, _, want_iter = picard(x, whiten=False, ortho=True, extended=False, tol=tol, max_iter=max_iter,
                                           return_n_iter=True, random_state=np.random.RandomState(seed))
        got, n_iter, _ = _picard_ortho(x, max_iter=max_iter, tol=tol, random_state=seed)
        assert n_iter == want_iter
        assert np.allclose(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("min_hz", [1.0, 2.5, 0.0])
def test_segment_loudness_equals_welch_band_power(min_hz):
    rng = np.random.default_rng(5)
    segments = rng.standard_normal((3, 7, 400)) * np.array([1.0, 30.0, 0.01])[:, None, None] + 5
    segments[1, 2] += np.sin(np.arange(400) / 3.0) * 200  # one loud segment
    freqs, psd = _welch(segments, 200)
    want = psd[..., freqs >= min_hz].sum(axis=-1)
    got = _segment_loudness(segments, 200, min_hz)
    # _welch is float32 inside: agreement within its rounding
    assert np.allclose(got, want, rtol=1e-5, atol=0)
    assert np.array_equal(np.argsort(-got, axis=1)[:, :2], np.argsort(-want, axis=1)[:, :2])


def test_median_equals_numpy_bit_for_bit():
    rng = np.random.default_rng(6)
    for n in [1, 2, 3, 4999, 5000, 5001, 20_000, 77_777]:
        for x in (rng.standard_normal(n), np.round(rng.standard_normal(n) * 2), np.sort(rng.standard_normal(n)),
                  np.sin(np.arange(n) / 9.0), np.full(n, 3.5)):
            for dtype in (np.float32, np.float64):
                values = x.astype(dtype)
                assert _median(values) == np.median(values.astype(np.float64)), (n, dtype)


@pytest.mark.parametrize("with_ekg", [True, False])
def test_affine_cleaning_equals_the_stepwise_one(with_ekg):
    rng = np.random.default_rng(7)
    channels = np.array([0, 1, 2, 4, 5, 7, 8, 10, 11, 12, 13, 15, 16, 17, 18])  # some flat channels left out
    k = len(channels)
    mixing, unmixing = rng.standard_normal((k, 2)), rng.standard_normal((2, k))
    model = ArtifactModel(channels, 1.0, ekg_coef_uv=rng.standard_normal(19) * 0.1 if with_ekg else None,
                          removal=mixing @ unmixing, offset_uv=rng.standard_normal(k))
    eeg, ekg = rng.standard_normal((500, 19)) * 40, rng.standard_normal(500) * 300 + 20
    want = eeg.copy()  # EKG regression, then y - K (y - offset) on the fitted channels
    if with_ekg:
        want -= np.outer(ekg - np.median(ekg), model.ekg_coef_uv)
    part = want[:, channels]
    want[:, channels] = part - (part - model.offset_uv) @ model.removal.T
    assert np.allclose(model.apply(eeg, ekg), want, rtol=0, atol=1e-9)
    assert np.allclose(ArtifactModel(channels, 1.0).apply(eeg, ekg), eeg)


def test_column_medians_equal_numpy_bit_for_bit():
    from hms_core.signal.ica import _column_medians_of

    rng = np.random.default_rng(8)
    for n in [7, 4999, 20_001, 50_000]:
        x = np.column_stack([rng.standard_normal(n), np.round(rng.standard_normal(n) * 2), np.sort(rng.standard_normal(n)),
                             np.sin(np.arange(n) / 9.0), np.full(n, -1.25), rng.standard_normal(n) * 1e3 + 40])
        for dtype in (np.float32, np.float64):
            values = x.astype(dtype)
            cols = np.array([0, 2, 3, 4, 5, 1])
            want = np.median(values.astype(np.float64), axis=0)[cols]
            assert np.array_equal(_column_medians_of(values, cols), want), (n, dtype)
