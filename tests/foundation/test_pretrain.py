"""Pretraining on a tiny synthetic store: loss falls, file round trip, exact resume after SIGKILL."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hms_core.config import from_mapping
from hms_core.errors import ConfigError
from hms_core.models.foundation import load_foundation
from hms_core.foundation.pretrain import PretrainConfig, pretrain, read_holdout
from hms_core.store import open_window_source

torch.set_num_threads(1)

CHILD = Path(__file__).with_name("pretrain_child.py")


def tiny_cfg(**engine) -> dict:
    return {
        "epochs": 3, "batch_size": 8, "lr": 2e-3, "progress": False, "device": "cpu",
        "model": {"dim": 16, "depth": 1, "heads": 2, "max_patches": 4},
        "objectives": {"masked": {"mask_ratio": 0.5, "target": "both"}, "temporal": {"n_future": 1}},
        "holdout_folds": None,
        **engine,
    }


@pytest.fixture(scope="module")
def pretrained(tiny_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    metrics = pretrain([tiny_store.store], tiny_cfg(), out_path=out / "enc.pth", checkpoint_dir=out / "ckpt")
    return out, metrics


def test_pretraining_loss_falls_on_every_window(pretrained, tiny_store):
    _, metrics = pretrained
    assert metrics["n_windows"] == tiny_store.n_windows  # labelled or not, every window
    first, last = metrics["first_epoch_loss"], metrics["last_epoch_loss"]
    assert set(first) == {"total", "masked", "contrastive", "temporal"}
    assert len(metrics["loss_history"]) == 3
    assert last["total"] < first["total"]
    assert last["masked"] < first["masked"]
    assert all(np.isfinite(v) for v in last.values())


def test_pretrained_file_rebuilds_the_encoder_outside_the_pipeline(pretrained):
    out, metrics = pretrained
    payload = torch.load(out / "enc.pth", weights_only=True)
    assert payload["model_kwargs"]["max_patches"] == 4
    assert payload["objectives"]["masked"]["target"] == "both"
    assert payload["metrics"]["last_epoch_loss"] == metrics["last_epoch_loss"]
    encoder = load_foundation(out / "enc.pth")
    assert encoder.n_patches == 4 and encoder.feature_dim == 16
    x = torch.randn(2, 18, encoder.n_times) * 50
    assert torch.isfinite(encoder.forward_features(x)).all()


def test_rerun_with_the_same_inputs_resumes_finished_run(pretrained, tiny_store):
    out, metrics = pretrained
    again = pretrain([tiny_store.store], tiny_cfg(), out_path=out / "enc2.pth", checkpoint_dir=out / "ckpt")
    assert again["resumed_from_step"] == metrics["global_step"]
    a = torch.load(out / "enc.pth", weights_only=True)["state_dict"]
    b = torch.load(out / "enc2.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_sigkill_is_bit_identical(pretrained, tiny_store, tmp_path):
    out, metrics = pretrained
    total_steps = metrics["global_step"]
    kill_at = int(np.random.default_rng().integers(2, total_steps))  # a random mid-run step
    cfg = json.dumps(tiny_cfg(checkpoint_every_steps=1))
    args = [sys.executable, str(CHILD), str(tiny_store.store), str(tmp_path / "enc.pth"), str(tmp_path / "ckpt"), cfg]
    env = {**os.environ, "HMS_TEST_KILL_AT_STEP": str(kill_at), "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (tmp_path / "enc.pth").exists()
    env.pop("HMS_TEST_KILL_AT_STEP")
    resumed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    report = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert report["resumed_from_step"] == kill_at - 1, f"killed at step {kill_at}"
    reference = torch.load(out / "enc.pth", weights_only=True)["state_dict"]
    final = torch.load(tmp_path / "enc.pth", weights_only=True)["state_dict"]
    different = [k for k in reference if not torch.equal(reference[k], final[k])]
    assert not different, f"killed at step {kill_at}: {different}"


class _RecordingSource:
    """A window source that records every row pretraining reads."""

    def __init__(self, source):
        self.source, self.index, self.rows_read = source, source.index, set()

    def read(self, rows, fields):
        self.rows_read.update(int(r) for r in rows)
        return self.source.read(rows, fields)


def test_pretraining_never_reads_the_held_out_fold(tiny_store, tmp_path):
    import pandas as pd

    source = _RecordingSource(open_window_source([tiny_store.store]))
    folds = pd.read_csv(tiny_store.folds_csv)
    held = set(folds.loc[folds["fold"] == 1, "patient_id"])
    patient = source.index["patient_id"].to_numpy()
    held_rows = {i for i, p in enumerate(patient) if p in held}
    assert held_rows and len(held_rows) < len(patient)
    metrics = pretrain(source, tiny_cfg(epochs=1, holdout_folds=[1]), out_path=tmp_path / "enc.pth",
                       checkpoint_dir=tmp_path / "ckpt", folds_csv=tiny_store.folds_csv)
    kept = set(range(len(patient))) - held_rows
    assert not source.rows_read & held_rows
    assert source.rows_read <= kept and len(source.rows_read) > len(kept) - 8  # the engine drops a last partial batch
    assert metrics["n_windows"] == len(patient) - len(held_rows)
    assert metrics["n_windows_excluded"] == len(held_rows)
    holdout = read_holdout(tmp_path / "enc.pth")
    assert holdout["folds"] == [1] and set(holdout["patient_ids"]) == held
    with pytest.raises(ConfigError, match=r"holdout_folds is \[0\] but no folds file"):
        pretrain(source, tiny_cfg(holdout_folds=[0]), out_path=tmp_path / "x.pth", checkpoint_dir=tmp_path / "c2")


def test_pretrain_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="pretrain: unknown key.*'epoch'"):
        from_mapping(PretrainConfig, {"epoch": 3}, "pretrain")
    with pytest.raises(ConfigError, match="pretrain.precision"):
        from_mapping(PretrainConfig, {"precision": "fp8"}, "pretrain")
    with pytest.raises(ConfigError, match="pretrain.model.dim"):
        from_mapping(PretrainConfig, {"model": {"dim": 0}}, "pretrain")
    with pytest.raises(ConfigError, match="pretrain.holdout_folds.*-1"):
        from_mapping(PretrainConfig, {"holdout_folds": [-1]}, "pretrain")
