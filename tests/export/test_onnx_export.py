"""ONNX export of the tiny run's models and ensemble: checker, parity, raw-window inference."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pandas as pd
import pytest
import torch

from hms_core.config import from_mapping
from hms_core.contract import N_RAW_CHANNELS, SPEC_COLUMNS, SPEC_WINDOW_ROWS, WINDOW_SAMPLES
from hms_core.errors import ConfigError, DataError
from hms_core.export.config import ExportConfig
from hms_core.export.onnx import build_ensemble_graph, export_model
from hms_core.export.parity import ParityError
from hms_core.export.runtime import ort_session, read_metadata
from hms_core.inference.predict import cleaning_config, read_test_window
from hms_core.preprocess import PreprocessConfig


@pytest.mark.parametrize("model", ["resnet1d_gru", "efficientnet"])
def test_model_export_passes_checker_and_parity(tiny_run, tmp_path, model):
    out = tmp_path / f"{model}.onnx"
    report = export_model(tiny_run["weights"][model], out, store_paths=tiny_run["source"],
                          cfg={"n_parity_windows": 6, "batch_size": 4}, parity_out=tmp_path / "p.json")
    assert report["passed"] and report["max_abs_diff"] <= 1e-4 and report["n_windows"] == 6
    assert report["n_folds"] == 2
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    meta = read_metadata(out)
    assert meta["kind"] == "model" and meta["input_fields"] == report["input_fields"]
    assert [i.name for i in proto.graph.input] == report["input_fields"]
    if model == "resnet1d_gru":  # the tiny run's montage is chains + average reference
        assert report["input_fields"] == ["chains", "referential"]
    assert (tmp_path / "p.json").exists()


def test_parity_violation_raises_and_writes_nothing(tiny_run, tmp_path):
    out = tmp_path / "strict.onnx"
    # float32 ONNX Runtime and torch differ by ~1e-8 here; an atol far below that must fail.
    with pytest.raises(ParityError, match=r"strict.onnx: ONNX Runtime differs from PyTorch by up to"):
        export_model(tiny_run["weights"]["resnet1d_gru"], out, store_paths=tiny_run["source"],
                     cfg={"n_parity_windows": 2, "parity_atol": 1e-15})
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_ensemble_onnx_runs_on_raw_windows_and_matches_torch(tiny_run):
    report = tiny_run["parity"]
    assert report["passed"] and report["max_abs_diff"] <= 1e-4
    assert set(report["max_abs_diff_by_output"]) == {"probs", "entropy", "member_spread"}
    path = tiny_run["ensemble_onnx"]
    onnx.checker.check_model(str(path), full_check=True)
    meta = read_metadata(path)
    assert meta["kind"] == "ensemble" and meta["preprocessing"]["ica"]["enabled"] is False
    # The conformal threshold survives ensemble stage -> ensemble.pth -> ONNX metadata exactly.
    fitted = tiny_run["ensemble_metrics"]["conformal"]
    assert meta["conformal"] == torch.load(tiny_run["ensemble"], weights_only=True)["conformal"]
    assert meta["conformal"]["threshold"] == fitted["threshold"] and meta["conformal"]["method"] == "lac"
    assert meta["conformal"]["n_calibration"] == fitted["n_calibration"] == tiny_run["ensemble_metrics"]["n_rows"]
    cleaning = cleaning_config(meta["preprocessing"])
    test = pd.read_csv(tiny_run["data_dir"] / "test.csv")
    windows = [read_test_window(tiny_run["data_dir"], int(r.eeg_id), int(r.spectrogram_id), cleaning)
               for r in test.itertuples()]
    raw = np.stack([w[0] for w in windows])
    spec = np.stack([w[1] for w in windows])
    n = len(test)
    assert n >= 2
    assert raw.shape == (n, N_RAW_CHANNELS, WINDOW_SAMPLES) and spec.shape == (n, SPEC_WINDOW_ROWS, len(SPEC_COLUMNS))
    session = ort_session(path, provider="cpu")
    graph = build_ensemble_graph(tiny_run["weights"], tiny_run["ensemble"], preprocessing=meta["preprocessing"])
    assert "referential" in graph.frontend_fields  # a member reads the referential channels
    for batch in (slice(0, 1), slice(0, n)):  # batch sizes other than the traced one (4)
        probs, entropy, spread = session.run(None, {"raw_uv": raw[batch], "spec_power": spec[batch]})
        with torch.no_grad():
            t_probs, t_entropy, t_spread = graph(torch.from_numpy(raw[batch]), torch.from_numpy(spec[batch]))
        assert probs.shape == (batch.stop, 6) and entropy.shape == spread.shape == (batch.stop,)
        assert np.allclose(probs.sum(1), 1, atol=1e-5) and (probs >= 0).all()
        assert ((entropy >= 0) & (entropy <= math.log(6) + 1e-5)).all() and (spread >= 0).all()
        assert np.abs(probs - t_probs.numpy()).max() <= 1e-4
        assert np.abs(entropy - t_entropy.numpy()).max() <= 1e-4
    # NaN stretches reach the graph only where cleaning left them: the frontend zeroes them.
    raw_nan = raw[:1].copy()
    raw_nan[0, :, 1000:1400] = np.nan
    assert np.isfinite(session.run(["probs"], {"raw_uv": raw_nan, "spec_power": spec[:1]})[0]).all()


def test_export_config_and_bad_files(tiny_run, tmp_path):
    assert from_mapping(ExportConfig, None, "export").parity_atol == 1e-4
    with pytest.raises(ConfigError, match="export.opset: 16 must be an integer >= 17"):
        from_mapping(ExportConfig, {"opset": 16}, "export")
    with pytest.raises(ConfigError, match="export: unknown key 'atol'"):
        from_mapping(ExportConfig, {"atol": 1e-3}, "export")
    with pytest.raises(DataError, match="nope_fold0.pth: weights file not found"):
        export_model([tmp_path / "nope_fold0.pth"], tmp_path / "x.onnx", store_paths=tiny_run["source"])
    # leave out the weights of one deployed member (which members the blend keeps depends on the data)
    kept = torch.load(tiny_run["ensemble"], map_location="cpu", weights_only=True)["members"]
    given = {m: w for m, w in tiny_run["weights"].items() if m != kept[0]}
    with pytest.raises(DataError, match=f"members \\['{kept[0]}'\\] have no weights files"):
        build_ensemble_graph(given, tiny_run["ensemble"])


def test_raw_windows_give_the_stored_fields_and_the_same_member_output(tiny_run):
    """Prediction sees what training saw: the ensemble graph's front end on raw training windows
    reproduces the stored chains and referential channels, and a member reading both (the tiny
    run's resnet, chains + average reference) predicts the same from either."""
    from hms_core.export.onnx import load_fold_models
    from hms_core.export.parity import parity_rows, train_windows
    from hms_core.signal.frontend import WindowFrontend

    import sys

    mod = sys.modules["hms_tiny_run"]  # tiny_run.py, loaded by the fixture
    source = tiny_run["source"]
    raw, _ = train_windows(tiny_run["data_dir"], source, n=3, preprocessing=mod.PREPROCESSING)
    stored = source.read(parity_rows(len(source.index), 3), ["chains", "referential"])
    frontend = WindowFrontend(from_mapping(PreprocessConfig, mod.PREPROCESSING, "preprocessing").frontend)
    with torch.no_grad():
        fields = frontend.fields(torch.from_numpy(raw), ("chains", "referential"))
        for name in ("chains", "referential"):
            want = stored[name]
            assert np.abs(fields[name].numpy() - want).max() <= 1e-3 * np.abs(want).max() + 1e-2  # float16
        member = load_fold_models(tiny_run["weights"]["resnet1d_gru"])
        assert member.input_fields == ("chains", "referential")
        from_raw = member(fields["chains"], fields["referential"]).numpy()
        from_store = member(*(torch.from_numpy(stored[f]) for f in member.input_fields)).numpy()
    assert np.abs(from_raw - from_store).max() < 1e-3
