"""Child for the multi-process tests: a tiny window classifier trained with the engine.

Run in one process (``train(...)``) or under torchrun (``python -m dist_child CKPT_DIR OUT``,
started by ``launch_torchrun(..., module="dist_child")``). Validation is sharded across the
ranks and gathered, as in ``fold.train_fold``. Each rank saves ``OUT.rank<r>.pt``.

``--kill-at-step K`` installs an ``on_step_end`` hook that SIGKILLs the whole job after
global step K (rank 0 kills the torchrun agent first); env HMS_TEST_SLOW_STEP_S adds a
pause per step; HMS_TEST_PROGRESS names a file that rank 0 appends one line to per step;
HMS_TEST_MICRO_BATCH sets ``micro_batch_size``.
"""
import argparse
import os
import signal
import time

import numpy as np
import pandas as pd
import torch
from torch import nn

from hms_core import contract
from hms_core.metrics import kaggle_kl
from hms_core.train import distributed
from hms_core.train.data import InMemorySource, WindowDataset
from hms_core.train.engine import fit
from hms_core.train.engine_config import EngineConfig
from hms_core.train.losses import kl_loss

N_TRAIN, N_VAL, N_IN = 64, 21, 12
CFG = dict(epochs=3, batch_size=8, lr=3e-3, ema_decay=0.5, checkpoint_every_steps=5, seed=3,
           progress=False, device="cpu")
STEPS_TOTAL = CFG["epochs"] * (N_TRAIN // CFG["batch_size"])


def _source(n: int, seed: int) -> InMemorySource:
    rng = np.random.default_rng(seed)
    votes = np.stack([rng.multinomial(int(k), np.ones(6) / 6) for k in rng.integers(1, 16, n)])
    index = pd.DataFrame({"label_id": np.arange(n), "eeg_id": np.arange(n),
                          "patient_id": np.arange(n)})
    for j, col in enumerate(contract.VOTE_COLUMNS):
        index[col] = votes[:, j]
    x = rng.normal(size=(n, N_IN)).astype(np.float32) + votes[:, :2].repeat(N_IN // 2, 1) / 8
    return InMemorySource(index, {"x": x})


def kill_job_at_step(step: int):
    """An ``on_step_end`` hook: every rank SIGKILLs itself after global step ``step``.

    Under torchrun rank 0 first kills the agent (its parent), so the launcher sees the
    whole job killed and no rank is restarted.
    """
    def hook(state):
        if state.global_step != step:
            return
        if distributed.is_rank0() and os.environ.get("TORCHELASTIC_RUN_ID"):
            os.kill(os.getppid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
    return hook


def train(checkpoint_dir, out_file, kill_at=None) -> dict:
    """Train (resuming from ``checkpoint_dir``); save and return this rank's final state."""
    torch.set_num_threads(1)
    train_set = WindowDataset(_source(N_TRAIN, 0), np.arange(N_TRAIN), ["x"])
    val_set = WindowDataset(_source(N_VAL, 1), np.arange(N_VAL), ["x"])
    torch.manual_seed(11)
    model = nn.Sequential(nn.Linear(N_IN, 16), nn.Tanh(), nn.Linear(16, 6))  # no dropout/BN
    slow = float(os.environ.get("HMS_TEST_SLOW_STEP_S", "0"))
    progress = os.environ.get("HMS_TEST_PROGRESS")

    def loss_fn(m, batch):
        if slow:
            time.sleep(slow)
        if progress and distributed.is_rank0():
            with open(progress, "a") as f:
                f.write("step\n")
        loss = kl_loss(m(batch["x"]), batch["target"])
        return loss, {"kl": loss.detach()}

    def eval_fn(m):
        info = distributed.current()
        start, stop = distributed.shard_bounds(N_VAL, info.rank, info.world_size)
        shard = val_set.__getitems__(list(range(start, stop)))
        logp = torch.log_softmax(m(shard["x"]), dim=1).numpy()
        probs = np.exp(distributed.gather_rows(logp))
        return {"val_kl": kaggle_kl(val_set.targets.numpy(), probs)}

    result = fit(model, loss_fn=loss_fn, train_data=train_set, eval_fn=eval_fn,
                 cfg=EngineConfig(**CFG, micro_batch_size=int(os.environ.get("HMS_TEST_MICRO_BATCH", "0"))),
                 checkpoint_dir=checkpoint_dir, run_key="dist-child-v1",
                 on_step_end=[kill_job_at_step(kill_at)] if kill_at else [])
    last = torch.load(os.path.join(checkpoint_dir, "last.pt"), weights_only=True)
    out = {"returned": result.model.state_dict(), "model": last["model"], "ema": last["ema"],
           "optimizer": last["optimizer"], "history": result.history,
           "resumed_from": result.resumed_from_step,
           "world_size": distributed.current().world_size}
    info = distributed.current()
    torch.save(out, f"{out_file}.rank{info.rank}.pt")
    if info.is_rank0:
        torch.save(out, out_file)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint_dir")
    parser.add_argument("out_file")
    parser.add_argument("--kill-at-step", type=int)
    args = parser.parse_args()
    distributed.init_from_env("cpu")
    try:
        train(args.checkpoint_dir, args.out_file, args.kill_at_step)
    finally:
        distributed.destroy()
