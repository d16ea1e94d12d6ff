"""training_results.json from the tiny run's real outputs, and the end-of-run summary."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hms_core import metrics
from hms_core.contract import VOTE_COLUMNS
from hms_core.errors import DataError
from hms_core.export.onnx import export_model
from hms_core.results import (NO_ANSWER_KEY, collect_results, format_summary, gap_closed, gap_entry,
                                oof_prior_probs)


def test_collect_results_writes_measured_figures_and_hashes(tiny_run, tmp_path):
    gru_parity = tmp_path / "resnet1d_gru.json"
    gru_onnx = tmp_path / "resnet1d_gru.onnx"
    export_model(tiny_run["weights"]["resnet1d_gru"], gru_onnx, store_paths=tiny_run["source"],
                 cfg={"n_parity_windows": 2}, parity_out=gru_parity)
    transfer = tmp_path / "transfer.json"
    transfer.write_text(json.dumps({"label_fractions": [0.1, 1.0], "kl": {"scratch": [1.2, 1.0]}}))
    oofs = [p for paths in tiny_run["oofs"].values() for p in paths]
    weights = [p for paths in tiny_run["weights"].values() for p in paths]
    out = tmp_path / "training_results.json"
    results = collect_results(out, oofs=oofs, weights=weights, ensemble_metrics=tiny_run["ensemble_metrics_path"],
                              parity=[gru_parity, tiny_run["parity_path"]],
                              artifacts=[gru_onnx, tiny_run["ensemble_onnx"], tiny_run["ensemble"]],
                              transfer=transfer)
    on_disk = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert on_disk == json.loads(json.dumps(results))

    # Per-model OOF scores are recomputed from the parquets.
    gru = on_disk["models"]["resnet1d_gru"]
    oof = pd.concat([pd.read_parquet(p) for p in tiny_run["oofs"]["resnet1d_gru"]])
    probs = np.exp(oof[[f"logp_{c.split('_')[0]}" for c in VOTE_COLUMNS]].to_numpy())
    expected = metrics.score_predictions(oof[list(VOTE_COLUMNS)].to_numpy(), probs)
    assert gru["oof"]["kl_all"] == pytest.approx(expected["kl_all"])
    assert gru["n_folds"] == 2 and gru["training"]["train_time_s"] > 0
    assert gru["onnx_parity"]["max_abs_diff"] <= 1e-4 and "onnx_parity" not in on_disk["models"]["efficientnet"]
    ens = on_disk["ensemble"]
    assert ens["onnx_parity"]["passed"] and ens["ensemble"]["stacked"]["n_rows"] == len(tiny_run["source"])
    assert {"before", "after", "temperature"} <= set(ens["calibration"])
    conformal = ens["conformal"]  # the ensemble stage's record, carried over
    assert conformal["threshold"] == tiny_run["ensemble_metrics"]["conformal"]["threshold"]
    assert conformal["cross_fitted"]["all"]["n"] == len(tiny_run["source"])
    assert on_disk["foundation_transfer"] == json.loads(transfer.read_text())
    for path in (gru_onnx, tiny_run["ensemble_onnx"], tiny_run["ensemble"], *weights, *oofs):
        assert on_disk["artifacts"][str(path)]["sha256"] == hashlib.sha256(Path(path).read_bytes()).hexdigest()

    summary = format_summary(on_disk)
    best = min([m["oof"]["kl_all"] for m in on_disk["models"].values()] + [ens["ensemble"]["stacked"]["kl_all"]])
    assert f"best out-of-fold KL: {best:.4f}" in summary
    assert "resnet1d_gru: 2 folds" in summary and "efficientnet: 2 folds" in summary
    assert "ensemble.onnx" in summary and "foundation transfer study" in summary
    cov = conformal["cross_fitted"]["all"]
    assert (f"conformal sets (LAC, target coverage 0.90: a class is in when p >= "
            f"{conformal['probability_cutoff']:.3f}), cross-fitted:") in summary
    assert f"all rows: coverage {cov['coverage']:.3f}, mean size {cov['mean_set_size']:.2f} (n={cov['n']})" in summary


def test_collect_results_names_a_missing_input(tiny_run, tmp_path):
    with pytest.raises(DataError, match=r"absent.json: results input not found"):
        collect_results(tmp_path / "r.json", oofs=[], weights=[], ensemble_metrics=tmp_path / "absent.json",
                        parity=[])
    assert not (tmp_path / "r.json").exists()


def _oof_frame(votes, folds) -> pd.DataFrame:
    df = pd.DataFrame({"label_id": np.arange(len(votes)), "fold": folds})
    for j, col in enumerate(VOTE_COLUMNS):
        df[col] = np.asarray(votes)[:, j]
    return df


def test_gap_arithmetic_on_a_hand_computed_case():
    # fold 0: row 0 split 1:1 between the first two classes (2 votes, not high-vote);
    # fold 1: rows 1 and 2 with 10 votes each for class 1 and class 2.
    votes = [[1, 1, 0, 0, 0, 0], [10, 0, 0, 0, 0, 0], [0, 10, 0, 0, 0, 0]]
    oof = _oof_frame(votes, [0, 1, 1])
    prior = oof_prior_probs(oof)
    # row 0's prior is the mean of fold 1's targets, rows 1-2's the target of row 0: (1/2, 1/2, 0, ...)
    assert np.allclose(prior, [[0.5, 0.5, 0, 0, 0, 0]] * 3)
    latent = np.array([[0.5, 0.5, 0, 0, 0, 0], [0.8, 0.2, 0, 0, 0, 0], [0.2, 0.8, 0, 0, 0, 0]])
    entry = gap_entry({"kl_all": 0.3, "kl_high_vote": 0.5, "n_rows": 3}, np.array(votes, float), prior, latent)
    # per-row prior KL: 0, log 2, log 2; floor: 0, log 1.25, log 1.25
    prior_all, floor_all = 2 / 3 * np.log(2), 2 / 3 * np.log(1.25)
    assert entry["all"]["n_rows"] == 3 and entry["high_vote"]["n_rows"] == 2
    assert entry["all"]["prior_kl"] == pytest.approx(prior_all)
    assert entry["all"]["floor_kl"] == pytest.approx(floor_all)
    assert entry["all"]["gap_closed"] == pytest.approx((prior_all - 0.3) / (prior_all - floor_all))
    assert entry["high_vote"]["prior_kl"] == pytest.approx(np.log(2))
    assert entry["high_vote"]["floor_kl"] == pytest.approx(np.log(1.25))
    assert entry["high_vote"]["gap_closed"] == pytest.approx((np.log(2) - 0.5) / (np.log(2) - np.log(1.25)))

    no_key = gap_entry({"kl_all": 0.3, "kl_high_vote": 0.5, "n_rows": 3}, np.array(votes, float), prior, None)
    assert no_key["all"]["floor_kl"] is None and no_key["all"]["gap_closed"] is None
    assert no_key["all"]["prior_kl"] == pytest.approx(prior_all)
    assert gap_closed(1.0, 1.0, 0.2) == 0.0 and gap_closed(0.2, 1.0, 0.2) == 1.0
    assert gap_closed(1.2, 1.0, 0.2) == pytest.approx(-0.25)
    assert gap_closed(0.5, 0.2, 0.2) is None and gap_closed(0.5, 1.0, None) is None
    with pytest.raises(DataError, match="scored on 5 rows"):
        gap_entry({"kl_all": 0.3, "n_rows": 5}, np.array(votes, float), prior, latent)


def _collect(tiny_run, out, **kwargs):
    oofs = [p for paths in tiny_run["oofs"].values() for p in paths]
    weights = [p for paths in tiny_run["weights"].values() for p in paths]
    return collect_results(out, oofs=oofs, weights=weights, ensemble_metrics=tiny_run["ensemble_metrics_path"],
                           parity=[tiny_run["parity_path"]], **kwargs)


def test_results_carry_the_gap_table_with_and_without_an_answer_key(tiny_run, tmp_path):
    key = tiny_run["data_dir"] / "answer_key" / "latent.parquet"
    with_key = _collect(tiny_run, tmp_path / "with.json", answer_key=key)
    gap = json.loads((tmp_path / "with.json").read_text())["gap_to_floor"]
    assert gap["answer_key"] == str(key) and set(gap["table"]) == {"resnet1d_gru", "efficientnet", "ensemble"}

    # The prior of each fold is the one training scored (prior_kl_all in the weights' metrics).
    oof = pd.concat([pd.read_parquet(p) for p in tiny_run["oofs"]["resnet1d_gru"]], ignore_index=True)
    votes = oof[list(VOTE_COLUMNS)].to_numpy(float)
    targets = votes / votes.sum(axis=1, keepdims=True)
    prior = oof_prior_probs(oof)
    for fold, fold_metrics in with_key["models"]["resnet1d_gru"]["training"]["folds"].items():
        rows = oof["fold"].to_numpy() == int(fold)
        assert metrics.kaggle_kl(targets[rows], prior[rows]) == pytest.approx(fold_metrics["prior_kl_all"], abs=1e-9)

    # The floor: the latent vectors of exactly the OOF rows, joined here independently.
    latent = pd.read_parquet(key).set_index("label_id").loc[oof["label_id"]].to_numpy(float)
    high = oof[list(VOTE_COLUMNS)].sum(axis=1).to_numpy() >= 10
    for name, entry in gap["table"].items():
        assert entry["all"]["n_rows"] == len(oof), name
        assert entry["all"]["floor_kl"] == pytest.approx(metrics.kaggle_kl(targets, latent))
        assert entry["all"]["prior_kl"] == pytest.approx(metrics.kaggle_kl(targets, prior))
        if high.any():
            assert entry["high_vote"]["floor_kl"] == pytest.approx(metrics.kaggle_kl(targets[high], latent[high]))
        e = entry["all"]
        assert e["gap_closed"] == pytest.approx((e["prior_kl"] - e["model_kl"]) / (e["prior_kl"] - e["floor_kl"]))
    assert gap["table"]["resnet1d_gru"]["all"]["model_kl"] == with_key["models"]["resnet1d_gru"]["oof"]["kl_all"]
    deployed = with_key["ensemble"]["ensemble"].get("deployed") or with_key["ensemble"]["ensemble"]["stacked"]
    assert gap["table"]["ensemble"]["all"]["model_kl"] == deployed["kl_all"]
    summary = format_summary(with_key)
    assert "how far from the floor" in summary and "no answer key" not in summary
    assert f"{gap['table']['ensemble']['all']['floor_kl']:.4f}" in summary

    without = _collect(tiny_run, tmp_path / "without.json")
    gap = json.loads((tmp_path / "without.json").read_text())["gap_to_floor"]
    assert gap["answer_key"] is None and gap["note"] == NO_ANSWER_KEY
    for entry in gap["table"].values():
        for subset in ("all", "high_vote"):
            assert entry[subset]["floor_kl"] is None and entry[subset]["gap_closed"] is None
        assert entry["all"]["prior_kl"] == pytest.approx(metrics.kaggle_kl(targets, prior))
    assert "no answer key" in format_summary(without)

    with pytest.raises(DataError, match="no answer key"):
        _collect(tiny_run, tmp_path / "missing.json", answer_key=tmp_path / "absent.parquet")
