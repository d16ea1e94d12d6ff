"""Child process for the resume tests: trains a tiny model with the engine and saves its final state.

Usage: python engine_child.py CHECKPOINT_DIR OUT_FILE [PROGRESS_FILE] [--kill-at-step K]
``--kill-at-step K`` installs an ``on_step_end`` hook that SIGKILLs this process after
global step K (before that step's checkpoint); env HMS_TEST_SLOW_STEP_S adds a pause per
step (for the SIGTERM test), PROGRESS_FILE gets one line per training step.
"""
import argparse
import os
import signal
import time

import numpy as np
import torch
from torch import nn

from hms_core.train.data import ArrayDataset
from hms_core.train.engine import fit
from hms_core.train.engine_config import EngineConfig
from hms_core.train.losses import kl_loss


def kill_at_step(step: int):
    """An ``on_step_end`` hook: SIGKILL this process once global step ``step`` is done."""
    def hook(state):
        if state.global_step == step:
            os.kill(os.getpid(), signal.SIGKILL)
    return hook


def train(checkpoint_dir, out_file, progress_file=None, kill_at=None) -> None:
    """Train the tiny model (resuming from ``checkpoint_dir``) and save its final state."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(70, 8)).astype(np.float32)
    target = rng.dirichlet(np.ones(6), size=70).astype(np.float32)
    n_votes = rng.integers(1, 20, size=70).astype(np.float32)
    data = ArrayDataset(x=x, target=target, n_votes=n_votes)
    torch.manual_seed(123)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 6))
    slow = float(os.environ.get("HMS_TEST_SLOW_STEP_S", "0"))

    def loss_fn(m, batch):
        if slow:
            time.sleep(slow)
        if progress_file and m.training:
            with open(progress_file, "a") as f:
                f.write("step\n")
        noisy = batch["x"] + 0.1 * torch.randn_like(batch["x"])  # augmentation on the global RNG
        loss = kl_loss(m(noisy), batch["target"])
        return loss, {"kl": loss.detach()}

    def eval_fn(m):
        with torch.no_grad():
            return {"val_kl": float(kl_loss(m(data.arrays["x"][:20]), data.arrays["target"][:20]))}

    def epoch_indices(epoch):  # two stages: all rows, then the high-vote ones
        return np.arange(70) if epoch < 2 else np.flatnonzero(n_votes >= 10)

    cfg = EngineConfig(epochs=4, batch_size=8, lr=3e-3, ema_decay=0.9, checkpoint_every_steps=3,
                       seed=7, progress=False)
    result = fit(model, loss_fn=loss_fn, train_data=data, eval_fn=eval_fn, cfg=cfg,
                 checkpoint_dir=checkpoint_dir, run_key="child-v1", epoch_indices=epoch_indices,
                 lr_restarts={2: 0.5},  # stage 2 restarts the schedule: resume must honour it
                 on_step_end=[kill_at_step(kill_at)] if kill_at else [])
    last = torch.load(os.path.join(checkpoint_dir, "last.pt"), weights_only=True)
    torch.save({"returned": result.model.state_dict(), "model": last["model"],
                "optimizer": last["optimizer"], "ema": last["ema"],
                "history": result.history, "resumed_from": result.resumed_from_step}, out_file)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint_dir")
    parser.add_argument("out_file")
    parser.add_argument("progress_file", nargs="?")
    parser.add_argument("--kill-at-step", type=int)
    args = parser.parse_args()
    train(args.checkpoint_dir, args.out_file, args.progress_file, args.kill_at_step)
