"""ICLabel (mne-icalabel) as the ICA component labeler: features, network, thresholds.

ICLabel (Pion-Tonachini et al. 2019) gives each independent component the probabilities of
seven classes (brain, muscle, eye, heart, line noise, channel noise, other). It was trained
on extended-infomax decompositions of average-referenced EEG filtered 1-100 Hz, so the
labelling copy is made to match: the 1 Hz high-passed EEG (at our 200 Hz, 100 Hz is the
Nyquist frequency, so no low-pass is needed), average-referenced, decomposed by picard with
``extended=True, ortho=False`` (extended infomax's model, solved faster). The network runs
through onnxruntime on the CPU (deterministic; its weights come inside mne-icalabel).

An average-referenced decomposition cannot see the channels' common mode: removing its
components cleans what the average-reference and bipolar montages show, while a rejected
artifact's mean over the channels stays in the referential signal. (Estimating that share by
regressing the channel mean on the rejected time courses fails on the synthetic recordings:
the brain's common mode, about 20x the blink's there, leaks into the estimate.)
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping

import numpy as np

from hms_core.contract import SAMPLING_RATE_HZ
from hms_core.data.recording import standard_montage_name
from hms_core.errors import ConfigError

ICLABEL_CLASSES = ("brain", "muscle", "eye", "heart", "line_noise", "channel_noise", "other")
REJECTABLE_CLASSES = ICLABEL_CLASSES[1:]
PICARD_FIT_PARAMS = {"extended": True, "ortho": False}  # extended infomax's model (mne-icalabel docs)


def default_reject() -> dict[str, float]:
    """Reject a component when ICLabel gives one of these classes at least this probability."""
    return {"eye": 0.8, "muscle": 0.8, "heart": 0.8, "line_noise": 0.8, "channel_noise": 0.8}


def check_reject(reject: Mapping[str, float], path: str) -> None:
    """Raise ConfigError naming ``path.<class>`` for an unknown class or a threshold outside (0, 1]."""
    for name, threshold in reject.items():
        if name not in REJECTABLE_CLASSES:
            raise ConfigError(f"{path}.{name}: not an ICLabel artifact class; choose from "
                              f"{', '.join(REJECTABLE_CLASSES)}")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise ConfigError(f"{path}.{name}: {threshold!r} must be a probability in (0, 1]")


def average_referenced(x_uv: np.ndarray) -> np.ndarray:
    """``x_uv (n, k)`` minus its mean over the k channels at each sample."""
    return x_uv - x_uv.mean(axis=1, keepdims=True)


def labelling_raw(x_uv: np.ndarray, names: list[str], highpass_hz: float):
    """The MNE Raw ICLabel reads: ``x_uv (n, k)`` (average-referenced, high-passed at
    ``highpass_hz``) in volts, with standard 10-20 positions and the filter and reference
    recorded in its info, as mne-icalabel checks them."""
    import mne

    info = mne.create_info(names, SAMPLING_RATE_HZ, "eeg", verbose=False)
    raw = mne.io.RawArray(x_uv.T * 1e-6, info, verbose=False)
    raw.set_montage(standard_montage_name(), verbose=False)
    with raw.info._unlock():
        raw.info["highpass"] = float(highpass_hz)
        raw.info["custom_ref_applied"] = mne.io.constants.FIFF.FIFFV_MNE_CUSTOM_REF_ON
    return raw


def label_components(ica, raw) -> np.ndarray:
    """ICLabel's ``(n_components, 7)`` probabilities (columns in ``ICLABEL_CLASSES`` order).

    ``raw`` is :func:`labelling_raw` of the data ``ica`` was fitted on. mne-icalabel warns when
    the data or the decomposition are not what ICLabel expects; those warnings are errors
    here (RuntimeError), as the copy is built to meet them.
    """
    from mne_icalabel.iclabel import get_iclabel_features
    from mne_icalabel.iclabel.network import run_iclabel

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        features = get_iclabel_features(raw, ica)
    unmet = [str(w.message) for w in caught if "ICLabel" in str(w.message)]
    if unmet:
        raise RuntimeError(f"ICLabel input not as it was trained: {unmet[0]}")
    return np.asarray(run_iclabel(*features, backend="onnx"), dtype=np.float64)


def reject_by_label(proba: np.ndarray, reject: Mapping[str, float], max_removed: int) -> list[dict[str, Any]]:
    """Components whose probability of a class in ``reject`` reaches its threshold.

    Returns ``[{component, labeler, class, probability, reasons, strength, probabilities}]``
    sorted by component, at most ``max_removed`` (the largest probability / threshold first);
    ``class`` is the matching class with the largest probability / threshold.
    """
    removed = []
    for i, row in enumerate(proba):
        margins = {name: row[ICLABEL_CLASSES.index(name)] / threshold for name, threshold in reject.items()
                   if row[ICLABEL_CLASSES.index(name)] >= threshold}
        if margins:
            name = max(margins, key=margins.get)
            removed.append({"component": i, "labeler": "iclabel", "class": name,
                            "probability": round(float(row[ICLABEL_CLASSES.index(name)]), 4),
                            "reasons": [name], "strength": float(margins[name]),
                            "probabilities": {c: round(float(p), 4) for c, p in zip(ICLABEL_CLASSES, row)}})
    removed.sort(key=lambda r: -r["strength"])
    return sorted(removed[:max_removed], key=lambda r: r["component"])
