"""``preprocessing.ica.fit_on``: the training stores are cleaned as ``hms predict`` cleans a test file."""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import onnx
import pyarrow.parquet as pq
import pytest
import torch
from onnx import TensorProto, helper

from hms_core.config import from_mapping
from hms_core.contract import TEST_EEG_DIR, TEST_SPEC_DIR
from hms_core.data.io import eeg_path, eeg_window_slice, read_eeg, read_train_csv, spectrogram_path
from hms_core.errors import ConfigError, DataError
from hms_core.export.runtime import METADATA_PREFIX
from hms_core.inference.predict import cleaning_config, cleaning_skew, predict, read_test_window
from hms_core.preprocess import PreprocessConfig, clean_windows, preprocess_batch
from hms_core.signal.frontend import WindowFrontend
from hms_core.store import WindowStore

torch.set_num_threads(1)
FIELDS = ("chains", "referential")


def _config(fit_on: str) -> PreprocessConfig:
    return from_mapping(PreprocessConfig, {"windows_per_shard": 4, "ica": {"fit_on": fit_on, "max_fit_samples": 6000}},
                        "preprocessing")


def test_fit_on_is_a_checked_option_with_the_old_default():
    assert from_mapping(PreprocessConfig, {}, "preprocessing").ica.fit_on == "recording"
    assert _config("window").ica.fit_on == "window"
    with pytest.raises(ConfigError, match=r"preprocessing.ica.fit_on: invalid value 'test'.*'recording', 'window'"):
        from_mapping(PreprocessConfig, {"ica": {"fit_on": "test"}}, "preprocessing")


@pytest.fixture(scope="module")
def long_window(tiny_dataset, tmp_path_factory):
    """The last labelled window of the longest tiny recording, also written as a 50 s test file."""
    train = read_train_csv(tiny_dataset / "train.csv")
    lengths = {e: len(read_eeg(eeg_path(tiny_dataset, e))) for e in train["eeg_id"].unique()}
    eeg_id = int(max(lengths, key=lengths.get))
    rows = train[train["eeg_id"] == eeg_id]
    row = rows.sort_values(["eeg_label_offset_seconds", "label_id"]).iloc[-1]
    window = eeg_window_slice(row["eeg_label_offset_seconds"])
    assert lengths[eeg_id] >= 2 * (window.stop - window.start)  # a recording well beyond the window
    test_dir = tmp_path_factory.mktemp("ica_test_folder")
    (test_dir / TEST_EEG_DIR).mkdir()
    (test_dir / TEST_SPEC_DIR).mkdir()
    table = pq.read_table(eeg_path(tiny_dataset, eeg_id))
    pq.write_table(table.slice(window.start, window.stop - window.start), test_dir / TEST_EEG_DIR / f"{eeg_id}.parquet")
    spectrogram_id = int(row["spectrogram_id"])
    shutil.copy(spectrogram_path(tiny_dataset, spectrogram_id), test_dir / TEST_SPEC_DIR / f"{spectrogram_id}.parquet")
    return {"train": train, "rows": rows, "label_id": int(row["label_id"]), "eeg_id": eeg_id,
            "spectrogram_id": spectrogram_id, "test_dir": test_dir, "window": window}


def _store_window(tiny_dataset, long_window, cfg, out) -> dict[str, np.ndarray]:
    preprocess_batch(tiny_dataset, long_window["rows"], [long_window["eeg_id"]], out, cfg)
    store = WindowStore([out])
    at = np.flatnonzero(store.index["label_id"].to_numpy() == long_window["label_id"])
    assert len(at) == 1
    statuses = store.index["ica_status"].tolist()
    assert statuses and all(s == "applied" for s in statuses), statuses  # ICA ran on every window
    return store.read(at, list(FIELDS))


