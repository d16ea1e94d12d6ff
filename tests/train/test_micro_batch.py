"""Micro-batches and the fall-back on CUDA out-of-memory, with the OOM injected on the CPU."""
import logging

import numpy as np
import pytest
import torch
from torch import nn

from hms_core.errors import ConfigError
from hms_core.train.data import ArrayDataset
from hms_core.train.engine import fit
from hms_core.train.engine_config import EngineConfig
from hms_core.train.losses import kl_loss
from hms_core.train.micro import TrainingOutOfMemory, slice_batch

torch.set_num_threads(1)


class OomAbove(nn.Module):
    """Wraps a model; its forward raises torch.OutOfMemoryError on batches above ``limit``
    rows, ``times`` times (-1: always), from its ``after``-th such batch on."""

    def __init__(self, limit, times=1, after=0):
        super().__init__()
        torch.manual_seed(0)
        self.inner = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 6))
        self.limit, self.times, self.after = limit, times, after
        self.big_batches, self.raised = 0, 0

    def forward(self, x):
        if x.shape[0] > self.limit:
            self.big_batches += 1
            if self.big_batches > self.after and self.times != 0:
                self.times -= 1
                self.raised += 1
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x)


def _data(n=48):
    rng = np.random.default_rng(0)
    return ArrayDataset(x=rng.normal(size=(n, 8)).astype(np.float32),
                        target=rng.dirichlet(np.ones(6), size=n).astype(np.float32))


def _loss(model, batch):  # augmentation on the global RNG before the forward that fails
    x = batch["x"] + 0.1 * torch.randn_like(batch["x"])
    return kl_loss(model(x), batch["target"]), {"n": torch.tensor(1.0)}


def _cfg(**kw):
    base = dict(epochs=2, batch_size=8, lr=1e-2, progress=False, seed=1, ema_decay=0.9,
                select_best=False)
    return EngineConfig(**{**base, **kw})


def _fit(model, tmp_path, name, **kw):
    return fit(model, loss_fn=_loss, train_data=_data(), cfg=_cfg(**kw),
               checkpoint_dir=tmp_path / name, run_key="micro",
               status_fields={"model": "mlp", "fold": 3})


def _weights(result):
    return list(result.model.state_dict().values())


def test_oom_on_first_step_equals_a_run_with_the_halved_micro_batch(tmp_path, caplog):
    reference = _fit(OomAbove(limit=8, times=0), tmp_path, "ref", micro_batch_size=4)
    model = OomAbove(limit=4)
    with caplog.at_level(logging.WARNING):
        fell_back = _fit(model, tmp_path, "oom")
    assert model.raised == 1 and model.big_batches == 1  # never tried 8 rows again
    assert "CUDA out of memory with 8 rows per pass" in caplog.text
    assert "micro-batches of 4 rows" in caplog.text and "model=mlp, fold=3" in caplog.text
    assert fell_back.global_step == reference.global_step == 12  # one step (and EMA) per batch
    for a, b in zip(_weights(fell_back), _weights(reference)):
        assert torch.allclose(a, b, rtol=0, atol=0)
    assert [h["train_loss"] for h in fell_back.history] == [h["train_loss"] for h in reference.history]
    saved = torch.load(tmp_path / "oom" / "last.pt", weights_only=True)
    assert saved["micro_batch_size"] == 4


def _plain(model):  # no dropout, no noise: random draws per slice are not those of one pass
    model.inner[2].p = 0.0
    return model


def _plain_loss(model, batch):
    return kl_loss(model(batch["x"]), batch["target"]), {}


def _fit_plain(model, tmp_path, name, **kw):
    return fit(_plain(model), loss_fn=_plain_loss, train_data=_data(), cfg=_cfg(**kw),
               checkpoint_dir=tmp_path / name, run_key="plain")


def test_micro_batches_give_the_batch_mean_gradient(tmp_path):
    whole = _fit_plain(OomAbove(limit=8, times=0), tmp_path, "whole")
    quarters = _fit_plain(OomAbove(limit=8, times=0), tmp_path, "quarters", micro_batch_size=2)
    for a, b in zip(_weights(whole), _weights(quarters)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert whole.history[-1]["train_loss"] == pytest.approx(quarters.history[-1]["train_loss"])


def test_oom_mid_run_falls_back_for_the_rest_of_it(tmp_path):
    reference = _fit_plain(OomAbove(limit=8, times=0), tmp_path, "ref", micro_batch_size=4)
    model = OomAbove(limit=4, after=3)  # steps 1-3 with 8 rows, the 4th runs out of memory
    fell_back = _fit_plain(model, tmp_path, "oom")
    assert model.raised == 1 and model.big_batches == 4
    assert fell_back.global_step == 12
    for a, b in zip(_weights(fell_back), _weights(reference)):  # 3 steps differ by rounding
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_oom_at_one_row_names_model_fold_and_batch_size(tmp_path):
    with pytest.raises(TrainingOutOfMemory, match=r"model=mlp, fold=3.*batch_size 8: CUDA out of memory with 1 row per pass") as err:
        _fit(OomAbove(limit=0, times=-1), tmp_path, "floor")
    assert isinstance(err.value, torch.OutOfMemoryError)
    assert isinstance(err.value.__cause__, torch.OutOfMemoryError)


class _Stop(Exception):
    pass


def test_resume_starts_with_the_remembered_micro_batch(tmp_path, caplog):
    reference = _fit(OomAbove(limit=8, times=0), tmp_path, "ref", micro_batch_size=4)

    def stop_at_5(state):
        if state.global_step == 5:
            raise _Stop

    first = OomAbove(limit=4)
    with pytest.raises(_Stop):
        fit(first, loss_fn=_loss, train_data=_data(), cfg=_cfg(checkpoint_every_steps=2),
            checkpoint_dir=tmp_path / "run", run_key="micro", on_step_end=[stop_at_5])
    assert first.raised == 1
    second = OomAbove(limit=4, times=-1)  # would run out of memory on every 8-row batch
    with caplog.at_level(logging.WARNING):
        resumed = fit(second, loss_fn=_loss, train_data=_data(), cfg=_cfg(checkpoint_every_steps=2),
                      checkpoint_dir=tmp_path / "run", run_key="micro")
    assert resumed.resumed_from_step == 4
    assert second.big_batches == 0 and "resuming with micro-batches of 4 rows" in caplog.text
    for a, b in zip(_weights(resumed), _weights(reference)):
        assert torch.allclose(a, b, rtol=0, atol=0)


def test_slice_batch_and_config_check():
    batch = {"x": torch.arange(6).reshape(3, 2), "ids": ["a", "b", "c"],
             "pair": (torch.arange(3), torch.arange(3) * 2)}
    part = slice_batch(batch, 1, 3)
    assert part["x"].tolist() == [[2, 3], [4, 5]] and part["ids"] == ["b", "c"]
    assert part["pair"][1].tolist() == [2, 4]
    with pytest.raises(ConfigError, match="micro_batch_size"):
        EngineConfig(micro_batch_size=-1).validate()
