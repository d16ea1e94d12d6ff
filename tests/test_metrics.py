"""Kaggle KL, NLL, ECE and score_predictions against hand-computed values."""
import math

import numpy as np
import pytest

from hms_core.metrics import expected_calibration_error, kaggle_kl, nll, score_predictions


def _rows(*rows):
    return np.array([list(r) + [0.0] * (6 - len(r)) for r in rows], dtype=np.float64)


def test_kaggle_kl_hand_values():
    targets = _rows([1.0], [0.5, 0.5])
    probs = _rows([0.5, 0.1, 0.1, 0.1, 0.1, 0.1], [0.25, 0.25, 0.5])
    # row 1: 1*log(1/0.5); row 2: 2 * 0.5*log(0.5/0.25); cells with y == 0 count 0.
    assert kaggle_kl(targets, probs) == pytest.approx(math.log(2), abs=1e-12)


def test_kaggle_kl_clips_zero_predictions():
    targets = _rows([1.0])
    probs = _rows([0.0, 1.0])
    assert kaggle_kl(targets, probs) == pytest.approx(-math.log(1e-15), rel=1e-12)  # 34.5388


def test_kaggle_kl_perfect_is_zero_and_rejects_bad_shapes():
    t = _rows([0.2, 0.3, 0.5])
    assert kaggle_kl(t, t) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="n_rows, 6"):
        kaggle_kl(t[:, :5], t[:, :5])


def test_nll_and_ece_hand_values():
    targets = _rows([1.0], [0.5, 0.5])
    probs = _rows([0.5, 0.1, 0.1, 0.1, 0.1, 0.1], [0.25, 0.25, 0.5])
    assert nll(targets, probs) == pytest.approx((math.log(2) + math.log(4)) / 2)
    probs = _rows([0.9, 0.02, 0.02, 0.02, 0.02, 0.02], [0.2, 0.1, 0.3, 0.2, 0.1, 0.1])
    # bin 9: correct, conf 0.9 -> 0.1; bin 3: wrong, conf 0.3 -> 0.3; each half the rows.
    assert expected_calibration_error(targets, probs) == pytest.approx(0.2)


def test_score_predictions_hand_values():
    votes = _rows([3], [4, 4], [0, 0, 0, 0, 0, 12])  # only the last has >= 10 votes
    probs = _rows([0.5, 0.5], [0.5, 0.5], [0.0, 0.0, 0.0, 0.0, 0.75, 0.25])
    s = score_predictions(votes, probs)
    assert s["n_rows"] == 3 and s["n_high_vote"] == 1
    assert s["kl_high_vote"] == pytest.approx(math.log(4))
    assert s["acc_high_vote"] == 0.0  # argmax grda vs majority other
    assert s["kl_all"] == pytest.approx((math.log(2) + 0.0 + math.log(4)) / 3)
