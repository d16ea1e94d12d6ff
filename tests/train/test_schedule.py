"""Training length in optimiser steps and the learning-rate schedule with restarts."""
import numpy as np
import pytest
import torch
from torch import nn

from hms_core.config import from_mapping
from hms_core.errors import ConfigError
from hms_core.train.data import ArrayDataset
from hms_core.train.engine import fit
from hms_core.train.engine_config import EngineConfig, epochs_for_steps
from hms_core.train.fold import TrainingConfig, stage_epochs
from hms_core.train.losses import kl_loss
from hms_core.train.optim import LrSchedule


def test_epochs_for_steps_rounds_up_to_whole_epochs():
    assert epochs_for_steps(30, lambda e: 10) == 3
    assert epochs_for_steps(31, lambda e: 10) == 4
    assert epochs_for_steps(12, lambda e: 10 if e < 1 else 1) == 3  # per-epoch step counts
    with pytest.raises(ConfigError, match="no optimiser step"):
        epochs_for_steps(5, lambda e: 0)


def test_restart_gives_stage_two_its_own_warmup_peak_and_decay():
    cfg = EngineConfig(lr=1e-2, warmup_frac=0.25, min_lr_frac=0.01, scheduler="cosine")
    sched = LrSchedule.from_epochs(cfg, [10, 10, 4, 4], {2: 0.5})
    assert sched.segments == ((0, 20, 1.0), (20, 8, 0.5)) and sched.total_steps == 28
    lrs = np.array([sched(s) for s in range(28)])
    assert lrs[:20].max() == pytest.approx(1e-2) and lrs[20:].max() == pytest.approx(5e-3)
    assert lrs[19] < 3e-4                              # stage 1 decays near its floor ...
    assert lrs[20] == pytest.approx(5e-3 / 2)          # ... stage 2 warms up again (2 steps)
    assert lrs[27] < 0.1 * 5e-3 and np.all(np.diff(lrs[22:]) < 0)  # and decays again
    single = LrSchedule.from_epochs(cfg, [10, 10, 4, 4])
    assert single.segments == ((0, 28, 1.0),) and single(20) > single(27)
    with pytest.raises(ConfigError, match="restarts"):
        LrSchedule.from_epochs(cfg, [10, 10], {2: 0.5})


def _fit(tmp_path, name, **kw):
    rng = np.random.default_rng(0)
    data = ArrayDataset(x=rng.normal(size=(70, 8)).astype(np.float32),
                        target=rng.dirichlet(np.ones(6), size=70).astype(np.float32))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 6))
    restarts = kw.pop("lr_restarts", None)
    cfg = from_mapping(EngineConfig, {"batch_size": 8, "lr": 1e-2, "progress": False, **kw},
                       "training")
    return fit(model, loss_fn=lambda m, b: (kl_loss(m(b["x"]), b["target"]), {}),
               train_data=data, cfg=cfg, checkpoint_dir=tmp_path / name, run_key="t",
               lr_restarts=restarts)


def test_steps_set_the_length_and_history_records_them(tmp_path):
    result = _fit(tmp_path, "steps", steps=20, epochs=99)  # 70 rows, batch 8: 8 steps an epoch
    assert len(result.history) == 3 and result.global_step == 24
    assert [h["step"] for h in result.history] == [8, 16, 24]


def test_restart_is_part_of_the_run_and_its_key(tmp_path):
    plain = _fit(tmp_path, "a", epochs=4, warmup_frac=0.0)
    restarted = _fit(tmp_path, "b", epochs=4, warmup_frac=0.0, lr_restarts={2: 0.5})
    assert plain.history[2]["lr"] < 1e-2 * 0.5 * 0.5  # one cosine: late and low
    # The restarted run's epoch 2 ends halfway down a new cosine from 5e-3.
    assert restarted.history[2]["lr"] > plain.history[2]["lr"]
    assert restarted.history[1]["lr"] < 3e-4  # stage 1 ends near its own floor
    # A checkpoint of the plain run is not resumed by the restarted run with the same key.
    again = _fit(tmp_path, "a", epochs=4, warmup_frac=0.0, lr_restarts={2: 0.5})
    assert again.resumed_from_step is None


def test_fold_stage_lengths_in_steps():
    training = from_mapping(TrainingConfig, {"batch_size": 16, "steps": 100, "two_stage": {
        "steps": 30, "lr_scale": 0.3}}, "training")
    assert stage_epochs(training, 323, 150) == (5, 4)   # 20 and 9 steps an epoch
    epochs = from_mapping(TrainingConfig, {"epochs": 6, "two_stage": {"epochs": 2}}, "training")
    assert stage_epochs(epochs, 323, 150) == (6, 2)
    off = from_mapping(TrainingConfig, {"epochs": 6, "two_stage": {"enabled": False}}, "training")
    assert stage_epochs(off, 323, 150) == (6, 0)
    with pytest.raises(ConfigError, match="lr_scale"):
        from_mapping(TrainingConfig, {"two_stage": {"lr_scale": 0}}, "training").validate()
    with pytest.raises(ConfigError, match="steps"):
        from_mapping(EngineConfig, {"steps": -1}, "training").validate()
