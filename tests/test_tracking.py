"""Experiment tracking: runs read back through mlflow.search_runs, one parent per workflow run,
resumable runs, rank 0 only, failures that only warn, and no MLflow at all with backend none."""
import json
import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from hms_core import status, tracking
from hms_core.config import from_mapping
from hms_core.errors import ConfigError
from hms_core.hashing import sha256_file
from hms_core.train.data import ArrayDataset
from hms_core.train.engine import fit
from hms_core.train.engine_config import EngineConfig
from hms_core.train.losses import kl_loss
from mlflow_runs import metric_steps, search_runs

torch.set_num_threads(1)
MLFLOW = {"backend": "mlflow"}


def _fit(checkpoint_dir, tracker, epochs=2):
    rng = np.random.default_rng(0)
    data = ArrayDataset(x=rng.normal(size=(32, 8)).astype(np.float32),
                        target=rng.dirichlet(np.ones(6), size=32).astype(np.float32))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 6))

    def loss_fn(m, batch):
        return kl_loss(m(batch["x"]), batch["target"]), {}

    def eval_fn(m):
        return {"val_kl": float(kl_loss(m(data.arrays["x"]), data.arrays["target"]))}

    cfg = EngineConfig(epochs=epochs, batch_size=8, lr=1e-2, progress=False, seed=1)
    return fit(model, loss_fn=loss_fn, train_data=data, eval_fn=eval_fn, cfg=cfg,
               checkpoint_dir=checkpoint_dir, run_key="tracking-test", tracker=tracker)


@pytest.mark.slow
def test_backend_none_imports_no_mlflow(tmp_path):
    code = textwrap.dedent("""
        import sys
        from hms_core import tracking
        import hms_core.config.sections, hms_core.train.fold, hms_core.foundation.pretrain
        t = tracking.open_job({"backend": "none"}, "job", state_dir="ckpt", params={"a": 1})
        t.log_metrics({"loss": 1.0}, step=1)
        t.finish()
        print(sorted(m for m in sys.modules if m.split(".")[0] == "mlflow"))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
    assert not (tmp_path / "mlruns.db").exists() and not (tmp_path / "ckpt").exists()


@pytest.mark.slow
def test_tracking_opens_no_socket_and_turns_telemetry_off(tmp_path):
    code = textwrap.dedent("""
        import socket
        attempts = []
        def refuse(self, address):
            attempts.append(address)
            raise OSError("no network in this test")
        socket.socket.connect = refuse
        from hms_core import tracking
        with tracking.open_job({"backend": "mlflow"}, "job", state_dir="ckpt", params={"a": 1}) as t:
            t.log_metrics({"loss": 1.0}, step=1)
        from mlflow.telemetry.utils import is_telemetry_disabled
        print(t.active, is_telemetry_disabled(), attempts)
    """)
    # Outside pytest and CI, as a user's job runs: MLflow would not turn telemetry off itself.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS")}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "True True []"


def test_fit_logs_curves_params_and_tags_under_the_workflow_parent(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status.start_run(tmp_path / "status" / "run.json")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.sha256").write_text("abc  data/raw/train.csv\n")
    params = {"training": {"lr": 0.01, "two_stage": {"enabled": True}}, "fold": 1}
    with tracking.open_job(MLFLOW, "train_mlp_fold1", state_dir="ckpt", params=params) as tracker:
        result = _fit("ckpt", tracker)
        tracker.log_metrics({"kl_all": 0.5, "best_epoch": None}, step=0)
    runs = search_runs(tmp_path)
    assert len(runs) == 2
    child = runs[runs["tags.mlflow.runName"] == "train_mlp_fold1"].iloc[0]
    parent = runs[runs["run_id"] == child["tags.mlflow.parentRunId"]].iloc[0]
    assert parent["tags.mlflow.runName"].startswith("workflow ")
    assert child["status"] == "FINISHED"
    assert child["params.training.lr"] == "0.01" and child["params.training.two_stage.enabled"] == "True"
    assert child["tags.config_hash"] == tracking.config_hash(params)
    assert child["tags.data_manifest_sha256"] == sha256_file(tmp_path / "data" / "manifest.sha256")
    assert child["metrics.kl_all"] == 0.5
    assert child["metrics.val_kl"] == pytest.approx(result.history[-1]["val_kl"])
    assert metric_steps(tmp_path, child["run_id"], "train_loss") == [4, 8]  # one point per epoch
    assert metric_steps(tmp_path, child["run_id"], "running_train_loss")[0] == 1
    assert json.loads((tmp_path / "ckpt" / tracking.RUN_ID_FILE).read_text())["run_id"] == child["run_id"]


def test_a_resumed_job_appends_to_its_run_and_logs_no_step_twice(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with tracking.open_job(MLFLOW, "job", state_dir="ckpt", params={"lr": 1}) as tracker:
        _fit("ckpt", tracker, epochs=1)
    first = tracker.run_id
    # The rerun (a resume of a finished run) reopens the run; epoch 2 appends to it.
    with tracking.open_job(MLFLOW, "job", state_dir="ckpt", params={"lr": 1}) as tracker:
        tracker.log_metrics({"train_loss": 9.0}, step=4)  # already logged at step 4: skipped
        tracker.log_metrics({"train_loss": 1.0}, step=8)
    assert tracker.run_id == first
    assert metric_steps(tmp_path, first, "train_loss") == [4, 8]
    # Another config is another run, under the same parent.
    with tracking.open_job(MLFLOW, "job", state_dir="ckpt", params={"lr": 2}) as other:
        pass
    assert other.run_id != first
    runs = search_runs(tmp_path)
    assert len(runs) == 3 and runs["tags.mlflow.parentRunId"].dropna().nunique() == 1
    assert runs.set_index("run_id").loc[first, "tags.resumed"] == "true"


@pytest.mark.slow
def test_concurrent_jobs_find_one_parent_and_a_new_workflow_run_gets_another(tmp_path):
    status.start_run(tmp_path / "status" / "run.json")
    code = textwrap.dedent("""
        import sys
        from hms_core import tracking
        job = sys.argv[1]
        with tracking.open_job({"backend": "mlflow"}, job, state_dir=f"ckpt/{job}") as t:
            for step in range(1, 31):
                t.log_metrics({"loss": 1.0 / step}, step=step)
        print(t.active)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, f"job{i}"], cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(3)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and out.strip() == "True", err[-2000:]
    status.start_run(tmp_path / "status" / "run.json")  # the next `snakemake` invocation
    with tracking.open_job(MLFLOW, "job3", state_dir=tmp_path / "ckpt" / "job3", workdir=tmp_path):
        pass
    runs = search_runs(tmp_path)
    children = runs[runs["tags.job"].notna()]
    parents = runs[runs["tags.job"].isna()]
    assert sorted(children["tags.job"]) == ["job0", "job1", "job2", "job3"]
    assert len(parents) == 2
    per_parent = children.groupby("tags.mlflow.parentRunId")["tags.job"].apply(sorted).to_dict()
    assert sorted(per_parent.values()) == [["job0", "job1", "job2"], ["job3"]]
    for run_id in children[children["tags.job"] != "job3"]["run_id"]:
        assert metric_steps(tmp_path, run_id, "loss") == list(range(1, 31))


