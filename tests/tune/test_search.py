"""tune_model: a resumable Optuna study on inner patient folds of the outer training folds."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from hms_core.tune.search import INNER_FOLDS_NAME, tune_model
from tune_fixtures import CFG, RecordingSource, tiny_source

optuna = pytest.importorskip("optuna")
torch.set_num_threads(1)


def _cfg(n_trials: int) -> dict:
    return {**CFG, "tuning": {**CFG["tuning"], "n_trials": n_trials}}


def _tune(tmp_path, source, folds_csv, n_trials, fold=0):
    return tune_model(source, folds_csv, "resnet1d_gru", _cfg(n_trials), fold=fold,
                      out_params=tmp_path / "tuning" / f"resnet1d_gru_fold{fold}_params.json",
                      study_db=tmp_path / "tuning" / f"resnet1d_gru_fold{fold}.db",
                      work_dir=tmp_path / "work")


def _study(tmp_path, out):
    return optuna.load_study(study_name=out["study_name"],
                             storage=f"sqlite:///{tmp_path / 'tuning' / 'resnet1d_gru_fold0.db'}")


def test_search_resumes_without_repeating_trials(tmp_path):
    source, folds = tiny_source()
    folds.to_csv(tmp_path / "folds.csv", index=False)
    first = _tune(tmp_path, source, tmp_path / "folds.csv", n_trials=2)
    params_file = tmp_path / "tuning" / "resnet1d_gru_fold0_params.json"
    assert json.loads(params_file.read_text()) == json.loads(json.dumps(first))
    assert first["n_trials"] == first["n_complete"] == 2
    assert set(first["params"]) == {"training.lr", "dropout"}
    assert 1e-4 <= first["params"]["training.lr"] <= 1e-2
    assert first["best_value"] == pytest.approx(np.mean(first["best_inner_kl"]))
    assert len(first["best_inner_kl"]) == 2 and np.isfinite(first["best_value"])
    trial0 = _study(tmp_path, first).trials[0]
    assert trial0.user_attrs["configured"] and trial0.params["training.lr"] == 1e-3  # the recipe

    # A job killed mid-trial leaves that trial RUNNING in the study (SIGKILL, node lost).
    study = _study(tmp_path, first)
    killed = study.ask()
    killed_params = {"training.lr": killed.suggest_float("training.lr", 1e-4, 1e-2, log=True),
                     "dropout": killed.suggest_float("dropout", 0.0, 0.5)}
    params_file.unlink()

    again = _tune(tmp_path, source, tmp_path / "folds.csv", n_trials=3)
    trials = _study(tmp_path, again).get_trials()
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3 and again["n_trials"] == 3  # 3 finished trials, not 2 + 3
    assert [t.state for t in trials if t.number == killed.number] == [optuna.trial.TrialState.FAIL]
    rerun = [t for t in done if t.user_attrs.get("requeued_from") == killed.number]
    assert len(rerun) == 1 and rerun[0].params == killed_params  # the killed trial, re-run
    assert params_file.exists() and again["study_name"] == first["study_name"]
    assert again["best_value"] <= first["best_value"]
    # Everything done already: a third run trains nothing and rewrites the same best.
    third = _tune(tmp_path, source, tmp_path / "folds.csv", n_trials=3)
    assert len(_study(tmp_path, third).get_trials()) == len(trials)
    assert third["params"] == again["params"]
    assert not [p for p in (tmp_path / "work").iterdir() if p.name.startswith("trial_")]


def test_objective_never_reads_the_outer_validation_fold(tmp_path):
    source, folds = tiny_source(seed=1)
    folds.to_csv(tmp_path / "folds.csv", index=False)
    recording = RecordingSource(source)
    out = _tune(tmp_path, recording, tmp_path / "folds.csv", n_trials=1, fold=1)
    outer_val = set(folds.loc[folds["fold"] == 1, "label_id"])
    training = set(folds.loc[folds["fold"] != 1, "label_id"])
    assert recording.read_labels and not recording.read_labels & outer_val
    assert recording.read_labels == training  # every training window trained on or scored
    assert out["n_training_windows"] == len(training)
    inner = pd.read_csv(tmp_path / "work" / INNER_FOLDS_NAME)
    assert set(inner["label_id"]) == training
    assert (inner.groupby("patient_id")["fold"].nunique() == 1).all()  # patient-grouped
    assert sorted(inner["fold"].unique()) == [0, 1]


def test_too_few_training_patients_for_the_inner_folds(tmp_path):
    source, folds = tiny_source()
    folds.to_csv(tmp_path / "folds.csv", index=False)
    cfg = {**CFG, "tuning": {**CFG["tuning"], "inner_folds": 7}}  # 6 training patients
    from hms_core.errors import ConfigError

    with pytest.raises(ConfigError, match="tuning.inner_folds: 7 inner folds need at least 7"):
        tune_model(source, tmp_path / "folds.csv", "resnet1d_gru", cfg, fold=0,
                   out_params=tmp_path / "p.json", study_db=tmp_path / "s.db",
                   work_dir=tmp_path / "work")
