"""The tune stage in the DAG: tune jobs (and training inputs) only with tuning.enabled (dry runs)."""
from __future__ import annotations

from pathlib import Path

from test_workflow import planned_jobs, snakemake


def test_tune_jobs_only_when_enabled(tmp_path: Path):
    n_folds = 2  # tiny.yaml
    off = planned_jobs(tmp_path)
    assert "tune" not in off and "tuning" not in off

    on = planned_jobs(tmp_path, "--config", 'tuning={"enabled": true}')
    assert on["tune"] == off["train_fold"] > 0  # one per model and fold
    assert {k: v for k, v in on.items() if k not in ("tune", "tuning")} == off

    one = ["--config", 'tuning={"enabled": true, "models": ["resnet1d_gru"]}']
    assert planned_jobs(tmp_path, *one)["tune"] == n_folds
    # train_fold of a tuned model reads its fold's parameters; the other model does not.
    out = snakemake(tmp_path, "-n", "--forceall",
                    "models/final/resnet1d_gru_fold1.pth", "models/final/efficientnet_fold1.pth",
                    *one).stdout
    assert "models/tuning/resnet1d_gru_fold1_params.json" in out
    assert "efficientnet_fold1_params" not in out