@pytest.mark.parametrize("store", ["broken_db", "unwritable_uri"])
def test_a_store_that_fails_to_open_warns_and_training_goes_on(tmp_path, monkeypatch, caplog, store):
    monkeypatch.chdir(tmp_path)
    cfg = dict(MLFLOW)
    if store == "broken_db":
        (tmp_path / "mlruns.db").write_bytes(b"this is not an sqlite database" * 100)
    else:
        (tmp_path / "a_file").write_text("not a folder")  # unwritable even for root
        cfg["uri"] = f"sqlite:///{tmp_path / 'a_file' / 'mlruns.db'}"
    with caplog.at_level(logging.WARNING, logger="hms_core.tracking"):
        tracker = tracking.open_job(cfg, "job", state_dir="ckpt")
        result = _fit("ckpt", tracker)
    assert not tracker.active and result.global_step == 8
    warnings = [r for r in caplog.records if r.name == "hms_core.tracking"]
    assert len(warnings) == 1 and "experiment tracking of job is off" in warnings[0].getMessage()


def test_mlflow_raising_mid_run_warns_once_then_stops_tracking(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    tracker = tracking.open_job(MLFLOW, "job", state_dir="ckpt")
    assert tracker.active

    def fail(*args, **kwargs):
        raise RuntimeError("database disk image is malformed")

    monkeypatch.setattr(tracker.client, "log_batch", fail)
    with caplog.at_level(logging.WARNING, logger="hms_core.tracking"):
        with tracker:
            result = _fit("ckpt", tracker)
    assert not tracker.active and result.global_step == 8
    warnings = [r for r in caplog.records if r.name == "hms_core.tracking"]
    assert len(warnings) == 1 and "malformed" in warnings[0].getMessage()


def test_only_rank_0_tracks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not tracking.open_job(MLFLOW, "job", state_dir="ckpt", rank=1).active
    monkeypatch.setenv("RANK", "2")  # torchrun's
    assert not tracking.open_job(MLFLOW, "job", state_dir="ckpt").active
    assert not (tmp_path / "mlruns.db").exists()


def test_tracking_config_names_the_allowed_backends():
    assert from_mapping(tracking.TrackingConfig, None, "tracking").backend == "mlflow"
    with pytest.raises(ConfigError, match=r"tracking.backend.*'wandb'.*mlflow.*none"):
        from_mapping(tracking.TrackingConfig, {"backend": "wandb"}, "tracking")


def test_numeric_leaves_and_flatten():
    assert tracking.numeric_leaves({"a": {"kl": 0.5, "ok": True, "name": "x"}, "n": 3}) == {
        "a.kl": 0.5, "n": 3.0}
    assert tracking.flatten({"t": {"lr": 0.1, "sizes": [1, 2]}, "empty": {}}) == {
        "t.lr": "0.1", "t.sizes": "[1, 2]", "empty": "{}"}
