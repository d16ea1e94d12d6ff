"""Config, selection, BMA / uncertainty and temperature scaling on arrays."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hms_core.ensemble.averaging import bma_summary, bma_weights, predictive_uncertainty
from hms_core.ensemble.calibration import calibrate, fit_temperature, softmax_np
from hms_core.ensemble.config import BMAConfig, CalibrationConfig, EnsembleConfig, SelectionConfig
from hms_core.ensemble.selection import fit_blend_weights, select_members
from hms_core.errors import ConfigError
from oof_factory import make_truth, member_logp


def test_config_defaults_and_unknown_keys():
    cfg = EnsembleConfig.from_dict({"meta_learner": {"hidden": 8}, "selection": {"max_members": 3}})
    assert cfg.meta_learner.hidden == 8 and cfg.selection.max_members == 3 and cfg.calibration.enabled
    with pytest.raises(ConfigError, match="ensemble.meta_learner: unknown key 'hiden'"):
        EnsembleConfig.from_dict({"meta_learner": {"hiden": 8}})
    with pytest.raises(ConfigError, match="ensemble: unknown key 'stacker'"):
        EnsembleConfig.from_dict({"stacker": {}})
    with pytest.raises(ConfigError, match="method: 'best' is not one of greedy, all"):
        SelectionConfig.from_dict({"method": "best"})


def test_temperature_scaling_lowers_held_out_nll_on_miscalibrated_inputs():
    truth = make_truth(2000, 2, seed=5)
    for true_t in (0.4, 2.5):  # over- and under-confident
        logp, _ = member_logp(truth, noise=0.5, temperature=true_t, seed=6)
        result = calibrate(logp, truth["votes"], truth["fold"], CalibrationConfig())
        before, after = result["before"], result["after"]  # after: cross-fitted (held-out folds)
        assert after["soft_nll"] < before["soft_nll"] - 0.01
        assert after["nll"] < before["nll"]  # majority-class NLL too
        assert after["kl"] < before["kl"] - 0.01
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
                         SelectionConfig(correlation_penalty=0.05))
    assert set(sel["kept"]) == {"good", "other"}
    assert sel["steps"][-1]["stopped"] and "no gain" in sel["steps"][-1]["reason"]
    assert sel["correlation"]["good"]["twin"] > 0.999
    capped = select_members(("good", "other", "bad"), np.stack([good, other, bad]), truth["votes"],
                            SelectionConfig(max_members=1))
    assert capped["kept"] == ["good"] or capped["kept"] == ["other"]
    assert "max_members" in capped["steps"][-1]["reason"]


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
