"""Nested stacking on synthetic OOF predictions (see conftest for what the members are)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from hms_core.config import from_mapping
from hms_core.contract import votes_to_targets
from hms_core.ensemble.averaging import blend
from hms_core.ensemble.calibration import softmax_np
from hms_core.ensemble.build import build_ensemble
from hms_core.ensemble.stacking import load_ensemble
from hms_core.errors import DataError
from hms_core import metrics

FAST = {"meta_learner": {"epochs": 8, "batch_size": 128}}


def _head_probs(head, synthetic_oof, members):
    logp = torch.tensor(np.stack([synthetic_oof["logp"][m][0] for m in members], 1), dtype=torch.float32)
    logp_swap = torch.tensor(np.stack([synthetic_oof["logp"][m][1] for m in members], 1), dtype=torch.float32)
    with torch.no_grad():
        return torch.softmax(head(logp, logp_swap), dim=1).double().numpy()


def test_ensemble_beats_best_member_and_rebuilds_from_file(synthetic_oof, tmp_path):
    out = tmp_path / "ensemble.pth"
    result = build_ensemble(synthetic_oof["paths"], FAST, out_path=out, checkpoint_dir=tmp_path / "ckpt")

    best_member_kl = min(min(s["kl_all"], s["tta"]["kl_all"]) for s in result["members"].values())
    ens_scores = result["ensemble"]
    deployed = ens_scores["deployed"]
    # Nested OOF: blend weights and meta-learners fitted without the scored fold, calibrated cross-fitted.
    assert deployed["kl_all"] < best_member_kl - 0.05
    assert deployed["n_rows"] == 1500 and deployed["n_high_vote"] > 0
    assert ens_scores["stacked"]["kl_all"] < best_member_kl - 0.05
    # The deployed candidate is the one with the lowest nested score, and the reason says so.
    nested = {"best_member": ens_scores["best_member_calibrated"], "blend": ens_scores["blend_nested"],
              "stacked": ens_scores["stacked"]}
    choice = ens_scores["deployed_candidate"]
    assert nested[choice]["kl_all"] == min(v["kl_all"] for v in nested.values()) == deployed["kl_all"]
    assert "lowest nested OOF KL" in ens_scores["deployed_reason"]
    assert result["calibration"] == result["calibration_candidates"][choice]
    # The in-sample blend (weights fitted on all rows) is optimistic relative to the nested one.
    assert ens_scores["blend"]["kl_all"] <= ens_scores["blend_nested_uncalibrated"]["kl_all"] + 1e-9
    # The near-copy of the best member adds nothing but correlation: one of the pair is dropped.
    sel = result["selection"]
    assert len({"alpha", "alpha_copy"} & set(sel["kept"])) == 1
    assert {"beta", "gamma"} <= set(sel["kept"])
    assert any(s.get("stopped") for s in sel["steps"]) and all("reason" in s for s in sel["steps"][1:])
    # Per outer fold: inner validation fold, early-stopping epoch and shrinkage are recorded.
    for rec in result["meta_learner"]["folds"]:
        assert rec["inner_fold"] != rec["fold"] and rec["n_inner_val"] > 0 and 0.0 <= rec["shrinkage"] <= 1.0
        assert rec["inner_shrunk_ce"] <= min(rec["inner_blend_ce"], rec["inner_full_ce"]) + 1e-6

    state = torch.load(out, map_location="cpu", weights_only=True)
    assert state["deployed"] == ens_scores["deployed_mode"] and state["members"] == ens_scores["deployed_members"]
    assert state["meta_learner"]["members"] == sel["kept"] and len(state["meta_learner"]["state_dicts"]) == 4
    assert np.isclose(sum(state["bma_weights"]), 1.0) and np.isclose(sum(state["member_weights"]), 1.0)
    # Conformal sets on the deployed candidate's calibrated OOF rows, coverage cross-fitted by
    # fold (labels are vote majorities drawn from the latent truth: exchangeable rows).
    conformal = result["conformal"]
    assert state["conformal"] == {k: conformal[k] for k in ("method", "alpha", "threshold", "n_calibration")}
    assert conformal["n_calibration"] == 1500 and conformal["alpha"] == 0.1
    assert len(conformal["fold_thresholds"]) == len(state["folds"])
    cross = conformal["cross_fitted"]
    assert abs(cross["all"]["coverage"] - 0.9) < 0.035 and 1 < cross["all"]["mean_set_size"] < 6
    assert cross["high_vote"]["n"] == deployed["n_high_vote"] and cross["high_vote"]["coverage"] > 0.8
    ens = load_ensemble(out)
    probs = _head_probs(ens["head"], synthetic_oof, state["members"])
    # The rebuilt head applied to the OOF inputs scores close to the nested figure (in-sample
    # weights or fold-averaged learners, so not a lower bound).
    kl = metrics.kaggle_kl(votes_to_targets(synthetic_oof["truth"]["votes"]), probs)
    assert abs(kl - deployed["kl_all"]) < 0.05


@pytest.mark.parametrize("mode", ["blend", "stacked", "best_member"])
def test_forced_deployment_rebuilds_that_head(synthetic_oof, tmp_path, mode):
    cfg = {"meta_learner": {"epochs": 3, "batch_size": 128, "deploy": mode}}
    out = tmp_path / "ensemble.pth"
    result = build_ensemble(synthetic_oof["paths"], cfg, out_path=out, checkpoint_dir=tmp_path / "ckpt")
    assert result["ensemble"]["deployed_candidate"] == mode and mode in result["ensemble"]["deployed_reason"]
    ens = load_ensemble(out)
    head, members = ens["head"], ens["members"]
    probs = _head_probs(head, synthetic_oof, members)
    tta = np.stack([0.5 * (np.exp(synthetic_oof["logp"][m][0]) + np.exp(synthetic_oof["logp"][m][1]))
                    for m in members])
    if mode == "stacked":
        assert ens["deployed"] == "stacked" and len(head.meta_learners) == 4
        assert members == result["selection"]["kept"]
    else:  # a blend head is exactly the weighted TTA mean (then the temperature)
        assert ens["deployed"] == "blend" and len(head.meta_learners) == 1
        expected = blend(tta, np.array(ens["member_weights"]))
        expected = softmax_np(np.log(expected), ens["temperature"])
        assert np.allclose(probs, expected, atol=1e-5)
        if mode == "best_member":
            best = min(result["members"], key=lambda m: result["members"][m]["tta"]["kl_all"])
            assert members == [best] and ens["member_weights"] == [1.0]


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
    from hms_core.ensemble.nested import train_meta_learners

    cfg = from_mapping(EnsembleConfig, {"meta_learner": {"epochs": 3, "batch_size": 128}}, "ensemble")
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


@pytest.mark.parametrize("kind", ["blend", "stacked"])
def test_both_head_kinds_trace_to_onnx_with_parity(tmp_path, kind):
    """The export rebuilds whatever head ``ensemble.pth`` deploys; both kinds must trace."""
    import warnings

    import onnxruntime as ort

    from hms_core.ensemble.meta_learner import MetaLearner
    from hms_core.ensemble.stacking import StackedHead

    torch.manual_seed(1)
    if kind == "blend":
        head = StackedHead.for_blend([0.6, 0.4], 1.3).eval()
    else:
        learners = [MetaLearner(2, hidden=4, init_weights=[0.5, 0.5]) for _ in range(2)]
        for m in learners:
            torch.nn.init.normal_(m.correction[-1].weight, std=0.1)
        head = StackedHead([m.eval() for m in learners], 0.9).eval()
    logp = torch.log_softmax(torch.randn(3, 2, 6), dim=-1)
    logp_swap = torch.log_softmax(torch.randn(3, 2, 6), dim=-1)
    path = tmp_path / "head.onnx"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(head, (logp, logp_swap), str(path), input_names=["logp", "logp_swap"],
                          output_names=["logits"], dynamic_axes={"logp": {0: "b"}, "logp_swap": {0: "b"}},
                          opset_version=17, dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_logits,) = sess.run(None, {"logp": logp.numpy(), "logp_swap": logp_swap.numpy()})
    with torch.no_grad():
        assert np.allclose(onnx_logits, head(logp, logp_swap).numpy(), atol=1e-5)
