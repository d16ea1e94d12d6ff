"""A fold killed with SIGKILL and resumed is one MLflow run, every metric step logged once."""
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from hms_core import status
from mlflow_runs import metric_steps, search_runs
from test_fold import _write_store

CHILD = Path(__file__).with_name("fold_tracking_child.py")


@pytest.mark.slow
def test_killed_and_resumed_fold_is_one_run_under_one_parent(tmp_path):
    index, folds = _write_store(tmp_path / "batch_0000.zarr")
    folds.to_csv(tmp_path / "folds.csv", index=False)
    run = tmp_path / "run"
    status.start_run(run / "status" / "run.json")
    args = [sys.executable, str(CHILD), str(tmp_path / "batch_0000.zarr"), str(tmp_path / "folds.csv")]
    env = {**os.environ, "HMS_TEST_KILL_AT_STEP": "5", "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(args, cwd=run, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    env.pop("HMS_TEST_KILL_AT_STEP")
    resumed = subprocess.run(args, cwd=run, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = json.loads(resumed.stdout.strip().splitlines()[-1])

    runs = search_runs(run)
    assert len(runs) == 2, runs[["tags.mlflow.runName", "status"]]
    child = runs[runs["tags.mlflow.runName"] == "train_resnet1d_gru_fold1"].iloc[0]
    parent = runs[runs["run_id"] != child["run_id"]].iloc[0]
    assert child["tags.mlflow.parentRunId"] == parent["run_id"]
    assert child["status"] == "FINISHED" and child["tags.resumed"] == "true"
    assert child["metrics.kl_all"] == pytest.approx(metrics["kl_all"])
    assert child["params.training.epochs"] == "2" and child["params.training.two_stage.enabled"] == "False"
    assert child["params.fold"] == "1" and child["params.model_kwargs.widths"] == "[8, 16]"
    history = torch.load(run / "w.pth", weights_only=True)["history"]
    assert metric_steps(run, child["run_id"], "train_loss") == [h["step"] for h in history]
    assert history[0]["step"] < 4 < 5 < history[-1]["step"]  # step 4 was redone after the kill
    assert metric_steps(run, child["run_id"], "running_train_loss") == list(range(1, history[-1]["step"] + 1))
    for key in [c.removeprefix("metrics.") for c in runs.columns if c.startswith("metrics.")]:
        steps = Counter(metric_steps(run, child["run_id"], key))
        assert max(steps.values()) == 1, f"{key} logged twice at a step: {steps}"

