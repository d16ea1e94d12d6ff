"""``hms predict`` on the synthetic test folder of the tiny run, and its errors on bad input."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hms_core import cli
from hms_core.contract import CLASSES, SUBMISSION_COLUMNS, TEST_EEG_DIR, TEST_SPEC_DIR
from hms_core.ensemble.conformal import SET_COLUMNS, prediction_sets
from hms_core.errors import DataError
from hms_core.export.runtime import read_metadata
from hms_core.inference.predict import UNCERTAINTY_COLUMNS, predict


def test_predict_writes_a_valid_kaggle_submission(tiny_run, tmp_path):
    data_dir, model = tiny_run["data_dir"], tiny_run["ensemble_onnx"]
    out = tmp_path / "sub" / "submission.csv"
    returned = predict(data_dir, out, model_path=model, batch_size=2, provider="cpu", progress=False)
    sub = pd.read_csv(out)
    test = pd.read_csv(data_dir / "test.csv")
    assert tuple(sub.columns) == SUBMISSION_COLUMNS
    assert sub["eeg_id"].tolist() == test["eeg_id"].tolist()  # one row per eeg_id, test.csv order
    probs = sub[list(SUBMISSION_COLUMNS[1:])].to_numpy()
    assert np.isfinite(probs).all() and (probs >= 0).all() and np.allclose(probs.sum(1), 1, atol=1e-9)
    assert np.allclose(returned[list(SUBMISSION_COLUMNS[1:])].to_numpy(), probs)
    assert [p.name for p in out.parent.iterdir()] == ["submission.csv"]  # no temp files left

    # The CLI verb, with uncertainty columns; same probabilities.
    out_u = tmp_path / "with_uncertainty.csv"
    assert cli.main(["predict", "--data", str(data_dir), "--out", str(out_u), "--model", str(model),
                     "--uncertainty"]) == 0
    sub_u = pd.read_csv(out_u)
    assert tuple(sub_u.columns) == (*SUBMISSION_COLUMNS, *UNCERTAINTY_COLUMNS, *SET_COLUMNS)
    assert np.allclose(sub_u[list(SUBMISSION_COLUMNS[1:])].to_numpy(), probs, atol=1e-6)
    assert (sub_u["entropy"].between(0, np.log(6) + 1e-6)).all() and (sub_u["member_spread"] >= 0).all()
    # The conformal set: the classes at or above the model's cutoff (never empty), names in CLASSES order.
    threshold = read_metadata(model)["conformal"]["threshold"]
    sets = prediction_sets(sub_u[list(SUBMISSION_COLUMNS[1:])].to_numpy(), threshold)
    expected = ["|".join(c for c, keep in zip(CLASSES, row) if keep) for row in sets]
    assert sub_u["prediction_set"].tolist() == expected
    assert sub_u["set_size"].tolist() == sets.sum(1).tolist() == [len(s.split("|")) for s in expected]
    top = [CLASSES[j] for j in probs.argmax(1)]
    assert all(t in s.split("|") for t, s in zip(top, sub_u["prediction_set"]))


def _copy_test_folder(tiny_run, dest: Path) -> Path:
    src = tiny_run["data_dir"]
    dest.mkdir()
    shutil.copy(src / "test.csv", dest / "test.csv")
    shutil.copytree(src / TEST_EEG_DIR, dest / TEST_EEG_DIR)
    shutil.copytree(src / TEST_SPEC_DIR, dest / TEST_SPEC_DIR)
    return dest


def test_bad_inputs_give_clear_errors(tiny_run, tmp_path, capsys):
    model = tiny_run["ensemble_onnx"]
    run = lambda d, **kw: predict(d, tmp_path / "out.csv", model_path=kw.get("model", model), progress=False,
                                  on_bad_file="error")

    with pytest.raises(DataError, match=r"missing_dir: test data folder not found"):
        run(tmp_path / "missing_dir")
    data = _copy_test_folder(tiny_run, tmp_path / "data")
    test = pd.read_csv(data / "test.csv")
    first_eeg, first_spec = int(test["eeg_id"][0]), int(test["spectrogram_id"][0])

    # A missing EEG file is named, with its eeg_id.
    eeg_file = data / TEST_EEG_DIR / f"{first_eeg}.parquet"
    eeg = pd.read_parquet(eeg_file)
    eeg_file.unlink()
    with pytest.raises(DataError, match=rf"{first_eeg}.parquet \(eeg_id {first_eeg}\): file not found"):
        run(data)
    # A short EEG file.
    eeg.iloc[:5000].to_parquet(eeg_file)
    with pytest.raises(DataError, match=rf"{first_eeg}.parquet .*has 5000 rows; a test EEG needs 10000"):
        run(data)
    eeg.to_parquet(eeg_file)
    # A spectrogram with too few rows.
    spec_file = data / TEST_SPEC_DIR / f"{first_spec}.parquet"
    pd.read_parquet(spec_file).iloc[:100].to_parquet(spec_file)
    with pytest.raises(DataError, match=rf"{first_spec}.parquet .*has 100 rows; a test spectrogram needs 300"):
        run(data)
    # A malformed test.csv.
    test.drop(columns=["patient_id"]).to_csv(data / "test.csv", index=False)
    with pytest.raises(DataError, match=r"test.csv: columns differ from the contract: missing \['patient_id'\]"):
        run(data)
    # A missing sub-folder.
    test.to_csv(data / "test.csv", index=False)
    shutil.rmtree(data / TEST_SPEC_DIR)
    with pytest.raises(DataError, match=r"test_spectrograms: folder not found"):
        run(data)
    # Not an ONNX file; an ONNX file that is not the ensemble.
    (tmp_path / "fake.onnx").write_text("not a model")
    with pytest.raises(DataError, match=r"fake.onnx: not a readable ONNX model"):
        run(tiny_run["data_dir"], model=tmp_path / "fake.onnx")
    with pytest.raises(DataError, match=r"nothing.onnx: ONNX model not found"):
        run(tiny_run["data_dir"], model=tmp_path / "nothing.onnx")
    # The CLI prints the error (naming the file) and exits with 2.
    assert cli.main(["predict", "--data", str(data), "--out", str(tmp_path / "o.csv"), "--model", str(model)]) == 2
    assert "test_spectrograms: folder not found" in capsys.readouterr().err
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "o.csv").exists()


def test_a_bad_test_file_is_reported_and_the_other_rows_are_predicted(tiny_run, tmp_path, capsys):
    data = _copy_test_folder(tiny_run, tmp_path / "data")
    test = pd.read_csv(data / "test.csv")
    bad_eeg, good_eeg = int(test["eeg_id"][0]), int(test["eeg_id"][1])
    pd.read_parquet(data / TEST_EEG_DIR / f"{bad_eeg}.parquet").iloc[:5000].to_parquet(
        data / TEST_EEG_DIR / f"{bad_eeg}.parquet")
    out = tmp_path / "submission.csv"
    assert cli.main(["predict", "--data", str(data), "--out", str(out),
                     "--model", str(tiny_run["ensemble_onnx"])]) == 1
    err = capsys.readouterr().err
    assert f"{bad_eeg}.parquet (eeg_id {bad_eeg}): has 5000 rows" in err and "1 of 2 test rows" in err
    assert pd.read_csv(out)["eeg_id"].tolist() == [good_eeg]
    # on_bad_file="error" keeps the fail-fast behaviour
    with pytest.raises(DataError, match=rf"eeg_id {bad_eeg}\): has 5000 rows"):
        predict(data, tmp_path / "strict.csv", model_path=tiny_run["ensemble_onnx"], progress=False,
                on_bad_file="error")


def test_a_non_finite_prediction_names_the_eeg_id(tiny_run, tmp_path):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(tiny_run["ensemble_onnx"]))  # weights damaged on disk: NaN everywhere
    for init in model.graph.initializer:
        values = numpy_helper.to_array(init)
        if values.dtype.kind == "f":
            init.CopyFrom(numpy_helper.from_array(np.full_like(values, np.nan), init.name))
    damaged = tmp_path / "ensemble_nan.onnx"
    onnx.save(model, str(damaged))
    first = int(pd.read_csv(tiny_run["data_dir"] / "test.csv")["eeg_id"][0])
    with pytest.raises(DataError, match=rf"{first}.parquet \(eeg_id {first}\): the model returned non-finite "
                                        r"probabilities for this window \(ensemble_nan.onnx\)"):
        predict(tiny_run["data_dir"], tmp_path / "out.csv", model_path=damaged, progress=False,
                on_bad_file="error")
    skipped = predict(tiny_run["data_dir"], tmp_path / "out.csv", model_path=damaged, progress=False)
    assert len(skipped) == 0 and len(skipped.attrs["bad_files"]) == 2


def test_the_model_checksum_recorded_in_training_results_is_checked(tiny_run, tmp_path):
    run = tmp_path / "run"
    model = run / "models" / "onnx" / "ensemble.onnx"
    model.parent.mkdir(parents=True)
    shutil.copy(tiny_run["ensemble_onnx"], model)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    results = run / "training_results.json"
    results.write_text(json.dumps({"artifacts": {"models/onnx/ensemble.onnx": {"sha256": digest}}}))
    assert len(predict(tiny_run["data_dir"], tmp_path / "ok.csv", model_path=model, progress=False)) == 2
    results.write_text(json.dumps({"artifacts": {"models/onnx/ensemble.onnx": {"sha256": "0" * 64}}}))
    with pytest.raises(DataError, match=r"ensemble.onnx: SHA-256 [0-9a-f]{12}\.\.\. differs from the "
                                        r"000000000000\.\.\. recorded in .*training_results.json"):
        predict(tiny_run["data_dir"], tmp_path / "bad.csv", model_path=model, progress=False)
    assert not (tmp_path / "bad.csv").exists()


def test_a_model_without_a_conformal_threshold_gives_no_set_columns(tiny_run, tmp_path, caplog):
    import onnx

    proto = onnx.load(str(tiny_run["ensemble_onnx"]))
    kept = [p for p in proto.metadata_props if p.key != "hms.conformal"]
    assert len(kept) == len(proto.metadata_props) - 1
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    old = tmp_path / "old_ensemble.onnx"
    onnx.save(proto, str(old))
    sub = predict(tiny_run["data_dir"], tmp_path / "out.csv", model_path=old, uncertainty=True,
                  provider="cpu", progress=False)
    assert tuple(sub.columns) == (*SUBMISSION_COLUMNS, *UNCERTAINTY_COLUMNS)
    assert "old_ensemble.onnx carries no conformal threshold" in caplog.text
