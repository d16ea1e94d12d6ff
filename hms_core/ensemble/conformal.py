"""Split conformal prediction sets on the ensemble's calibrated out-of-fold probabilities.

A window's prediction set holds every class that could be the experts' majority class at
miscoverage ``alpha``: with the threshold ``q`` fitted here the set contains the majority class
with probability at least ``1 - alpha``, marginally over windows exchangeable with the
calibration rows (split conformal prediction; Angelopoulos & Bates 2021, "A gentle
introduction to conformal prediction").

Score
    LAC (Sadinle, Lei & Wasserman 2019), ``s = 1 - p_y``: class j is in the set iff
    ``1 - p_j <= q``, i.e. ``p_j >= 1 - q``. Chosen over APS because among set-valued
    classifiers with the same marginal coverage LAC has the smallest expected set size, which
    is what the sets are for (the smallest set that holds the majority with the asked
    probability). APS buys coverage that is more even across easy and ambiguous windows with
    larger sets; with LAC confident windows are over-covered and ambiguous ones (the
    LPD / GPD / LRDA / GRDA boundaries) under-covered, so the guarantee is marginal only.
Threshold
    The ``ceil((n + 1)(1 - alpha))``-th smallest of the n calibration scores (the
    ``ceil((n + 1)(1 - alpha)) / n`` empirical quantile). When that rank exceeds n (too few
    rows for ``alpha``) the threshold is 1 and every set holds all six classes.
Empty sets
    LAC returns an empty set when no class reaches ``1 - q``; :func:`prediction_sets` then adds
    the top class. A superset of a conformal set covers at least as often, so the guarantee
    stands, and every window gets a label.
Majority class
    The argmax of a row's votes; a tie goes to the first tied class in ``CLASSES`` order
    (Seizure, LPD, GPD, LRDA, GRDA, Other), as :func:`numpy.argmax` and the accuracy in
    :mod:`hms_core.metrics` break it.
Calibration rows
    :func:`fit_conformal` takes the deployed candidate's calibrated, cross-fitted OOF
    probabilities (:func:`hms_core.ensemble.build.build_ensemble`), on which no fitted part of
    the ensemble saw its own row. The deployed threshold is fitted on all of them; the
    reported coverage is cross-fitted: fold k's sets use a threshold fitted on the other folds.
    The deployed head (fold meta-learners averaged, temperature fitted on all rows) is close
    to, not identical with, what produced the OOF probabilities, so coverage at prediction
    time is as good as that approximation and the exchangeability of the new windows.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from hms_core.contract import CLASSES, HIGH_VOTE_THRESHOLD, N_CLASSES
from hms_core.ensemble.config import ConformalConfig

logger = logging.getLogger(__name__)

METHOD = "lac"
SET_COLUMNS = ("prediction_set", "set_size")
SET_SEPARATOR = "|"


def _check_probs(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != N_CLASSES:
        raise ValueError(f"probs: expected shape (n, {N_CLASSES}), got {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("probs: contains non-finite values")
    return p


def majority_class(votes: np.ndarray) -> np.ndarray:
    """The experts' majority class of each row, ``(n,)`` indices into ``CLASSES``.

    The argmax of the ``(n, 6)`` vote counts; ties go to the first tied class in ``CLASSES``
    order.
    """
    votes = np.asarray(votes)
    if votes.ndim != 2 or votes.shape[1] != N_CLASSES:
        raise ValueError(f"votes: expected shape (n, {N_CLASSES}), got {votes.shape}")
    return votes.argmax(axis=1)


def lac_scores(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Nonconformity scores ``1 - p[label]``, ``(n,)``, of ``probs (n, 6)`` at class ``labels (n,)``."""
    p = _check_probs(probs)
    labels = np.asarray(labels, dtype=np.int64)
    return 1.0 - p[np.arange(len(p)), labels]


