"""Scores of predicted class distributions: Kaggle's KL first, high-vote accuracy second."""
from __future__ import annotations

import numpy as np

from hms_core import contract

KAGGLE_EPS = 1e-15


def kaggle_kl(targets: np.ndarray, probs: np.ndarray) -> float:
    """The competition's KL divergence, in nats (lower is better).

    Parameters
    ----------
    targets : np.ndarray
        ``(n_rows, 6)`` vote distributions (rows sum to 1).
    probs : np.ndarray
        ``(n_rows, 6)`` predicted probabilities.

    Returns
    -------
    float
        Mean over rows of ``sum_c y * log(y / p)`` with ``p`` clipped to
        ``[1e-15, 1 - 1e-15]`` and cells where ``y == 0`` counted as 0.
    """
    y = np.asarray(targets, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), KAGGLE_EPS, 1 - KAGGLE_EPS)
    _check_shapes(y, p)
    safe_y = np.where(y > 0, y, 1.0)
    cells = np.where(y > 0, y * np.log(safe_y / p), 0.0)
    return float(cells.sum(axis=1).mean())


def nll(targets: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the majority class (argmax of ``targets``), in nats."""
    y = np.asarray(targets, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), KAGGLE_EPS, 1.0)
    _check_shapes(y, p)
    picked = p[np.arange(len(y)), y.argmax(axis=1)]
    return float(-np.log(picked).mean())


def expected_calibration_error(targets: np.ndarray, probs: np.ndarray, *, n_bins: int = 10) -> float:
    """ECE of the top-class confidence against majority-class correctness.

    Rows are binned by their maximum predicted probability into ``n_bins`` equal-width
    bins on [0, 1]; ECE is the row-weighted mean of |accuracy - mean confidence| per bin.
    """
    y = np.asarray(targets, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    _check_shapes(y, p)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y.argmax(axis=1)).astype(np.float64)
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def score_predictions(votes: np.ndarray, probs: np.ndarray) -> dict[str, float | int]:
    """Scores of ``probs`` against raw ``votes`` ``(n_rows, 6)``.

    Returns
    -------
    dict
        ``kl_all`` (Kaggle KL on all rows), ``kl_high_vote`` and ``acc_high_vote``
        (rows with at least ``contract.HIGH_VOTE_THRESHOLD`` votes; accuracy of the argmax
        against the vote majority; NaN when there are none), ``n_rows``, ``n_high_vote``.
    """
    votes = np.asarray(votes, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    _check_shapes(votes, probs)
    targets = contract.votes_to_targets(votes)
    high = votes.sum(axis=1) >= contract.HIGH_VOTE_THRESHOLD
    n_high = int(high.sum())
    return {
        "kl_all": kaggle_kl(targets, probs),
        "kl_high_vote": kaggle_kl(targets[high], probs[high]) if n_high else float("nan"),
        "acc_high_vote": float((probs[high].argmax(1) == votes[high].argmax(1)).mean())
        if n_high else float("nan"),
        "n_rows": int(len(votes)),
        "n_high_vote": n_high,
    }


def _check_shapes(a: np.ndarray, b: np.ndarray) -> None:
    if a.ndim != 2 or a.shape != b.shape or a.shape[1] != contract.N_CLASSES:
        raise ValueError(f"expected two (n_rows, {contract.N_CLASSES}) arrays, "
                         f"got {a.shape} and {b.shape}")
