"""The transfer study's verdict: pretraining helps only by more than the seed spread, in every
mode, with enough folds and seeds."""
from __future__ import annotations

import numpy as np
import pytest

from hms_core.foundation.verdict import conclusion, summarise, verdict


def _runs(gap: dict[str, float], *, folds=(0, 1), seeds=3, noise=0.01, fold_shift=0.3):
    """Runs where random - pretrained KL = ``gap[mode]``; folds differ by ``fold_shift``."""
    rng = np.random.default_rng(0)
    runs = []
    for fold in folds:
        for repeat in range(seeds):
            for mode, delta in gap.items():
                base = 1.0 + fold_shift * fold
                for init, kl in (("random", base + delta), ("pretrained", base)):
                    runs.append({"val_fold": fold, "repeat": repeat, "mode": mode, "init": init,
                                 "label_fraction": 0.1, "val_kl": kl + noise * rng.standard_normal(),
                                 "val_kl_prior": 1.2 + fold_shift * fold, "n_train_windows": 30,
                                 "n_train_patients": 3})
    return runs


def test_pretraining_helps_when_the_margin_beats_the_seed_spread_in_every_mode():
    summary = summarise(_runs({"frozen": 0.1, "finetune": 0.1}))
    cell = summary["frozen"]["0.1"]
    assert cell["n_folds"] == 2 and cell["n_seeds"] == 3 and cell["paired_diff"]["n"] == 6
    # the fold shift (0.3) inflates the overall sd but not the seed spread
    assert cell["pretrained"]["std"] > 0.1 > cell["pretrained"]["seed_std"]
    decision = verdict(summary, 0.1, ["frozen", "finetune"])
    assert decision["pretraining_helps"] is True and decision["enough_runs"]
    evidence = decision["modes"]["frozen"]
    assert evidence["margin"] == pytest.approx(cell["random"]["mean"] - cell["pretrained"]["mean"])
    assert evidence["spread"] == max(cell["random"]["seed_std"], cell["pretrained"]["seed_std"])
    assert "pretraining_helps: true at fraction 0.1" in conclusion(summary, decision)


def test_pretraining_does_not_help_within_the_spread_or_in_one_mode_or_with_few_runs():
    within = verdict(summarise(_runs({"frozen": 0.005, "finetune": 0.1}, noise=0.05)), 0.1, ["frozen", "finetune"])
    assert within["pretraining_helps"] is False and within["modes"]["frozen"]["helps"] is False
    one_fold = verdict(summarise(_runs({"frozen": 0.1}, folds=(0,))), 0.1, ["frozen"])
    assert one_fold["modes"]["frozen"]["helps"] and not one_fold["enough_runs"]
    assert one_fold["pretraining_helps"] is False
    two_seeds = verdict(summarise(_runs({"frozen": 0.1}, seeds=2)), 0.1, ["frozen"])
    assert two_seeds["pretraining_helps"] is False and two_seeds["modes"]["frozen"]["n_seeds"] == 2
    missing = verdict(summarise(_runs({"frozen": 0.1})), 0.1, ["frozen", "finetune"])
    assert missing["pretraining_helps"] is False and "no paired runs" in missing["modes"]["finetune"]["reason"]
