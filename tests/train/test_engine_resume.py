"""The engine's resume guarantees: a child process is killed (SIGKILL) or stopped (SIGTERM)
mid-epoch, the run is resumed here, and it must end bit-identical to an uninterrupted run."""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import engine_child  # noqa: E402

CHILD = Path(__file__).with_name("engine_child.py")
STEPS_PER_EPOCH = 70 // 8
STEPS_TOTAL = 2 * STEPS_PER_EPOCH + 2 * 4  # two epochs of 70 rows, two of the >= 10-vote rows


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("reference")
    engine_child.train(d / "ckpt", d / "ref.pt")
    return torch.load(d / "ref.pt", weights_only=True)


def _child(ckpt_dir, out, *, env_extra=None, progress=None, kill_at=None, wait=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    args = [sys.executable, str(CHILD), str(ckpt_dir), str(out)] + ([str(progress)] if progress else [])
    args += ["--kill-at-step", str(kill_at)] if kill_at else []
    if not wait:
        return subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)


def _assert_same_run(a, b):
    for part in ("model", "ema", "returned"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    for pid, st in a["optimizer"]["state"].items():
        for name, value in st.items():
            assert torch.equal(value, b["optimizer"]["state"][pid][name]), (pid, name)
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    assert [h["val_kl"] for h in a["history"]] == [h["val_kl"] for h in b["history"]]


def test_sigkill_mid_epoch_resume_is_bit_identical(tmp_path, reference):
    kill_at = random.Random().randint(4, STEPS_TOTAL - 2)
    if kill_at % 3 == 0:
        kill_at += 1  # land between step checkpoints (every 3 steps), so work is redone
    killed = _child(tmp_path / "ckpt", tmp_path / "run.pt", kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, (kill_at, killed.stderr)
    assert not (tmp_path / "run.pt").exists()
    engine_child.train(tmp_path / "ckpt", tmp_path / "run.pt")
    resumed = torch.load(tmp_path / "run.pt", weights_only=True)
    assert resumed["resumed_from"] is not None and 0 < resumed["resumed_from"] < kill_at
    _assert_same_run(reference, resumed)


def test_sigterm_writes_emergency_checkpoint_then_exits_nonzero(tmp_path, reference):
    progress = tmp_path / "progress.txt"
    proc = _child(tmp_path / "ckpt", tmp_path / "run.pt", env_extra={"HMS_TEST_SLOW_STEP_S": "0.05"},
                  progress=progress, wait=False)
    deadline = time.time() + 60
    while time.time() < deadline:  # wait until training has made a few steps
        if progress.exists() and len(progress.read_text().splitlines()) >= 5:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "emergency checkpoint" in stderr
    last = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)
    assert not last["finished"] and 5 <= last["global_step"] < STEPS_TOTAL
    engine_child.train(tmp_path / "ckpt", tmp_path / "run.pt")
    resumed = torch.load(tmp_path / "run.pt", weights_only=True)
    assert resumed["resumed_from"] == last["global_step"]
    _assert_same_run(reference, resumed)
