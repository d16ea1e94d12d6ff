"""Run state <-> checkpoint: everything exact resume needs survives the round trip."""
import logging

import numpy as np
import torch
from torch import nn

from hms_core.train import checkpoint as ckpt
from hms_core.train.engine_config import EngineConfig
from hms_core.train.state import EpochTotals, RunState, restore_rank_rng

torch.set_num_threads(1)


def _trained():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(4, 3)).pow(2).mean().backward()
    optimizer.step()
    return model, optimizer


def test_epoch_totals_weight_by_rows():
    totals = EpochTotals()
    totals.add(1.0, {"kl": torch.tensor(2.0)}, 3)
    totals.add(3.0, {"kl": 0.0}, 1)
    assert (totals.loss_sum, totals.n) == (6.0, 4)
    assert totals.mean_loss() == 1.5 and totals.mean_logs() == {"kl": 1.5}
    assert EpochTotals().mean_loss() == 0.0


def test_state_round_trips_through_a_checkpoint_file(tmp_path):
    model, optimizer = _trained()
    ema = nn.Linear(3, 2)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    state = RunState.fresh(7)
    state.totals.add(0.5, {"kl": 0.25}, 8)
    state.totals.seconds = 2.0
    state.epoch, state.step_in_epoch, state.global_step = 1, 3, 9
    state.best_metric, state.best_epoch, state.history = 0.75, 0, [{"epoch": 0, "val_kl": 0.75}]
    rng = ckpt.capture_rng_state()
    saved = state.to_checkpoint(run_key="k", model=model, optimizer=optimizer, scaler=scaler,
                                ema_model=ema, cfg=EngineConfig(), total_steps=20,
                                rng_per_rank=[rng], seconds_in_epoch=1.5,
                                lr_segments=[{"first_step": 0, "steps": 20, "peak_lr": 1e-3}])
    assert saved["accum"]["seconds"] == 3.5 and state.totals.seconds == 2.0
    assert saved["scheduler"] == {"name": "cosine", "global_step": 9, "total_steps": 20,
                                  "segments": [{"first_step": 0, "steps": 20, "peak_lr": 1e-3}]}
    assert saved["engine_config"]["lr"] == EngineConfig().lr and saved["world_size"] == 1
    ckpt.save_checkpoint(tmp_path / "last.pt", saved)

    loaded = ckpt.load_checkpoint(tmp_path / "last.pt", run_key="k")
    model2 = nn.Linear(3, 2)
    optimizer2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    ema2 = nn.Linear(3, 2)
    back = RunState.from_checkpoint(loaded, model=model2, optimizer=optimizer2, scaler=scaler,
                                    ema_model=ema2)
    assert (back.epoch, back.step_in_epoch, back.global_step, back.resumed_from) == (1, 3, 9, 9)
    assert (back.best_metric, back.best_epoch, back.history) == (0.75, 0, state.history)
    assert back.totals == EpochTotals(loss_sum=4.0, n=8, logs={"kl": 2.0}, seconds=3.5)
    assert torch.equal(back.order_state, state.order_state) and not back.finished
    for a, b in ((model, model2), (ema, ema2)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                     b.state_dict().values()))
    for pid, st in optimizer.state_dict()["state"].items():
        for name, value in st.items():
            assert torch.equal(value, optimizer2.state_dict()["state"][pid][name])


def test_next_epoch_resets_the_position_and_sums():
    state = RunState.fresh(0)
    state.step_in_epoch, state.global_step = 5, 5
    state.totals.add(1.0, {}, 8)
    after = torch.Generator().manual_seed(1).get_state()
    state.next_epoch(after, epochs=2)
    assert (state.epoch, state.step_in_epoch, state.global_step) == (1, 0, 5)
    assert state.totals == EpochTotals() and torch.equal(state.order_state, after)
    assert not state.finished
    state.next_epoch(after, epochs=2)
    assert state.finished


def _rng_of(seed):
    ckpt.seed_rngs(seed)
    return ckpt.capture_rng_state()


def test_rng_is_restored_per_rank_and_reseeded_when_the_world_size_changed(caplog):
    per_rank = [_rng_of(1), _rng_of(2)]
    two_ranks = {"rng": per_rank[0], "rng_per_rank": per_rank, "global_step": 4}
    restore_rank_rng(two_ranks, rank=1, world_size=2, seed=0)
    assert torch.equal(torch.get_rng_state(), per_rank[1]["torch"])
    with caplog.at_level(logging.WARNING):
        restore_rank_rng(two_ranks, rank=0, world_size=1, seed=0)
    assert torch.equal(torch.get_rng_state(), per_rank[0]["torch"])
    assert "written by 2 process(es), resumed by 1" in caplog.text
    restore_rank_rng(two_ranks, rank=1, world_size=3, seed=0)
    reseeded = torch.get_rng_state()
    assert not any(torch.equal(reseeded, r["torch"]) for r in per_rank)
    torch.manual_seed(0 + 1 + 7919 * 4)
    assert torch.equal(reseeded, torch.get_rng_state())


def test_checkpoint_without_per_rank_rng_restores_its_single_state():
    one = _rng_of(5)
    _rng_of(6)
    restore_rank_rng({"rng": one, "global_step": 0}, rank=0, world_size=1, seed=0)
    assert torch.equal(torch.get_rng_state(), one["torch"])
    assert np.random.get_state()[2] == int(one["numpy"][2])
