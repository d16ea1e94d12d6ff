"""Child process for the resume test: ``python pretrain_child.py STORE OUT CKPT CFG_JSON``.

When the parent sets ``HMS_TEST_KILL_AT_STEP=k``, an ``on_step_end`` hook SIGKILLs this
process after global step k (before that step's checkpoint).
"""
from __future__ import annotations

import json
import os
import signal
import sys

import torch

from hms_core.foundation.pretrain import pretrain

if __name__ == "__main__":
    torch.set_num_threads(1)
    store, out_path, checkpoint_dir, cfg_json = sys.argv[1:5]
    kill_at = int(os.environ.get("HMS_TEST_KILL_AT_STEP", "0"))

    def kill_at_step(state) -> None:
        if state.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    metrics = pretrain([store], json.loads(cfg_json), out_path=out_path, checkpoint_dir=checkpoint_dir,
                       on_step_end=[kill_at_step] if kill_at else [])
    print(json.dumps({"resumed_from_step": metrics["resumed_from_step"], "global_step": metrics["global_step"]}))
