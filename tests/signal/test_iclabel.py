"""ICLabel as the ICA labeler: what it is handed, what it rejects, and that it repeats itself."""
import numpy as np
import pytest
from scipy import signal as sp_signal

from hms_core.config import from_mapping
from hms_core.errors import ConfigError
from hms_core.signal import iclabel
from hms_core.signal.ica import IcaConfig, fit_artifact_model

CLASS_PROBS = np.array([0.3, 0.1, 0.1, 0.2, 0.1, 0.2])


@pytest.fixture(scope="module")
def two_fits():
    """The same 60 s synthetic recording fitted twice with labeler iclabel; ICLabel's inputs kept."""
    from hms_core.data.synthetic import synthesize_recording

    rec = synthesize_recording(60 * 200, CLASS_PROBS, np.random.default_rng(0),
                               artifacts=("blink", "ekg", "muscle"), nan_stretches=False, dc_offset=False)
    eeg = rec.raw_uv[:, :19].astype(np.float64)
    eeg -= np.median(eeg, axis=0)
    handed = []
    original = iclabel.label_components

    def keep_inputs(ica, raw):
        proba = original(ica, raw)
        handed.append((ica, raw, proba))
        return proba

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(iclabel, "label_components", keep_inputs)
        fits = [fit_artifact_model(eeg, ekg_uv=rec.raw_uv[:, 19].astype(np.float64), valid=np.ones(len(eeg), bool),
                                   cfg=IcaConfig(labeler="iclabel")) for _ in range(2)]
    return fits, handed, eeg


@pytest.mark.slow  # the module's two ICA fits + ICLabel: about 13 s of CPU
def test_iclabel_is_handed_what_it_was_trained_on(two_fits):
    (_, info), _ = two_fits[0]
    ica, raw, proba = two_fits[1][0]
    x = raw.get_data()  # (19, n) V
    assert np.abs(x.sum(axis=0)).max() < 1e-9 * np.abs(x).max()  # average reference
    assert raw.info["custom_ref_applied"] and raw.info["highpass"] == 1.0 and raw.info["lowpass"] == 100.0
    assert raw.info["sfreq"] == 200  # so 1-100 Hz is a 1 Hz high-pass: 100 Hz is Nyquist
    freqs, psd = sp_signal.welch(x * 1e6, fs=200, nperseg=2000)
    _, psd_in = sp_signal.welch(iclabel.average_referenced(two_fits[2]).T, fs=200, nperseg=2000)
    slow, passed = freqs <= 0.3, (freqs >= 2) & (freqs <= 20)
    assert psd[:, slow].mean() < 0.1 * psd_in[:, slow].mean()  # high-passed at 1 Hz ...
    assert psd[:, passed].mean() == pytest.approx(psd_in[:, passed].mean(), rel=0.05)  # ... and only that
    assert np.isfinite(np.array([ch["loc"][:3] for ch in raw.info["chs"]])).all()  # 10-20 positions
    assert not np.allclose(np.array([ch["loc"][:3] for ch in raw.info["chs"]]), 0)
    # extended-infomax-equivalent picard, on the rank-18 average-referenced copy
    assert ica.method == "picard" and ica.fit_params["extended"] is True and ica.fit_params["ortho"] is False
    assert ica.n_components_ == 18 == info["n_components"]
    assert proba.shape == (18, 7) and np.allclose(proba.sum(axis=1), 1, atol=1e-4)
    assert info["labeler"] == "iclabel" and info["status"] == "applied"
    for r in info["removed"]:
        assert r["labeler"] == "iclabel" and r["reasons"] == [r["class"]]
        assert r["probability"] >= IcaConfig().reject[r["class"]]
        assert r["probability"] == pytest.approx(proba[r["component"], iclabel.ICLABEL_CLASSES.index(r["class"])],
                                                 abs=1e-4)


@pytest.mark.slow  # the module's two ICA fits + ICLabel: about 13 s of CPU
def test_iclabel_labels_repeat_exactly(two_fits):
    (model_a, info_a), (model_b, info_b) = two_fits[0]
    assert info_a == info_b and info_a["removed"]  # the blink component, in this recording
    assert np.array_equal(two_fits[1][0][2], two_fits[1][1][2])
    assert np.array_equal(model_a.removal, model_b.removal)


@pytest.mark.slow  # the module's two ICA fits + ICLabel: about 13 s of CPU
def test_iclabel_refuses_a_copy_that_is_not_average_referenced(two_fits):
    ica, raw, _ = two_fits[1][0]
    plain = raw.copy()
    with plain.info._unlock():
        plain.info["custom_ref_applied"] = 0
    with pytest.raises(RuntimeError, match="ICLabel input not as it was trained"):
        iclabel.label_components(ica, plain)


def test_reject_by_label_thresholds_class_and_limit():
    proba = np.array([
        [0.9, 0.05, 0.05, 0, 0, 0, 0],      # brain: kept
        [0.1, 0.0, 0.85, 0, 0, 0, 0.05],    # eye 0.85
        [0.1, 0.6, 0.0, 0, 0, 0, 0.3],      # muscle 0.6 < 0.8
        [0.0, 0.81, 0.0, 0.19, 0, 0, 0],    # muscle 0.81
        [0.0, 0.0, 0.0, 0.0, 0, 0, 1.0],    # other: not in reject
    ])
    removed = iclabel.reject_by_label(proba, iclabel.default_reject(), max_removed=6)
    assert [(r["component"], r["class"], r["probability"]) for r in removed] == [(1, "eye", 0.85), (3, "muscle", 0.81)]
    # the strongest (probability / threshold) are kept when more match than max_removed: 0.81 / 0.5 > 0.85 / 0.8
    assert [r["component"] for r in iclabel.reject_by_label(proba, {"eye": 0.8, "muscle": 0.5}, 1)] == [3]
    assert [r["component"] for r in iclabel.reject_by_label(proba, {"other": 0.9}, 6)] == [4]
    # a component matching two classes is labelled by the larger margin over its threshold
    both = np.array([[0, 0.5, 0.45, 0, 0, 0, 0.05]])
    assert iclabel.reject_by_label(both, {"muscle": 0.5, "eye": 0.3}, 6)[0]["class"] == "eye"


@pytest.mark.parametrize(("ica", "match"), [
    ({"labeler": "iclabel", "method": "fastica"}, r"preprocessing.ica.method: 'fastica' cannot give ICLabel"),
    ({"reject": {"brain": 0.5}}, r"preprocessing.ica.reject.brain: not an ICLabel artifact class"),
    ({"reject": {"eye": 1.5}}, r"preprocessing.ica.reject.eye: 1.5 must be a probability"),
    ({"labeler": "ica_label"}, r"preprocessing.ica.labeler"),
])
def test_bad_labeler_settings_name_the_key(ica, match):
    with pytest.raises(ConfigError, match=match):
        from_mapping(IcaConfig, ica, "preprocessing.ica")
