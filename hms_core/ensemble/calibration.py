"""Temperature scaling of the stacked logits, fitted on held-out folds.

``p = softmax(logits / T)``. T is fitted by L-BFGS on log T, minimising the soft
cross-entropy (NLL of the vote distributions), on rows whose logits came from a
meta-learner that never saw them. The before/after figures are cross-fitted: each fold is
scored with a temperature fitted on the other folds. The temperature is deployed only when
that cross-fitted soft NLL is lower than without it; otherwise T = 1 is deployed (a fitted T
that does not help on held-out folds is noise).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from hms_core import metrics
from hms_core.contract import votes_to_targets
from hms_core.ensemble.config import CalibrationConfig

logger = logging.getLogger(__name__)


def softmax_np(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (``(n_rows, 6)`` -> probabilities)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, votes: np.ndarray, *, max_iter: int = 100) -> float:
    """Temperature minimising the soft-target NLL of ``softmax(logits / T)``.

    Parameters
    ----------
    logits : np.ndarray
        ``(n_rows, 6)`` held-out logits (or log-probabilities).
    votes : np.ndarray
        ``(n_rows, 6)`` vote counts.

    Returns
    -------
    float
        T > 0 (T > 1 softens over-confident predictions).
    """
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(votes_to_targets(votes), dtype=torch.float64)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = -(y * torch.log_softmax(z / log_t.exp(), dim=1)).sum(dim=1).mean()
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().clamp(-5.0, 5.0).exp())


def calibration_figures(votes: np.ndarray, probs: np.ndarray, *, n_bins: int) -> dict[str, float]:
    """Calibration scores of ``probs``.

    Returns
    -------
    dict
        ``nll`` (majority-class NLL, nats, :func:`hms_core.metrics.nll`), ``soft_nll``
        (cross-entropy against the vote distributions, nats: what the temperature minimises),
        ``kl`` (Kaggle KL) and ``ece`` (expected calibration error of the top class).
    """
    targets = votes_to_targets(votes)
    p = np.clip(probs, metrics.KAGGLE_EPS, 1.0)
    return {"nll": float(metrics.nll(targets, probs)),
            "soft_nll": float(-(targets * np.log(p)).sum(axis=1).mean()),
            "kl": float(metrics.kaggle_kl(targets, probs)),
            "ece": float(metrics.expected_calibration_error(targets, probs, n_bins=n_bins))}


def calibrate(logits: np.ndarray, votes: np.ndarray, fold: np.ndarray, cfg: CalibrationConfig) -> dict[str, Any]:
    """Fit the deployed temperature and measure calibration before and after, cross-fitted.

    Parameters
    ----------
    logits : np.ndarray
        ``(n_rows, 6)`` nested out-of-fold logits of the meta-learner.
    votes : np.ndarray
        ``(n_rows, 6)`` vote counts.
    fold : np.ndarray
        ``(n_rows,)`` outer fold of each row.

    Returns
    -------
    dict
        ``temperature`` (the deployed T: fitted on all rows if it helps held-out, else 1.0),
        ``fitted_temperature``, ``applied`` (bool), ``reason``, ``fold_temperatures``,
        ``before`` and ``after`` ``{nll, soft_nll, kl, ece}`` where ``after`` scores each
        fold with the temperature fitted on the other folds, ``deployed`` (the figures of
        what is deployed: ``after`` if applied, else ``before``), and
        ``calibrated_probs (n_rows, 6)`` (the deployed cross-fitted probabilities, for honest
        OOF scoring).
    """
    before = calibration_figures(votes, softmax_np(logits), n_bins=cfg.n_bins)
    if not cfg.enabled:
        return {"temperature": 1.0, "fitted_temperature": None, "applied": False,
                "reason": "calibration.enabled is false", "fold_temperatures": {}, "before": before,
                "after": before, "deployed": before, "calibrated_probs": softmax_np(logits), "enabled": False}
    calibrated = np.empty_like(logits, dtype=np.float64)
    fold_t = {}
    folds = np.unique(fold)
    for k in folds:
        held = fold == k
        if len(folds) == 1:  # nothing else to fit on: fit and score on the same rows
            held_fit = held
        else:
            held_fit = ~held
        t_k = fit_temperature(logits[held_fit], votes[held_fit], max_iter=cfg.max_iter)
        fold_t[int(k)] = t_k
        calibrated[held] = softmax_np(logits[held], t_k)
    after = calibration_figures(votes, calibrated, n_bins=cfg.n_bins)
    fitted = fit_temperature(logits, votes, max_iter=cfg.max_iter)
    applied = after["soft_nll"] < before["soft_nll"]
    if applied:
        reason = (f"cross-fitted temperature lowers held-out soft NLL {before['soft_nll']:.4f} -> "
                  f"{after['soft_nll']:.4f}: deploying T = {fitted:.3f}")
    else:
        reason = (f"cross-fitted temperature does not lower held-out soft NLL ({before['soft_nll']:.4f} -> "
                  f"{after['soft_nll']:.4f}): deploying T = 1 instead of the fitted {fitted:.3f}")
        calibrated = softmax_np(logits)
    logger.info("temperature %.3f: soft NLL %.4f -> %.4f, ECE %.4f -> %.4f (%s)", fitted, before["soft_nll"],
             after["soft_nll"], before["ece"], after["ece"], "applied" if applied else "not applied")
    return {"temperature": fitted if applied else 1.0, "fitted_temperature": fitted, "applied": applied,
            "reason": reason, "fold_temperatures": fold_t, "before": before, "after": after,
            "deployed": after if applied else before, "calibrated_probs": calibrated, "enabled": True}
