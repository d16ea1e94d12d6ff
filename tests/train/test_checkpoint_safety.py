"""Damaged, missing and busy checkpoints: never a silent restart, never the wrong weights."""
import errno
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hms_core.errors import DiskFullError
from hms_core.train import checkpoint as ckpt
from hms_core.train.data import ArrayDataset
from hms_core.train.engine import fit
from hms_core.train.engine_config import EngineConfig
from hms_core.train.losses import kl_loss

torch.set_num_threads(1)
CHILD = Path(__file__).with_name("engine_child.py")


def _data(n=32):
    rng = np.random.default_rng(0)
    return ArrayDataset(x=rng.normal(size=(n, 8)).astype(np.float32),
                        target=rng.dirichlet(np.ones(6), size=n).astype(np.float32))


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 6))


def _loss(model, batch):
    return kl_loss(model(batch["x"]), batch["target"]), {}


def _eval(data):
    return lambda m: {"val_kl": float(kl_loss(m(data.arrays["x"]), data.arrays["target"]))}


def _fit(directory, **kw):
    data = _data()
    cfg = EngineConfig(**{**dict(epochs=3, batch_size=8, lr=1e-2, progress=False, seed=1,
                                 checkpoint_every_steps=2), **kw.pop("cfg", {})})
    return fit(_mlp(), loss_fn=kw.pop("loss_fn", _loss), train_data=data, eval_fn=_eval(data),
               cfg=cfg, checkpoint_dir=directory, run_key="safety", **kw)


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


class _Crash(Exception):
    pass


def _crash_at(step):
    def hook(state):
        if state.global_step == step:
            raise _Crash(step)
    return hook


def test_each_save_keeps_the_previous_checkpoint(tmp_path):
    ckpt.save_checkpoint(tmp_path / "last.pt", {"run_key": "k", "n": 1}, keep_previous=True)
    assert not (tmp_path / "last.prev.pt").exists()
    ckpt.save_checkpoint(tmp_path / "last.pt", {"run_key": "k", "n": 2}, keep_previous=True)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["n"] == 2
    assert torch.load(tmp_path / "last.prev.pt", weights_only=True)["n"] == 1


def test_missing_checkpoint_starts_fresh(tmp_path):
    assert ckpt.resume_checkpoint(tmp_path / "last.pt", run_key="k") is None


@pytest.mark.parametrize("damage", ["empty", "truncated", "eio"])
def test_unreadable_last_is_moved_aside_and_the_previous_is_used(tmp_path, monkeypatch, caplog,
                                                                damage):
    last = tmp_path / "last.pt"
    ckpt.save_checkpoint(last, {"run_key": "k", "n": 1}, keep_previous=True)
    ckpt.save_checkpoint(last, {"run_key": "k", "n": 2}, keep_previous=True)
    if damage == "empty":
        last.write_bytes(b"")
    elif damage == "truncated":
        last.write_bytes(last.read_bytes()[:100])
    else:
        real_load = torch.load

        def load(f, *args, **kwargs):
            if Path(f) == last:
                raise OSError(errno.EIO, os.strerror(errno.EIO), str(f))
            return real_load(f, *args, **kwargs)

        monkeypatch.setattr(torch, "load", load)
    with caplog.at_level(logging.WARNING):
        state = ckpt.resume_checkpoint(last, run_key="k")
    assert state is not None and state["n"] == 1
    aside = list(tmp_path.glob("last.pt.corrupt-*"))
    assert len(aside) == 1 and not last.exists()
    assert "unreadable" in caplog.text and str(aside[0]) in caplog.text


def test_no_usable_checkpoint_fails_and_says_how_to_start_fresh(tmp_path):
    last = tmp_path / "last.pt"
    last.write_bytes(b"not a checkpoint")
    for _ in range(2):  # the retry must not start from zero either
        with pytest.raises(ckpt.CheckpointError, match="no usable checkpoint") as err:
            ckpt.resume_checkpoint(last, run_key="k")
        assert str(tmp_path) in str(err.value) and "delete" in str(err.value)
    assert len(list(tmp_path.glob("last.pt.corrupt-*"))) == 1


def test_engine_resumes_from_the_previous_checkpoint_when_last_is_damaged(tmp_path):
    reference = _fit(tmp_path / "ref")
    with pytest.raises(_Crash):
        _fit(tmp_path / "run", on_step_end=[_crash_at(7)])  # checkpoints at steps 2, 4, 6
    (tmp_path / "run" / "last.pt").write_bytes(b"")  # the disk lost the step-6 checkpoint
    resumed = _fit(tmp_path / "run")
    assert resumed.resumed_from_step == 4
    assert _same_weights(reference.model, resumed.model)
    assert [h["val_kl"] for h in resumed.history] == [h["val_kl"] for h in reference.history]
    assert list((tmp_path / "run").glob("last.pt.corrupt-*"))


