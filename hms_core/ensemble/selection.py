"""Diversity-aware member selection: greedy forward selection by penalised out-of-fold KL.

Start from the member with the lowest OOF KL. At each step try every remaining member:
refit the blend weights with it and score ``KL(blend) + penalty * max(0, max_corr - threshold)``,
where ``max_corr`` is the largest Pearson correlation between the candidate's OOF errors
(probabilities minus vote distributions) and those of a kept member. The best candidate is
kept when its penalised score beats the current blend's KL by ``min_improvement``; so a
member that nearly repeats what the ensemble already knows must earn its place, while the
ordinary correlation of members trained on the same labels (0.7-0.9) costs nothing.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from hms_core import metrics
from hms_core.contract import votes_to_targets
from hms_core.ensemble.averaging import PROB_FLOOR, blend
from hms_core.ensemble.config import SelectionConfig

logger = logging.getLogger(__name__)


def fit_blend_weights(member_probs: np.ndarray, votes: np.ndarray, *, max_iter: int = 100) -> np.ndarray:
    """Simplex weights minimising the OOF KL of the weighted mean of member probabilities.

    Parameters
    ----------
    member_probs : np.ndarray
        ``(n_members, n_rows, 6)``.
    votes : np.ndarray
        ``(n_rows, 6)`` vote counts.

    Returns
    -------
    np.ndarray
        ``(n_members,)`` weights, non-negative, summing to 1.
    """
    n_members = member_probs.shape[0]
    if n_members == 1:
        return np.ones(1)
    probs = torch.as_tensor(member_probs, dtype=torch.float64)
    targets = torch.as_tensor(votes_to_targets(votes), dtype=torch.float64)
    theta = torch.zeros(n_members, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        w = torch.softmax(theta, dim=0)
        p = torch.einsum("m,mnc->nc", w, probs).clamp_min(PROB_FLOOR)
        loss = -(targets * torch.log(p)).sum(dim=1).mean()  # soft CE = KL + const
        loss.backward()
        return loss

    opt.step(closure)
    return torch.softmax(theta.detach(), dim=0).numpy()


def error_correlation(member_probs: np.ndarray, votes: np.ndarray) -> np.ndarray:
    """Pearson correlation between members' OOF errors ``p - y`` (flattened over rows, classes).

    Returns
    -------
    np.ndarray
        ``(n_members, n_members)`` symmetric, ones on the diagonal.
    """
    errors = (member_probs - votes_to_targets(votes)[None]).reshape(member_probs.shape[0], -1)
    if errors.shape[0] == 1:
        return np.ones((1, 1))
    return np.corrcoef(errors)


def select_members(members: tuple[str, ...], member_probs: np.ndarray, votes: np.ndarray,
                   cfg: SelectionConfig) -> dict[str, Any]:
    """Choose members and blend weights by penalised greedy forward selection.

    Parameters
    ----------
    members : tuple of str
        Names, in the order of ``member_probs``.
    member_probs : np.ndarray
        ``(n_members, n_rows, 6)`` out-of-fold probabilities (TTA-averaged).
    votes : np.ndarray
        ``(n_rows, 6)`` vote counts.

    Returns
    -------
    dict
        ``kept`` (names in order of selection), ``weights`` ``{name: weight}`` of the kept
        members (refit jointly), ``blend_kl``, ``member_kl`` ``{name: OOF KL}``,
        ``correlation`` ``{name: {name: r}}``, ``steps`` (one record per step: every
        candidate's blended KL, max correlation, penalised score, and the decision with its
        reason), ``method``.
    """
    targets = votes_to_targets(votes)
    member_kl = {m: metrics.kaggle_kl(targets, member_probs[i]) for i, m in enumerate(members)}
    corr = error_correlation(member_probs, votes)
    corr_record = {a: {b: float(corr[i, j]) for j, b in enumerate(members)} for i, a in enumerate(members)}
    order = sorted(range(len(members)), key=lambda i: member_kl[members[i]])
    steps: list[dict[str, Any]] = []
    if cfg.method == "all":
        kept_idx = order
        steps.append({"decision": "kept all members (selection.method = 'all')"})
    else:
        kept_idx = [order[0]]
        current_kl = member_kl[members[order[0]]]
        steps.append({"kept": members[order[0]], "blend_kl": current_kl,
                      "reason": "lowest out-of-fold KL of any member"})
        while len(kept_idx) < min(cfg.max_members, len(members)):
            candidates = []
            for i in order:
                if i in kept_idx:
                    continue
                idx = kept_idx + [i]
                w = fit_blend_weights(member_probs[idx], votes)
                kl = metrics.kaggle_kl(targets, blend(member_probs[idx], w))
                max_corr = float(max(corr[i, j] for j in kept_idx))
                penalty = cfg.correlation_penalty * max(0.0, max_corr - cfg.correlation_threshold)
                candidates.append({"member": members[i], "index": i, "blend_kl": kl, "max_corr": max_corr,
                                   "penalty": penalty, "score": kl + penalty})
            if not candidates:
                break
            best = min(candidates, key=lambda c: c["score"])
            record = {"current_kl": current_kl,
                      "candidates": [{k: v for k, v in c.items() if k != "index"} for c in candidates]}
            if current_kl - best["score"] > cfg.min_improvement:
                kept_idx.append(best["index"])
                current_kl = best["blend_kl"]
                record.update(kept=best["member"], reason=(
                    f"blend KL {best['blend_kl']:.4f} + correlation penalty {best['penalty']:.4f} "
                    f"({cfg.correlation_penalty} x max(0, {best['max_corr']:.3f} - "
                    f"{cfg.correlation_threshold})) beats {record['current_kl']:.4f}"))
                steps.append(record)
            else:
                record.update(stopped=True, reason=(
                    f"best candidate {best['member']!r} scores {best['score']:.4f} (KL {best['blend_kl']:.4f}, "
                    f"correlation {best['max_corr']:.3f}, penalty {best['penalty']:.4f}): no gain over {current_kl:.4f} "
                    f"by more than {cfg.min_improvement}"))
                steps.append(record)
                break
        if len(kept_idx) == cfg.max_members and len(kept_idx) < len(members):
            steps.append({"stopped": True, "reason": f"reached selection.max_members = {cfg.max_members}"})
    weights = fit_blend_weights(member_probs[kept_idx], votes)
    kept = [members[i] for i in kept_idx]
    blend_kl = metrics.kaggle_kl(targets, blend(member_probs[kept_idx], weights))
    logger.info("kept %d of %d members (%s); blend OOF KL %.4f", len(kept), len(members), ", ".join(kept), blend_kl)
    return {"method": cfg.method, "correlation_penalty": cfg.correlation_penalty,
            "correlation_threshold": cfg.correlation_threshold, "kept": kept, "weights": dict(zip(kept, map(float, weights))),
            "blend_kl": blend_kl, "member_kl": member_kl, "correlation": corr_record, "steps": steps,
            "dropped": [m for m in members if m not in kept]}
