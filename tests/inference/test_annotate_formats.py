"""``hms annotate`` reads every format the README promises: the conftest's recording written as
BDF (with edfio: ``mne.export.export_raw`` writes EDF, BrainVision and EEGLAB but not BDF),
BrainVision (pybv), EEGLAB (eeglabio) and FIF (``Raw.save``) reads back as the same samples
and gets the same probabilities as its EDF copy."""
from __future__ import annotations

from contextlib import nullcontext

import edfio
import mne
import numpy as np
import pytest

from hms_core.contract import RAW_CHANNELS
from hms_core.data.recording import Recording
from hms_core.inference.annotate import annotate
from hms_core.inference.timeline import prob_columns

STEP_S = 30.0  # every third window of the canonical scan (step 10 s): fewer windows, same onsets


def _write_bdf(path, data_uv: np.ndarray) -> None:
    """24-bit BDF with edfio, the physical range of all channels (as MNE's EDF export)."""
    lo, hi = float(data_uv.min()), float(data_uv.max())
    edfio.Bdf([edfio.BdfSignal(data_uv[i], 200.0, label=name, physical_dimension="uV", physical_range=(lo, hi))
               for i, name in enumerate(RAW_CHANNELS)]).write(path)


def _write(fmt: str, folder, data_uv: np.ndarray):
    if fmt == "bdf":
        path = folder / "rec.bdf"
        _write_bdf(path, data_uv)
        return path
    info = mne.create_info(list(RAW_CHANNELS), 200.0, ["eeg"] * 19 + ["ecg"])
    raw = mne.io.RawArray(data_uv * 1e-6, info, verbose=False)
    if fmt == "fif":
        path = folder / "rec_raw.fif"
        raw.save(path, verbose=False)
        return path
    path = folder / {"brainvision": "rec.vhdr", "eeglab": "rec.set"}[fmt]
    with pytest.warns(RuntimeWarning, match="Converting to float32") if fmt == "brainvision" else nullcontext():
        mne.export.export_raw(path, raw, verbose=False)  # pybv stores float32
    return path


@pytest.mark.parametrize(("fmt", "reader"), [("bdf", "RawBDF"), ("brainvision", "RawBrainVision"),
                                             ("eeglab", "RawEEGLAB"), ("fif", "Raw")])
def test_formats_give_the_edf_probabilities(fmt, reader, tiny_run, recording_uv, edf_files, canonical, tmp_path):
    path = _write(fmt, tmp_path, recording_uv)
    rec = Recording(path)
    assert type(rec.raw).__name__ == reader and rec.n_samples == recording_uv.shape[1]
    # The samples in uV (not V, not scaled twice): float32 storage or 24 bits lose < 1e-3 uV.
    assert np.abs(rec.read(0, rec.n_samples) - recording_uv.T).max() < 1e-3
    # EDF keeps 16 bits of the physical range: its samples are within half a step of the same.
    edf = Recording(edf_files["canonical"]).read(0, rec.n_samples)
    half_step = (recording_uv.max() - recording_uv.min()) / 65535 / 2
    assert np.abs(edf - recording_uv.T).max() <= half_step * 1.01
    got = annotate(path, tmp_path / "out", model_path=tiny_run["ensemble_onnx"], step_s=STEP_S,
                   provider="cpu", progress=False)["table"]
    ref = canonical["table"]
    ref = ref[np.isin(ref["onset_s"], got["onset_s"])]
    assert got["onset_s"].tolist() == ref["onset_s"].tolist() and len(got) == 14
    assert np.abs(got[prob_columns()].to_numpy() - ref[prob_columns()].to_numpy()).max() < 1e-4
