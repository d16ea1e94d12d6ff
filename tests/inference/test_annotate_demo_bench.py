"""bench/annotate_demo.py on the tiny run: the labelled-window matching, the recording choice,
and the end-to-end run whose annotate and ``hms predict`` probabilities agree on the same window."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from bench_loader import load_bench

bench = load_bench("annotate_demo")


def test_grid_rows_match_the_labelled_window():
    rows, exact = bench.grid_rows(np.array([0.0, 18.0, 1.5, 500.0]), 2.0, n_rows=60)
    assert rows.tolist() == [10, 19, 11, 59] and exact.tolist() == [True, True, False, False]


def test_pick_recordings_covers_classes_first():
    train = pd.DataFrame({"eeg_id": [1, 1, 2, 2, 2, 3, 4]})
    latent = np.eye(6)[[0, 0, 0, 0, 0, 1, 2]]  # top classes: 1 -> {0}, 2 -> {0}, 3 -> {1}, 4 -> {2}
    assert bench.pick_recordings(train, latent, {1, 2, 3, 4}, 3) == [2, 3, 4]  # 2 has more windows than 1
    assert bench.pick_recordings(train, latent, {1, 2, 4}, 5) == [2, 4, 1]  # 3 is not NaN-free


def test_bench_runs_and_annotate_equals_predict_on_the_same_window(tiny_run, tmp_path, capsys):
    figure = tmp_path / "docs" / "timeline.png"
    result = bench.main([str(tmp_path), "--data", str(tiny_run["data_dir"]), "--model",
                         str(tiny_run["ensemble_onnx"]), "--recordings", "2", "--parity-recordings", "2",
                         "--out", str(tmp_path / "work"), "--figure", str(figure)])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    train = pd.read_csv(tiny_run["data_dir"] / "train.csv")
    chosen = [r["eeg_id"] for r in result["recordings"]]
    assert len(chosen) == 2 and result["n_labelled_windows"] == int(train["eeg_id"].isin(chosen).sum())
    assert 0 < result["kl_annotate_vs_latent"] < 10 and 0 <= result["top1_annotate"] <= 1
    # The tiny run cleans without ICA: annotate and hms predict see one window the same way.
    parity = result["parity"]
    assert parity["n_windows"] >= 1 and parity["same_cleaning"]["max_abs_diff"] < 1e-5
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and result["figure"]["eeg_id"] in chosen
    with pytest.raises(SystemExit):
        bench.main([])


def test_model_with_window_fit_changes_only_the_cleaning(tiny_run, tmp_path):
    import onnx

    from hms_core.export.runtime import read_metadata

    src = tiny_run["ensemble_onnx"]
    dst = bench.model_with_window_fit(src, tmp_path / "ensemble.onnx")
    before, after = read_metadata(src), read_metadata(dst)
    assert after["preprocessing"]["ica"]["fit_on"] == "window"
    after["preprocessing"]["ica"].pop("fit_on")
    before["preprocessing"]["ica"].pop("fit_on", None)
    assert after == before
    assert onnx.load(str(src)).graph == onnx.load(str(dst)).graph