def conformal_threshold(scores: np.ndarray, alpha: float) -> float:
    """The split conformal quantile of the calibration ``scores`` at miscoverage ``alpha``.

    Parameters
    ----------
    scores : np.ndarray
        ``(n,)`` calibration scores (:func:`lac_scores`), each in [0, 1].
    alpha : float
        Miscoverage rate in (0, 1).

    Returns
    -------
    float
        The ``ceil((n + 1)(1 - alpha))``-th smallest score; 1.0 (every class in every set)
        when that rank exceeds n.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: must be in (0, 1), got {alpha!r}")
    n = len(scores)
    if n == 0:
        raise ValueError("scores: no calibration rows")
    rank = math.ceil(round((n + 1) * (1 - alpha), 9))  # round: 0.9 * 10 must give 9, not 10
    if rank > n:
        logger.warning("%d calibration rows are too few for alpha = %g (need >= %d): every prediction "
                       "set holds all classes", n, alpha, math.ceil(1 / alpha - 1))
        return 1.0
    return float(np.partition(scores, rank - 1)[rank - 1])


def prediction_sets(probs: np.ndarray, threshold: float, *, nonempty: bool = True) -> np.ndarray:
    """The conformal set of each row: classes whose score ``1 - p`` is at most ``threshold``.

    Parameters
    ----------
    probs : np.ndarray
        ``(n, 6)`` probabilities in ``CLASSES`` order (rows sum to 1).
    threshold : float
        The fitted quantile in [0, 1] (:func:`conformal_threshold`; the ``threshold`` of the
        ``hms.conformal`` metadata of ``ensemble.onnx``).
    nonempty : bool
        Add the top class to a row whose set would be empty (default True).

    Returns
    -------
    np.ndarray
        ``(n, 6)`` bool, True where the class is in the row's set.
    """
    p = _check_probs(probs)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold: must be in [0, 1], got {threshold!r}")
    sets = (1.0 - p) <= threshold
    if nonempty:
        sets[np.arange(len(p)), p.argmax(axis=1)] = True
    return sets


def set_columns(probs: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """The ``prediction_set`` (class names joined by "|", ``CLASSES`` order, e.g.
    ``"Seizure|LPD"``) and ``set_size`` columns of ``probs (n, 6)`` at ``threshold``."""
    sets = prediction_sets(probs, threshold)
    names = np.array([SET_SEPARATOR.join(c for c, keep in zip(CLASSES, row) if keep) for row in sets],
                     dtype=object)
    return {"prediction_set": names, "set_size": sets.sum(axis=1).astype(np.int64)}


def set_figures(sets: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Coverage (share of rows whose set holds ``labels``), mean set size and the count of
    each set size (1-6) of ``sets (n, 6)``; None figures when n is 0."""
    n = len(labels)
    if n == 0:
        return {"n": 0, "coverage": None, "mean_set_size": None, "set_size_counts": {}}
    sizes = sets.sum(axis=1)
    return {"n": int(n), "coverage": float(sets[np.arange(n), labels].mean()),
            "mean_set_size": float(sizes.mean()),
            "set_size_counts": {int(k): int((sizes == k).sum()) for k in range(1, N_CLASSES + 1)}}


def fit_conformal(probs: np.ndarray, votes: np.ndarray, fold: np.ndarray,
                  cfg: ConformalConfig) -> dict[str, Any]:
    """Fit the deployed threshold and measure coverage and set size, cross-fitted by fold.

    Parameters
    ----------
    probs : np.ndarray
        ``(n_rows, 6)`` calibrated out-of-fold probabilities of the deployed candidate.
    votes : np.ndarray
        ``(n_rows, 6)`` vote counts (the majority class is the label).
    fold : np.ndarray
        ``(n_rows,)`` outer fold of each row.
    cfg : ConformalConfig
        ``ensemble.conformal``.

    Returns
    -------
    dict
        ``method`` ("lac"), ``alpha``, ``target_coverage``, ``threshold`` (fitted on all rows:
        the deployed one), ``probability_cutoff`` (``1 - threshold``: a class is in the set when
        its probability reaches it), ``n_calibration``, ``fold_thresholds`` (each fitted
        without its fold) and ``cross_fitted``: ``all`` and ``high_vote`` (rows with >= 10
        votes) :func:`set_figures`, fold k's sets made with fold k's threshold (in-sample when
        there is one fold; ``note`` says so).
    """
    p = _check_probs(probs)
    labels = majority_class(votes)
    scores = lac_scores(p, labels)
    threshold = conformal_threshold(scores, cfg.alpha)
    folds = np.unique(fold)
    sets = np.zeros(p.shape, dtype=bool)
    fold_thresholds = {}
    for k in folds:
        held = fold == k
        fit_rows = ~held if len(folds) > 1 else held
        fold_thresholds[int(k)] = conformal_threshold(scores[fit_rows], cfg.alpha)
        sets[held] = prediction_sets(p[held], fold_thresholds[int(k)])
    high = np.asarray(votes).sum(axis=1) >= HIGH_VOTE_THRESHOLD
    record = {"method": METHOD, "alpha": float(cfg.alpha), "target_coverage": float(1 - cfg.alpha),
              "threshold": threshold, "probability_cutoff": float(1 - threshold), "n_calibration": int(len(p)),
              "fold_thresholds": fold_thresholds,
              "cross_fitted": {"all": set_figures(sets, labels), "high_vote": set_figures(sets[high], labels[high])}}
    if len(folds) == 1:
        record["note"] = "one fold: the coverage figures are in-sample"
    cov = record["cross_fitted"]["all"]
    logger.info("conformal sets (LAC, alpha %g): threshold %.4f (p >= %.4f); cross-fitted coverage %.3f, "
                "mean set size %.2f on %d rows", cfg.alpha, threshold, 1 - threshold, cov["coverage"],
                cov["mean_set_size"], cov["n"])
    return record
