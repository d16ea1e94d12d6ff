"""The meta-learner never resumes a checkpoint trained on other members' OOF predictions."""
import numpy as np
import torch

from hms_core.config import from_mapping
from hms_core.ensemble.config import EnsembleConfig
from hms_core.ensemble.nested import train_meta_learners
from hms_core.ensemble.oof import load_oof


def test_retrained_member_predictions_restart_the_meta_learners(synthetic_oof, tmp_path):
    cfg = from_mapping(EnsembleConfig, {"meta_learner": {"epochs": 2, "batch_size": 128}}, "ensemble")
    oof = load_oof(synthetic_oof["paths"]).subset(["alpha", "beta"])
    w = np.array([0.5, 0.5])
    train_meta_learners(oof, w, cfg, checkpoint_dir=tmp_path / "ckpt")
    # alpha retrained upstream (e.g. on re-preprocessed stores): same rows, other predictions
    oof.logp = oof.logp.copy()
    oof.logp[0] = np.log(np.clip(np.exp(oof.logp[0]) * 0.5 + 1 / 12, 1e-6, None))
    again, logits_again, _ = train_meta_learners(oof, w, cfg, checkpoint_dir=tmp_path / "ckpt")
    fresh, logits_fresh, _ = train_meta_learners(oof, w, cfg, checkpoint_dir=tmp_path / "fresh")
    assert np.array_equal(logits_again, logits_fresh)
    for a, b in zip(again, fresh):
        assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
