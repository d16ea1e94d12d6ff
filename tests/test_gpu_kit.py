"""bench/gpu.sh --dry: the GPU kit runs end to end on the CPU and writes its JSON report."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STEPS = ("env", "cuda_tests", "train_resnet1d_gru", "train_efficientnet", "predict", "dag")


def _kit(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "gpu.json"
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh"), "--dry", "--out", str(out)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHON": sys.executable, **env})
    return proc, json.loads(out.read_text())


@pytest.mark.slow
def test_dry_run_covers_every_step(tmp_path):
    proc, report = _kit(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert report["dry"] and report["ok"] and tuple(report["steps"]) == STEPS
    assert report["env"]["cuda_available"] is False and report["env"]["torch"]
    steps = report["steps"]
    assert "passed" in steps["cuda_tests"]["summary"]
    assert any("need CUDA" in r for r in steps["cuda_tests"]["skip_reasons"])
    for model in ("resnet1d_gru", "efficientnet"):
        (result,) = steps[f"train_{model}"]["results"]
        assert result["model"] == model and result["device"] == "cpu" and result["samples_per_s"] > 0
    assert steps["predict"]["status"] == "skipped" and "cuda" in steps["predict"]["reason"]
    assert steps["dag"]["mode"] == "planned (snakemake -n)" and steps["dag"]["jobs"] >= 10
    assert all(s["seconds"] < 120 for s in steps.values() if "seconds" in s)
    assert json.loads(proc.stdout.splitlines()[-1])["steps"]["dag"] == "ok"


def test_budget_stops_starting_steps(tmp_path):
    proc, report = _kit(tmp_path, BUDGET_S="16")
    later = [report["steps"][name] for name in STEPS[1:] if name != "predict"]  # predict: a dry skip
    assert all(s["status"] == "skipped" and "budget" in s["reason"] for s in later), later
    assert report["seconds"] < 16 + 10 + 15  # the env step's limit, its kill grace, the report
    assert proc.returncode == (0 if report["steps"]["env"]["status"] == "ok" else 1)
