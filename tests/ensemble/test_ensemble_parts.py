"""Config, selection, BMA / uncertainty and temperature scaling on arrays."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hms_core.config import from_mapping
from hms_core.ensemble.averaging import bma_summary, bma_weights, predictive_uncertainty
from hms_core.ensemble.calibration import calibrate, fit_temperature, softmax_np
from hms_core.ensemble.config import BMAConfig, CalibrationConfig, EnsembleConfig, SelectionConfig
from hms_core.ensemble.selection import fit_blend_weights, select_members
from hms_core.errors import ConfigError
from oof_factory import make_truth, member_logp


def test_config_defaults_and_unknown_keys():
    cfg = from_mapping(EnsembleConfig, {"meta_learner": {"hidden": 8}, "selection": {"max_members": 3}}, "ensemble")
    assert cfg.meta_learner.hidden == 8 and cfg.selection.max_members == 3 and cfg.calibration.enabled
    with pytest.raises(ConfigError, match="ensemble.meta_learner: unknown key 'hiden'"):
        from_mapping(EnsembleConfig, {"meta_learner": {"hiden": 8}}, "ensemble")
    with pytest.raises(ConfigError, match="ensemble: unknown key 'stacker'"):
        from_mapping(EnsembleConfig, {"stacker": {}}, "ensemble")
    with pytest.raises(ConfigError, match="ensemble.selection.method: invalid value 'best'; allowed values are 'greedy', 'all'"):
        from_mapping(SelectionConfig, {"method": "best"}, "ensemble.selection")


def test_temperature_scaling_lowers_held_out_nll_on_miscalibrated_inputs():
    truth = make_truth(2000, 2, seed=5)
    for true_t in (0.4, 2.5):  # over- and under-confident
        logp, _ = member_logp(truth, noise=0.5, temperature=true_t, seed=6)
        result = calibrate(logp, truth["votes"], truth["fold"], CalibrationConfig())
        before, after = result["before"], result["after"]  # after: cross-fitted (held-out folds)
        assert after["soft_nll"] < before["soft_nll"] - 0.01
        assert after["nll"] < before["nll"]  # majority-class NLL too
        assert after["kl"] < before["kl"] - 0.01
        assert result["applied"] and result["deployed"] == after
        assert (result["temperature"] > 1.5) if true_t < 1 else (result["temperature"] < 0.7)
        assert all(abs(t - result["temperature"]) < 0.3 for t in result["fold_temperatures"].values())
    # A calibrated model keeps T close to 1.
    logp, _ = member_logp(truth, noise=0.01, temperature=1.0, seed=6)
    assert abs(fit_temperature(logp, truth["votes"]) - 1.0) < 0.15
    assert np.allclose(softmax_np(logp).sum(1), 1.0)


def test_blend_weights_and_greedy_selection_record():
    truth = make_truth(1200, 2, seed=7)
    good = np.exp(member_logp(truth, noise=0.8, temperature=1.0, seed=1)[0])
    other = np.exp(member_logp(truth, noise=0.8, temperature=1.0, seed=2)[0])
    bad = np.full_like(good, 1 / 6)
    w = fit_blend_weights(np.stack([good, other, bad]), truth["votes"])
    assert np.isclose(w.sum(), 1.0) and w[2] < 0.1 and min(w[:2]) > 0.3
    sel = select_members(("good", "other", "bad", "twin"), np.stack([good, other, bad, good]), truth["votes"],
                         SelectionConfig())
    assert {"good", "other"} <= set(sel["kept"]) and "twin" not in sel["kept"]
    assert sel["steps"][-1]["stopped"] and "no gain" in sel["steps"][-1]["reason"]
    assert sel["correlation"]["good"]["twin"] > 0.999
    # Only correlation above the threshold costs: the twin pays ~penalty * (1 - 0.9), the others nothing.
    last = {c["member"]: c for c in sel["steps"][-1]["candidates"]}
    assert np.isclose(last["twin"]["penalty"], 0.05 * (last["twin"]["max_corr"] - 0.9))
    assert all(c["penalty"] == 0.0 for s in sel["steps"][1:] for c in s["candidates"] if c["max_corr"] <= 0.9)
    assert sel["correlation_threshold"] == 0.9 and sel["correlation_penalty"] == 0.05
    capped = select_members(("good", "other", "bad"), np.stack([good, other, bad]), truth["votes"],
                            SelectionConfig(max_members=1))
    assert capped["kept"] == ["good"] or capped["kept"] == ["other"]
    assert "max_members" in capped["steps"][-1]["reason"]


def test_correlation_threshold_lets_ordinary_correlation_through():
    """A member correlated like real members (r ~ 0.8) with a real blending gain is kept by the
    default threshold, while a flat penalty on all correlation of the old size vetoes it."""
    truth = make_truth(1500, 2, seed=9)
    rng = np.random.default_rng(3)
    log_q = np.log(np.clip(truth["latent"], 1e-6, 1.0))
    shared = rng.normal(0.0, 0.7, log_q.shape)  # errors both members make
    a = softmax_np(log_q + shared + rng.normal(0.0, 0.5, log_q.shape))
    b = softmax_np(log_q + shared + rng.normal(0.0, 0.5, log_q.shape))
    probs = np.stack([a, b])
    default = select_members(("a", "b"), probs, truth["votes"], SelectionConfig())
    step = default["steps"][1]["candidates"][0]
    assert 0.5 < step["max_corr"] < 0.9 and step["penalty"] == 0.0
    gain = default["steps"][0]["blend_kl"] - step["blend_kl"]
    assert set(default["kept"]) == {"a", "b"} and gain > 1e-4
    flat = select_members(("a", "b"), probs, truth["votes"],
                          SelectionConfig(correlation_penalty=2 * gain / step["max_corr"], correlation_threshold=0.0))
    assert len(flat["kept"]) == 1 and flat["steps"][-1]["stopped"]
    with pytest.raises(ConfigError, match="correlation_threshold"):
        from_mapping(SelectionConfig, {"correlation_threshold": 1.5}, "ensemble.selection")


def test_temperature_is_not_deployed_when_it_does_not_help_held_out():
    """Folds miscalibrated in opposite directions: a T fitted on one fold hurts the other, so the
    cross-fitted NLL rises and T = 1 is deployed, with the reason recorded."""
    truth = make_truth(1600, 2, seed=10)
    over, _ = member_logp(truth, noise=0.3, temperature=0.5, seed=11)
    under, _ = member_logp(truth, noise=0.3, temperature=2.0, seed=11)
    logits = np.where((truth["fold"] == 0)[:, None], over, under)
    result = calibrate(logits, truth["votes"], truth["fold"], CalibrationConfig())
    assert result["after"]["soft_nll"] > result["before"]["soft_nll"]
    assert result["applied"] is False and result["temperature"] == 1.0
    assert result["fitted_temperature"] != 1.0 and "deploying T = 1" in result["reason"]
    assert result["deployed"] == result["before"]
    assert np.allclose(result["calibrated_probs"], softmax_np(logits))


def test_bma_weights_and_uncertainty():
    truth = make_truth(1000, 2, seed=8)
    good = np.exp(member_logp(truth, noise=0.5, temperature=1.0, seed=1)[0])
    worse = np.exp(member_logp(truth, noise=1.5, temperature=1.0, seed=2)[0])
    probs = np.stack([good, worse])
    tempered = bma_weights(probs, truth["votes"], BMAConfig(effective_rows=5))
    exact = bma_weights(probs, truth["votes"], BMAConfig(effective_rows=None))
    assert np.isclose(tempered.sum(), 1) and 0.5 < tempered[0] < 1 - 1e-3
    assert exact[0] > 1 - 1e-9  # exact BMA over 1000 rows collapses on the better member
    summary = bma_summary(probs, tempered)
    assert np.allclose(summary["probs"].sum(1), 1)
    assert (summary["member_spread"] > 0).all()
    assert ((summary["entropy"] >= 0) & (summary["entropy"] <= np.log(6) + 1e-9)).all()
    same = bma_summary(np.stack([good, good]), tempered)
    assert same["member_spread"].max() < 1e-5
    uniform = torch.full((1, 3, 6), 1 / 6, dtype=torch.float64)
    ent, spread = predictive_uncertainty(uniform, torch.ones(1, dtype=torch.float64), uniform[0])
    assert torch.allclose(ent, torch.full((3,), np.log(6), dtype=torch.float64))


def test_meta_learner_shrinkage_and_regularisation_config():
    from hms_core.ensemble.meta_learner import MetaLearner

    torch.manual_seed(0)
    model = MetaLearner(2, hidden=4, dropout=0.0, init_weights=[0.7, 0.3]).eval()
    torch.nn.init.normal_(model.correction[-1].weight)  # a trained-looking correction
    logp = torch.log_softmax(torch.randn(5, 2, 6), dim=-1)
    logp_swap = torch.log_softmax(torch.randn(5, 2, 6), dim=-1)
    base, corr = model.parts(logp, logp_swap)
    assert corr.abs().max() > 0 and model.correction_l2() > 0
    model.shrink_correction(0.25)
    assert torch.allclose(model(logp, logp_swap), base + 0.25 * corr, atol=1e-6)
    model.shrink_correction(0.0)
    blend = 0.7 * 0.5 * (logp[:, 0].exp() + logp_swap[:, 0].exp()) + 0.3 * 0.5 * (logp[:, 1].exp() + logp_swap[:, 1].exp())
    assert torch.allclose(model(logp, logp_swap), torch.log(blend), atol=1e-6)
    with pytest.raises(ConfigError, match="residual_l2"):
        from_mapping(EnsembleConfig, {"meta_learner": {"residual_l2": -1}}, "ensemble")
    with pytest.raises(ConfigError, match="ensemble.meta_learner.deploy: invalid value 'best'; allowed values are 'auto', 'best_member'"):
        from_mapping(EnsembleConfig, {"meta_learner": {"deploy": "best"}}, "ensemble")
