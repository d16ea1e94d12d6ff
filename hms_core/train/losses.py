"""Losses against vote distributions: KL divergence (soft cross-entropy), optional vote weights."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_loss(logits: torch.Tensor, targets: torch.Tensor, *,
            weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean KL(targets || softmax(logits)) over the batch, in nats.

    Parameters
    ----------
    logits : torch.Tensor
        ``(B, 6)`` unnormalised scores.
    targets : torch.Tensor
        ``(B, 6)`` vote distributions (rows sum to 1).
    weights : torch.Tensor, optional
        ``(B,)`` per-window weights; the loss is their weighted mean.

    Notes
    -----
    KL differs from soft cross-entropy only by the targets' entropy, a constant, so the
    gradients are identical; KL is reported because it is the competition metric.
    """
    logp = F.log_softmax(logits.float(), dim=1)
    targets = targets.float()
    # xlogy gives 0 where the target is 0, like Kaggle's metric.
    per_row = (torch.xlogy(targets, targets) - targets * logp).sum(dim=1)
    if weights is None:
        return per_row.mean()
    weights = weights.float()
    return (per_row * weights).sum() / weights.sum().clamp_min(1e-12)


def vote_weights(n_votes: torch.Tensor, *, full_weight_votes: float) -> torch.Tensor:
    """Weight ``min(n_votes / full_weight_votes, 1)``: low-vote windows count less."""
    return (n_votes.float() / float(full_weight_votes)).clamp(max=1.0)