def _predict_window(long_window, cfg) -> dict[str, np.ndarray]:
    raw, _ = read_test_window(long_window["test_dir"], long_window["eeg_id"], long_window["spectrogram_id"], cfg)
    with torch.no_grad():
        out = WindowFrontend(cfg.frontend).fields(torch.from_numpy(raw[None]), names=FIELDS)
    return {name: out[name].numpy() for name in FIELDS}


def _max_rel_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return max(float(np.abs(a[n] - b[n]).max() / np.abs(b[n]).max()) for n in FIELDS)


def test_window_fit_stores_what_predict_computes_and_recording_fit_does_not(tiny_dataset, long_window, tmp_path):
    predicted = _predict_window(long_window, _config("window"))
    stored = _store_window(tiny_dataset, long_window, _config("window"), tmp_path / "window.zarr")
    for name in FIELDS:  # float16 storage: ~1e-3 relative
        assert np.abs(stored[name] - predicted[name]).max() <= 1e-3 * np.abs(predicted[name]).max() + 1e-2, name
    # fitted on the whole recording, the same window is cleaned differently: the skew the option removes
    on_recording = _store_window(tiny_dataset, long_window, _config("recording"), tmp_path / "recording.zarr")
    assert _max_rel_diff(on_recording, predicted) > 20 * _max_rel_diff(stored, predicted)
    assert _max_rel_diff(on_recording, predicted) > 1e-2


def test_clean_windows_fits_each_window_by_itself(tiny_dataset, long_window):
    raw = read_eeg(eeg_path(tiny_dataset, long_window["eeg_id"]))
    cfg = _config("window")
    slices = [eeg_window_slice(o) for o in sorted(long_window["rows"]["eeg_label_offset_seconds"])]
    windows, infos = clean_windows(raw, slices, cfg)
    assert windows.shape == (len(slices), 20, 10000) and len(infos) == len(slices)
    # each window's cleaning depends on that window alone: corrupting the rest changes nothing
    spoiled = raw.copy()
    keep = slices[-1]
    spoiled[:keep.start] = 5000.0 * np.sin(np.arange(keep.start))[:, None]
    again, _ = clean_windows(spoiled, [keep], cfg)
    assert np.array_equal(again[0], windows[-1])
    whole, _ = clean_windows(spoiled, [keep], _config("recording"))
    assert not np.allclose(whole[0], windows[-1], atol=1e-2)
    with pytest.raises(DataError, match="all EEG values are NaN"):
        all_nan = raw.copy()
        all_nan[keep, :19] = np.nan
        clean_windows(all_nan, [keep], cfg, eeg_id=long_window["eeg_id"])


def _ensemble_stub(path, preprocessing: dict) -> None:
    """An ONNX file with the metadata ``hms predict`` reads first (no members: enough to test the log)."""
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "stub", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)
    for key, value in (("kind", "ensemble"), ("preprocessing", preprocessing)):
        model.metadata_props.add(key=METADATA_PREFIX + key, value=json.dumps(value))
    onnx.save(model, str(path))


@pytest.mark.parametrize("ica, skew", [({"enabled": True, "fit_on": "recording"}, True),
                                       ({"enabled": True, "fit_on": "window"}, False),
                                       ({"enabled": False, "fit_on": "recording"}, False),
                                       ({"enabled": True}, True)])  # metadata of models exported before fit_on
def test_predict_reads_fit_on_from_the_model_and_logs_the_skew(tmp_path, caplog, ica, skew):
    assert (cleaning_skew(cleaning_config({"ica": ica})) is not None) == skew
    model = tmp_path / "ensemble.onnx"
    _ensemble_stub(model, {"ica": ica})
    with caplog.at_level(logging.INFO, logger="hms_core.inference.predict"):
        with pytest.raises(DataError, match="test data folder not found"):  # the log comes first
            predict(tmp_path / "no_test_folder", tmp_path / "sub.csv", model_path=model, progress=False)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "train/test skew" in r.getMessage()]
    assert len(warned) == int(skew)
    if not skew:
        assert any("as the training windows were cleaned" in r.getMessage() for r in caplog.records)
