"""One synthetic recording (3 min Other, 2 min Seizure, 2 min Other) for the ``hms annotate``
tests, as EDF variants written with ``mne.export.export_raw``, and its annotation by the
tiny run's ``ensemble.onnx``."""
from __future__ import annotations

import mne
import numpy as np
import pytest

from hms_core.contract import CLASSES, RAW_CHANNELS
from hms_core.data.synthetic import synthesize_recording
from hms_core.inference.annotate import annotate

DURATION_S = 420
RENAMED = {"Fp1": "EEG Fp1-REF", "T3": "EEG T7-REF", "T4": "t8", "T5": "P7-LE", "T6": "EEG P8-AVG",
           "Cz": "CZ", "EKG": "ECG"}


def _export(path, data_uv: np.ndarray, names, sfreq: float = 200.0):
    types = ["ecg" if n in ("EKG", "ECG") else "eeg" for n in names]
    raw = mne.io.RawArray(data_uv * 1e-6, mne.create_info(list(names), sfreq, types), verbose=False)
    mne.export.export_raw(path, raw, overwrite=True, verbose=False)
    return path


@pytest.fixture(scope="session")
def recording_uv():
    """The synthetic recording, ``(20, DURATION_S * 200)`` float64 uV in ``RAW_CHANNELS`` order."""
    eye = np.eye(len(CLASSES))
    other, seizure = eye[CLASSES.index("Other")], eye[CLASSES.index("Seizure")]
    rec = synthesize_recording(DURATION_S * 200, np.stack([other, other, seizure, seizure, other, other]),
                               np.random.default_rng(0), anchor_times_s=[0, 179, 181, 299, 301, DURATION_S],
                               nan_stretches=False)
    return rec.raw_uv.T.astype(np.float64)


@pytest.fixture(scope="session")
def edf_files(recording_uv, tmp_path_factory):
    """Canonical, renamed, 256 Hz, no-C3 and no-EKG EDF copies of the recording."""
    folder = tmp_path_factory.mktemp("annotate_edf")
    data = recording_uv
    files = {"canonical": _export(folder / "rec.edf", data, RAW_CHANNELS)}
    files["renamed"] = _export(folder / "renamed.edf", data, [RENAMED.get(c, c) for c in RAW_CHANNELS])
    resampled = mne.filter.resample(data, up=256, down=200, method="polyphase", verbose=False)
    files["256hz"] = _export(folder / "rate256.edf", resampled, RAW_CHANNELS, sfreq=256.0)
    keep = [i for i, c in enumerate(RAW_CHANNELS) if c != "C3"]
    files["no_c3"] = _export(folder / "no_c3.edf", data[keep], [RAW_CHANNELS[i] for i in keep])
    files["no_ekg"] = _export(folder / "no_ekg.edf", data[:-1], RAW_CHANNELS[:-1])
    return files


@pytest.fixture(scope="session")
def canonical(tiny_run, edf_files, tmp_path_factory):
    """``annotate`` of the canonical EDF (default options) by the tiny run's ensemble."""
    out = tmp_path_factory.mktemp("annotate_out")
    return annotate(edf_files["canonical"], out, model_path=tiny_run["ensemble_onnx"], provider="cpu",
                    progress=False)
