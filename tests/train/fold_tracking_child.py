"""Child of the tracking resume test: ``python fold_tracking_child.py STORE FOLDS_CSV``, run in
the run folder; prints the metrics of ``train_fold`` as JSON.

When the parent sets ``HMS_TEST_KILL_AT_STEP=k``, an ``on_step_end`` hook handed to the
engine's ``fit`` SIGKILLs this process after global step k (before that step's checkpoint).
"""
from __future__ import annotations

import functools
import json
import os
import signal
import sys

import torch

from hms_core.train import engine, fold

CFG = {
    # Checkpoints at epoch ends only, and the loss tracked at every step: a kill in epoch 2
    # makes the resumed job redo steps whose loss the killed one had already logged.
    "training": {"epochs": 2, "batch_size": 4, "lr": 1e-3, "progress": False, "eval_batch_size": 16,
                 "checkpoint_every_steps": 0, "status_every_s": 0, "two_stage": {"enabled": False}},
    "models": {"resnet1d_gru": {"enabled": True, "stem_width": 8, "widths": [8, 16],
                                "strides": [4, 4], "gru_hidden": 8, "input_downsample": 4}},
    "tracking": {"backend": "mlflow"},
}

if __name__ == "__main__":
    torch.set_num_threads(1)
    store, folds_csv = sys.argv[1:3]
    kill_at = int(os.environ.get("HMS_TEST_KILL_AT_STEP", "0"))
    if kill_at:
        def kill_at_step(state) -> None:
            if state.global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

        fold.fit = functools.partial(engine.fit, on_step_end=[kill_at_step])
    metrics = fold.train_fold([store], folds_csv, "resnet1d_gru", 1, CFG, weights_out="w.pth",
                              oof_out="oof.parquet",
                              checkpoint_dir="models/checkpoints/train_resnet1d_gru_fold1",
                              status_path="status/run.json")
    print(json.dumps(metrics))
