"""Child process for the resume test: ``python pretrain_child.py STORE OUT CKPT CFG_JSON``.

The parent sets ``HMS_TEST_KILL_AT_STEP`` to have the engine SIGKILL this process.
"""
from __future__ import annotations

import json
import sys

import torch

from hms_core.foundation.pretrain import pretrain

if __name__ == "__main__":
    torch.set_num_threads(1)
    store, out_path, checkpoint_dir, cfg_json = sys.argv[1:5]
    metrics = pretrain([store], json.loads(cfg_json), out_path=out_path, checkpoint_dir=checkpoint_dir, threads=1)
    print(json.dumps({"resumed_from_step": metrics["resumed_from_step"], "global_step": metrics["global_step"]}))