def test_unreadable_best_is_an_error_not_the_last_epoch(tmp_path):
    first = _fit(tmp_path)
    assert first.best_epoch is not None
    (tmp_path / "best.pt").write_bytes(b"\0" * 64)
    with pytest.raises(ckpt.CheckpointError, match="best.pt"):
        _fit(tmp_path)
    (tmp_path / "best.pt").unlink()
    with pytest.raises(ckpt.CheckpointError, match="best.pt"):
        _fit(tmp_path)


def test_full_disk_while_checkpointing_fails_clearly_and_a_rerun_finishes(tmp_path, monkeypatch):
    reference = _fit(tmp_path / "ref")
    real_write = os.write

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fill_disk_at(step):
        def hook(state):
            if state.global_step == step:
                monkeypatch.setattr(os, "write", full)
        return hook

    with pytest.raises(DiskFullError, match="last.pt.*free") as err:
        _fit(tmp_path / "run", on_step_end=[fill_disk_at(5)])
    assert err.value.free_bytes >= 0 and err.value.needed_bytes > 0
    monkeypatch.setattr(os, "write", real_write)  # space freed
    kept = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert kept["global_step"] == 4
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")) == []
    resumed = _fit(tmp_path / "run")
    assert resumed.resumed_from_step == 4 and _same_weights(reference.model, resumed.model)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_nonfinite_losses_are_skipped_then_fail_naming_the_run(tmp_path, caplog, precision):
    data = _data()
    poisoned = {3}

    def loss_fn(model, batch):
        loss = kl_loss(model(batch["x"]), batch["target"])
        return (loss * float("nan") if loss_fn.calls in poisoned else loss), {}

    def counting(model, batch):
        out = loss_fn(model, batch)
        loss_fn.calls += 1
        return out

    loss_fn.calls = 0
    with caplog.at_level(logging.WARNING):
        result = _fit(tmp_path / "skip", loss_fn=counting,
                      cfg={"max_nonfinite_steps": 2, "precision": precision})
    assert "non-finite loss" in caplog.text and "skipped" in caplog.text
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    assert all(np.isfinite(h["train_loss"]) for h in result.history)

    loss_fn.calls, poisoned = 0, set(range(5, 100))
    with pytest.raises(FloatingPointError, match=r"model=net.*fold=3.*epoch 2.*step 7") as err:
        fit(_mlp(), loss_fn=counting, train_data=data, checkpoint_dir=tmp_path / "fail",
            run_key="nan", status_job="train_net_fold3", status_fields={"model": "net", "fold": 3},
            cfg=EngineConfig(epochs=3, batch_size=8, progress=False, max_nonfinite_steps=2,
                             precision=precision))
    assert "2 consecutive" in str(err.value)


def _lock_holder(directory, ready):
    code = ("import sys, time; from hms_core.train import checkpoint as c\n"
            "with c.exclusive_lock(sys.argv[1]):\n"
            "    open(sys.argv[2], 'w').close(); time.sleep(120)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", code, str(directory), str(ready)], env=env)
    deadline = time.time() + 60
    while not ready.exists():
        assert proc.poll() is None and time.time() < deadline, "lock holder did not start"
        time.sleep(0.05)
    return proc


def test_a_second_copy_of_the_job_fails_at_once_naming_the_holder(tmp_path):
    directory = tmp_path / "ckpt"
    holder = _lock_holder(directory, tmp_path / "ready")
    try:
        started = time.time()
        with pytest.raises(ckpt.CheckpointLockedError) as err:
            _fit(directory)
        assert time.time() - started < 30
        message = str(err.value)
        assert str(directory) in message and f"pid {holder.pid}" in message
        assert socket.gethostname() in message
        assert not (directory / "last.pt").exists(), "the second copy must not touch the folder"
    finally:
        holder.kill()
        holder.wait()
    assert _fit(directory).global_step == 12  # released when its holder died (even by SIGKILL)


def test_best_written_by_a_killed_later_epoch_does_not_replace_the_best(tmp_path):
    """Killed between best.pt and last.pt of an epoch, then (on a GPU, not bit-exact) that epoch
    came out worse on the rerun: best.pt holds the killed epoch, best.prev.pt the real best."""
    first = _fit(tmp_path)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    later = {**best, "epoch": first.best_epoch + 1,
             "state_dict": {k: torch.zeros_like(v) for k, v in best["state_dict"].items()}}
    ckpt.save_checkpoint(tmp_path / "best.pt", later, keep_previous=True)
    again = _fit(tmp_path)
    assert again.best_epoch == first.best_epoch and _same_weights(first.model, again.model)
