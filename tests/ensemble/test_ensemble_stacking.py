"""Nested stacking on synthetic OOF predictions (see conftest for what the members are)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from hms_core.contract import votes_to_targets
from hms_core.ensemble.stacking import build_ensemble, load_ensemble
from hms_core.errors import DataError
from hms_core import metrics

FAST = {"meta_learner": {"epochs": 8, "batch_size": 128}}


def test_ensemble_beats_best_member_and_rebuilds_from_file(synthetic_oof, tmp_path):
    out = tmp_path / "ensemble.pth"
    result = build_ensemble(synthetic_oof["paths"], FAST, out_path=out, checkpoint_dir=tmp_path / "ckpt")

    best_member_kl = min(min(s["kl_all"], s["tta"]["kl_all"]) for s in result["members"].values())
    stacked = result["ensemble"]["stacked"]
    # Nested OOF: each row scored by a meta-learner that never saw it, calibrated cross-fitted.
    assert stacked["kl_all"] < best_member_kl - 0.05
    assert stacked["n_rows"] == 1500 and stacked["n_high_vote"] > 0
    # The near-copy of the best member adds nothing but correlation: one of the pair is dropped.
    sel = result["selection"]
    assert len({"alpha", "alpha_copy"} & set(sel["kept"])) == 1
    assert {"beta", "gamma"} <= set(sel["kept"])
    assert any(s.get("stopped") for s in sel["steps"]) and all("reason" in s for s in sel["steps"][1:])

    state = torch.load(out, map_location="cpu", weights_only=True)
    assert state["members"] == sel["kept"]
    assert np.isclose(sum(state["bma_weights"]), 1.0) and np.isclose(sum(state["member_weights"]), 1.0)
    ens = load_ensemble(out)
    head = ens["head"]
    assert len(head.meta_learners) == 4
    # The rebuilt head applied to the OOF inputs gives calibrated probabilities that score
    # close to the nested figure (it averages fold learners, so it is in-sample: not lower bound).
    truth = synthetic_oof["truth"]
    logp = torch.tensor(np.stack([synthetic_oof["logp"][m][0] for m in state["members"]], 1), dtype=torch.float32)
    logp_swap = torch.tensor(np.stack([synthetic_oof["logp"][m][1] for m in state["members"]], 1), dtype=torch.float32)
    with torch.no_grad():
        probs = torch.softmax(head(logp, logp_swap), dim=1).double().numpy()
    kl = metrics.kaggle_kl(votes_to_targets(truth["votes"]), probs)
    assert abs(kl - stacked["kl_all"]) < 0.05


def test_meta_learner_resumes_from_checkpoints(synthetic_oof, tmp_path):
    args = dict(out_path=tmp_path / "a.pth", checkpoint_dir=tmp_path / "ckpt")
    first = build_ensemble(synthetic_oof["paths"], FAST, **args)
    second = build_ensemble(synthetic_oof["paths"], FAST, **{**args, "out_path": tmp_path / "b.pth"})
    assert second["ensemble"]["stacked"]["kl_all"] == first["ensemble"]["stacked"]["kl_all"]
    a = torch.load(tmp_path / "a.pth", weights_only=True)["meta_learner"]["state_dicts"]
    b = torch.load(tmp_path / "b.pth", weights_only=True)["meta_learner"]["state_dicts"]
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def test_no_row_is_scored_by_a_meta_learner_that_saw_it(synthetic_oof, tmp_path):
    """Changing the votes of fold-0 rows must leave fold 0's meta-learner and its scores unchanged."""
    from hms_core.ensemble.config import EnsembleConfig
    from hms_core.ensemble.oof import load_oof
    from hms_core.ensemble.stacking import train_meta_learners

    cfg = EnsembleConfig.from_dict({"meta_learner": {"epochs": 3, "batch_size": 128}})
    oof = load_oof(synthetic_oof["paths"]).subset(["alpha", "beta"])
    w = np.array([0.5, 0.5])
    learners_a, logits_a, _ = train_meta_learners(oof, w, cfg, checkpoint_dir=tmp_path / "a")
    in_fold0 = oof.fold == 0
    oof.votes = oof.votes.copy()
    oof.votes[in_fold0] = oof.votes[in_fold0][:, ::-1]  # other targets on fold 0 only
    learners_b, logits_b, _ = train_meta_learners(oof, w, cfg, checkpoint_dir=tmp_path / "b")
    sd_a, sd_b = learners_a[0].state_dict(), learners_b[0].state_dict()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert np.array_equal(logits_a[in_fold0], logits_b[in_fold0])
    # ...while the meta-learners that did train on fold 0 changed.
    sd_a1, sd_b1 = learners_a[1].state_dict(), learners_b[1].state_dict()
    assert not all(torch.equal(sd_a1[k], sd_b1[k]) for k in sd_a1)
    assert not np.allclose(logits_a[~in_fold0], logits_b[~in_fold0])


def test_bad_oof_inputs_raise_clear_errors(synthetic_oof, tmp_path):
    paths = synthetic_oof["paths"]
    args = dict(out_path=tmp_path / "e.pth", checkpoint_dir=tmp_path / "ckpt")
    missing = {**paths, "beta": [tmp_path / "nope_fold0.parquet"]}
    with pytest.raises(DataError, match="nope_fold0.parquet.*not found"):
        build_ensemble(missing, FAST, **args)

    df = pd.read_parquet(paths["beta"][0]).drop(columns=["logp_lpd"])
    df.to_parquet(tmp_path / "cut.parquet")
    with pytest.raises(DataError, match="cut.parquet: missing column.*logp_lpd"):
        build_ensemble({**paths, "beta": [tmp_path / "cut.parquet", *paths["beta"][1:]]}, FAST, **args)

    df = pd.read_parquet(paths["beta"][0])
    df["fold"] = (df["fold"] + 1) % 4
    df.to_parquet(tmp_path / "refold.parquet")
    with pytest.raises(DataError, match="other folds"):
        build_ensemble({**paths, "beta": [tmp_path / "refold.parquet", *paths["beta"][1:]]}, FAST, **args)

    with pytest.raises(DataError, match="other rows"):
        build_ensemble({**paths, "beta": paths["beta"][1:]}, FAST, **args)
    assert not (tmp_path / "e.pth").exists()
