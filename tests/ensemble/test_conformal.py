"""Split conformal prediction sets: the quantile, coverage on draws from a known model, MAPIE."""
from __future__ import annotations

import numpy as np
import pytest

from hms_core.config import from_mapping
from hms_core.contract import CLASSES
from hms_core.ensemble.config import ConformalConfig, EnsembleConfig
from hms_core.ensemble.conformal import (conformal_threshold, fit_conformal, lac_scores, majority_class,
                                         prediction_sets, set_columns)
from hms_core.errors import ConfigError


def _sharpen(p: np.ndarray, power: float) -> np.ndarray:
    q = p ** power
    return q / q.sum(axis=1, keepdims=True)


def _draw(rng: np.random.Generator, n: int, *, power: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A model's probabilities and labels drawn from the true distribution; ``power`` != 1
    makes the model miscalibrated (over-confident above 1)."""
    true = rng.dirichlet(np.full(len(CLASSES), 0.7), size=n)
    labels = (rng.random((n, 1)) > true.cumsum(axis=1)).sum(axis=1)
    return _sharpen(true, power), np.minimum(labels, len(CLASSES) - 1)


def test_threshold_on_a_hand_computed_case():
    scores = np.array([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.05])  # n = 10
    # alpha 0.25: rank ceil(11 * 0.75) = ceil(8.25) = 9 -> sorted[8] = 0.8
    assert conformal_threshold(scores, 0.25) == 0.8
    # alpha 0.1 on the first 9: rank ceil(10 * 0.9) = 9 (exactly; float rounding must not make it 10) -> max
    assert conformal_threshold(scores[:9], 0.1) == 0.9
    # alpha 0.5: rank ceil(11 * 0.5) = 6 -> sorted[5] = 0.5
    assert conformal_threshold(scores, 0.5) == 0.5
    # 3 rows cannot support alpha 0.1 (rank 4 > 3): every class in every set
    assert conformal_threshold(scores[:3], 0.1) == 1.0
    assert prediction_sets(np.full((2, 6), 1 / 6), 1.0).all()
    with pytest.raises(ValueError, match="alpha: must be in"):
        conformal_threshold(scores, 1.0)


def test_sets_scores_and_labels_by_hand():
    probs = np.array([[0.50, 0.30, 0.10, 0.05, 0.03, 0.02],
                      [0.20, 0.20, 0.20, 0.20, 0.10, 0.10],
                      [0.05, 0.05, 0.05, 0.05, 0.05, 0.75]])
    # threshold 0.75: a class is in the set when p >= 0.25
    sets = prediction_sets(probs, 0.75)
    assert sets[0].tolist() == [True, True, False, False, False, False]
    assert sets[1].tolist() == [True, False, False, False, False, False]  # empty -> the top class (first of ties)
    assert sets[2].tolist() == [False] * 5 + [True]
    assert not prediction_sets(probs, 0.75, nonempty=False)[1].any()
    cols = set_columns(probs, 0.75)
    assert cols["prediction_set"].tolist() == ["Seizure|LPD", "Seizure", "Other"]
    assert cols["set_size"].tolist() == [2, 1, 1]
    assert np.allclose(lac_scores(probs, np.array([1, 4, 5])), [0.7, 0.9, 0.25])
    # Majority class: argmax of the votes, ties to the first tied class in CLASSES order.
    votes = np.array([[0, 3, 3, 0, 0, 1], [1, 0, 0, 0, 0, 1], [0, 0, 0, 0, 2, 0]])
    assert majority_class(votes).tolist() == [1, 0, 4]


@pytest.mark.parametrize("power", [1.0, 3.0, 0.4])  # calibrated, over-confident, under-confident
def test_coverage_on_held_out_draws_from_a_known_model(power):
    """Mean coverage over many calibration/test splits is within [1 - a, 1 - a + 1/(n+1)],
    up to the Monte Carlo error, however miscalibrated the model is."""
    rng = np.random.default_rng(int(power * 10))
    alpha, n_cal, n_test, trials = 0.1, 500, 500, 200
    coverage, sizes = [], []
    for _ in range(trials):
        p_cal, y_cal = _draw(rng, n_cal, power=power)
        p_test, y_test = _draw(rng, n_test, power=power)
        q = conformal_threshold(lac_scores(p_cal, y_cal), alpha)
        sets = prediction_sets(p_test, q, nonempty=False)
        coverage.append(sets[np.arange(n_test), y_test].mean())
        sizes.append(sets.sum(1).mean())
    mean = float(np.mean(coverage))
    se = float(np.std(coverage) / np.sqrt(trials))  # about 0.0015
    assert 1 - alpha - 4 * se <= mean <= 1 - alpha + 1 / (n_cal + 1) + 4 * se, (mean, se)
    assert 1 < np.mean(sizes) < len(CLASSES)  # informative, not trivial


def test_fit_conformal_cross_fits_by_fold():
    rng = np.random.default_rng(7)
    n = 4000
    probs, labels = _draw(rng, n, power=2.0)
    votes = np.zeros((n, 6), dtype=np.int64)
    votes[np.arange(n), labels] = np.where(rng.random(n) < 0.5, 3, 12)  # half the rows >= 10 votes
    fold = rng.permutation(np.arange(n) % 5)
    rec = fit_conformal(probs, votes, fold, ConformalConfig(alpha=0.2))
    assert rec["method"] == "lac" and rec["n_calibration"] == n and rec["target_coverage"] == pytest.approx(0.8)
    assert rec["threshold"] == conformal_threshold(lac_scores(probs, labels), 0.2)
    assert rec["probability_cutoff"] == pytest.approx(1 - rec["threshold"])
    for k, t in rec["fold_thresholds"].items():  # each fitted without its fold
        assert t == conformal_threshold(lac_scores(probs[fold != k], labels[fold != k]), 0.2)
    all_rows, high = rec["cross_fitted"]["all"], rec["cross_fitted"]["high_vote"]
    assert all_rows["n"] == n and high["n"] == int((votes.sum(1) >= 10).sum())
    # One draw of 4000 rows: binomial sd about 0.0063.
    assert abs(all_rows["coverage"] - 0.8) < 0.03 and abs(high["coverage"] - 0.8) < 0.04
    assert sum(all_rows["set_size_counts"].values()) == n
    assert all_rows["mean_set_size"] == pytest.approx(
        sum(k * c for k, c in all_rows["set_size_counts"].items()) / n)


def test_same_sets_as_mapie():
    """MAPIE's split conformal LAC on the same calibration rows gives the same sets."""
    pytest.importorskip("mapie")
    from mapie.classification import SplitConformalClassifier
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Given(ClassifierMixin, BaseEstimator):  # a fitted "model" whose features are its probabilities
        def fit(self, X, y):
            self.classes_, self.n_features_in_ = np.arange(len(CLASSES)), len(CLASSES)
            return self

        def predict_proba(self, X):
            return np.asarray(X)

        def predict(self, X):
            return np.asarray(X).argmax(axis=1)

    rng = np.random.default_rng(3)
    p_cal, y_cal = _draw(rng, 777, power=1.5)
    p_test, _ = _draw(rng, 2000, power=1.5)
    for alpha in (0.05, 0.1, 0.3):
        mapie = SplitConformalClassifier(Given().fit(p_cal, y_cal), confidence_level=1 - alpha,
                                         conformity_score="lac", prefit=True)
        mapie.conformalize(p_cal, y_cal)
        _, theirs = mapie.predict_set(p_test)
        ours = prediction_sets(p_test, conformal_threshold(lac_scores(p_cal, y_cal), alpha), nonempty=False)
        assert (ours == theirs[:, :, 0]).all()


def test_config():
    assert from_mapping(EnsembleConfig, None, "ensemble").conformal.alpha == 0.1
    assert from_mapping(EnsembleConfig, {"conformal": {"alpha": 0.05}}, "ensemble").conformal.alpha == 0.05
    for bad in (0, 1, 1.5):
        with pytest.raises(ConfigError, match=rf"ensemble.conformal.alpha: must be in \(0, 1\), got {bad}"):
            from_mapping(EnsembleConfig, {"conformal": {"alpha": bad}}, "ensemble")
    with pytest.raises(ConfigError, match=r"ensemble.conformal.alpha: expected a number, got True"):
        from_mapping(EnsembleConfig, {"conformal": {"alpha": True}}, "ensemble")
