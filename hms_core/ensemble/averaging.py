"""Weighted averaging, Bayesian model averaging and per-prediction uncertainty.

The torch functions here are used both on out-of-fold arrays and inside the exported ONNX
ensemble, so the uncertainty a user sees from ``hms predict`` is the one measured here.
"""
from __future__ import annotations

import numpy as np
import torch

from hms_core.contract import votes_to_targets
from hms_core.ensemble.config import BMAConfig

PROB_FLOOR = 1e-15  # Kaggle clips predictions here before taking the log


def blend(member_probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean of member probabilities.

    Parameters
    ----------
    member_probs : np.ndarray
        ``(n_members, n_rows, 6)`` probabilities.
    weights : np.ndarray
        ``(n_members,)`` non-negative, summing to 1.

    Returns
    -------
    np.ndarray
        ``(n_rows, 6)`` probabilities.
    """
    return np.tensordot(np.asarray(weights, dtype=np.float64), member_probs, axes=1)


def row_log_likelihood(member_probs: np.ndarray, votes: np.ndarray) -> np.ndarray:
    """Per-member mean over rows of ``sum_c y_c log p_c`` (y = vote distribution), in nats.

    Returns
    -------
    np.ndarray
        ``(n_members,)``; the negative is the soft cross-entropy.
    """
    targets = votes_to_targets(votes)
    logp = np.log(np.clip(member_probs, PROB_FLOOR, 1.0))
    return (targets[None] * logp).sum(axis=2).mean(axis=1)


def bma_weights(member_probs: np.ndarray, votes: np.ndarray, cfg: BMAConfig) -> np.ndarray:
    """Bayesian model averaging weights from the members' out-of-fold likelihood.

    ``w_m ∝ exp(n_eff * mean_row_loglik_m)`` with a uniform prior; ``n_eff`` is
    ``cfg.effective_rows`` or the number of rows (exact BMA) when that is None.

    Parameters
    ----------
    member_probs : np.ndarray
        ``(n_members, n_rows, 6)`` out-of-fold probabilities.
    votes : np.ndarray
        ``(n_rows, 6)`` vote counts.

    Returns
    -------
    np.ndarray
        ``(n_members,)`` weights summing to 1.
    """
    loglik = row_log_likelihood(member_probs, votes)
    n_eff = float(votes.shape[0] if cfg.effective_rows is None else cfg.effective_rows)
    z = n_eff * loglik
    z = z - z.max()
    w = np.exp(z)
    return w / w.sum()


def predictive_uncertainty(sample_probs: torch.Tensor, sample_weights: torch.Tensor,
                           final_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy of the final prediction and the spread of the member/fold predictions.

    Parameters
    ----------
    sample_probs : torch.Tensor
        ``(n_samples, batch, 6)``: one probability vector per member (and per fold model, at
        test time) for each window.
    sample_weights : torch.Tensor
        ``(n_samples,)`` weights summing to 1 (BMA weights, split evenly over a member's folds).
    final_probs : torch.Tensor
        ``(batch, 6)`` the ensemble's (calibrated) probabilities.

    Returns
    -------
    entropy : torch.Tensor
        ``(batch,)`` Shannon entropy of ``final_probs`` in nats (0 .. log 6).
    member_spread : torch.Tensor
        ``(batch,)`` weighted standard deviation of the sample probabilities around their
        weighted mean, averaged over the six classes (0 when all members agree).
    """
    p = final_probs.clamp_min(PROB_FLOOR)
    entropy = -(final_probs * torch.log(p)).sum(dim=-1)
    w = sample_weights.reshape(-1, 1, 1)
    mean = (w * sample_probs).sum(dim=0)
    var = (w * (sample_probs - mean.unsqueeze(0)) ** 2).sum(dim=0)
    member_spread = torch.sqrt(var.clamp_min(0.0) + 1e-12).mean(dim=-1)
    return entropy, member_spread


def bma_summary(member_probs: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """BMA predictive distribution and its uncertainty on out-of-fold rows.

    Returns
    -------
    dict
        ``probs (n_rows, 6)``, ``entropy (n_rows,)`` in nats, ``member_spread (n_rows,)``.
    """
    samples = torch.as_tensor(member_probs, dtype=torch.float64)
    w = torch.as_tensor(weights, dtype=torch.float64)
    probs = (w.reshape(-1, 1, 1) * samples).sum(dim=0)
    entropy, spread = predictive_uncertainty(samples, w, probs)
    return {"probs": probs.numpy(), "entropy": entropy.numpy(), "member_spread": spread.numpy()}
