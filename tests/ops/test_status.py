"""status/run.json writer (throttle); run_status (cost, ETA, GPU, Snakemake progress) in ops."""
from __future__ import annotations

import json
import sys
import time

import pytest

from hms_core.config import from_mapping
from hms_core.errors import ConfigError, DataError
from hms_core import status
from hms_core.ops.run_status import run_status
from hms_core.ops import gpu, snakemake_log
from hms_core.ops.config import OpsConfig
from tests.ops.conftest import SNAKEMAKE_LOG_FAILED, SNAKEMAKE_LOG_RUNNING, write_snakemake_log


def _job(path, job):
    return json.loads(path.read_text())["jobs"][job]


def test_progress_fields_are_throttled_and_milestones_written_at_once(workdir):
    path = workdir / status.STATUS_FILE
    status.start_run(path, status_interval_s=0.4)
    status.update_status(path, "train_a_fold0", stage="training", epoch=1, epochs=2, step=1, steps=10)
    assert _job(path, "train_a_fold0")["step"] == 1
    status.update_status(path, "train_a_fold0", stage="training", epoch=1, epochs=2, step=2, steps=10)
    assert _job(path, "train_a_fold0")["step"] == 1  # held back: only progress changed
    status.update_status(path, "train_a_fold0", stage="training", epoch=2, epochs=2, step=6, steps=10)
    entry = _job(path, "train_a_fold0")
    assert (entry["epoch"], entry["step"]) == (2, 6)  # epoch changed: written at once
    status.update_status(path, "train_a_fold0", stage="training", epoch=2, epochs=2, step=7, steps=10)
    deadline = time.monotonic() + 5
    while _job(path, "train_a_fold0")["step"] != 7 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _job(path, "train_a_fold0")["step"] == 7  # the timer wrote the held-back step
    status.update_status(path, "other", stage="x", step=1, steps=4)
    status.update_status(path, "other", stage="x", step=2, steps=4)
    assert _job(path, "other")["step"] == 1
    status.flush_status()
    assert _job(path, "other")["step"] == 2
    status.update_status(path, "other", stage="x", step=4, steps=4)
    assert _job(path, "other")["step"] == 4  # reaching 100% is written at once


def test_no_throttle_without_a_recorded_interval(workdir):
    path = workdir / status.STATUS_FILE
    for step in range(1, 4):
        status.update_status(path, "job", step=step, steps=10)
        assert _job(path, "job")["step"] == step


def test_run_status_cost_eta_and_job_states(workdir):
    path = workdir / status.STATUS_FILE
    status.start_run(path, cost_per_hour=2.0, currency="EUR", status_interval_s=0.0)
    status.update_status(path, "train_a_fold0", stage="training", model="a", fold=0, epoch=1,
                         epochs=4, step=25, steps=100, loss=0.9, eta_s=600.0)
    status.update_status(path, "pretrain", stage="pretrain", progress=1.0, state="done")
    saved = json.loads(path.read_text())
    updated = saved["jobs"]["train_a_fold0"]["updated_at"]
    now = updated + 100
    st = run_status(workdir, now=now)
    assert st["cost"]["currency"] == "EUR"
    assert st["cost"]["so_far"] == pytest.approx(2.0 * (now - saved["run"]["started_at"]) / 3600)
    job = st["jobs"]["train_a_fold0"]
    assert job["progress"] == pytest.approx(0.25)
    assert job["state"] == "running"
    assert job["eta_s"] == pytest.approx(500.0)  # 600 s at the last update, 100 s ago
    assert st["jobs"]["pretrain"]["state"] == "done"
    assert st["run"]["eta_s"] == pytest.approx(job["eta_s"])
    assert st["cost"]["estimated_total"] > st["cost"]["so_far"]
    json.dumps(st)  # JSON-ready for `hms status --json`
    # a job silent for longer than stale_after_s is shown as stale
    late = run_status(workdir, now=updated + 901)
    assert late["jobs"]["train_a_fold0"]["state"] == "stale"


def test_corrupt_status_file_is_named(workdir):
    path = workdir / status.STATUS_FILE
    path.parent.mkdir(parents=True)
    path.write_text('{"jobs": {')
    with pytest.raises(DataError, match="run.json: not valid JSON"):
        run_status(workdir)


def test_missing_run_directory_is_named(tmp_path, capsys):
    from hms_core.cli import main as hms

    assert hms(["status", "-d", str(tmp_path / "nope")]) == 2
    assert "nope: no such run directory" in capsys.readouterr().err


def test_parse_running_snakemake_log(workdir):
    log = write_snakemake_log(workdir, SNAKEMAKE_LOG_RUNNING)
    assert snakemake_log.newest_snakemake_log(workdir) == log
    parsed = snakemake_log.parse_snakemake_log(log)
    assert (parsed["done"], parsed["total"], parsed["percent"]) == (1, 4, 25.0)
    assert parsed["running"] == [{"rule": "work", "jobid": 1, "wildcards": "i=0"}]
    assert not parsed["complete"] and not parsed["error"]
    assert time.localtime(parsed["started_at"])[:6] == (2026, 12, 1, 8, 55, 3)
    # no Snakemake process owns this workdir: the run was interrupted
    st = run_status(workdir)
    assert st["snakemake"]["done"] == 1 and st["snakemake"]["running_now"] is False
    assert st["run"]["state"] == "stopped"


def test_parse_failed_snakemake_log(workdir):
    parsed = snakemake_log.parse_snakemake_log(write_snakemake_log(workdir, SNAKEMAKE_LOG_FAILED))
    assert (parsed["done"], parsed["total"]) == (0, 3)
    assert parsed["failed_rules"] == ["b"] and parsed["error"] and parsed["complete"]
    assert parsed["running"] == []
    assert run_status(workdir)["run"]["state"] == "failed"


def test_gpu_status_without_pynvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails as if not installed
    result = gpu.gpu_status()
    assert result["available"] is False and "pynvml not installed" in result["reason"]


def _nvml_works() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:
        return False


@pytest.mark.skipif(_nvml_works(), reason="an NVIDIA driver is present: the no-driver path cannot happen")
def test_gpu_status_without_driver(workdir):
    result = gpu.gpu_status()
    assert result == {"available": False, "reason": result["reason"], "driver": None, "devices": []}
    assert result["reason"].startswith("NVML unavailable")
    assert run_status(workdir)["gpu"]["available"] is False


@pytest.mark.skipif(not _nvml_works(), reason="no NVIDIA driver/GPU here (NVML does not initialise)")
def test_gpu_status_with_gpu():
    result = gpu.gpu_status()
    assert result["available"] and result["devices"]
    dev = result["devices"][0]
    assert 0 <= dev["utilization_pct"] <= 100
    assert 0 < dev["memory_total_mib"] and 0 <= dev["memory_used_mib"] <= dev["memory_total_mib"]
    assert 0 < dev["temperature_c"] < 120


def test_ops_config():
    cfg = from_mapping(OpsConfig, {"cost_per_hour": 3.2, "backup": {"interval_min": 10}}, "ops")
    assert cfg.backup.interval_min == 10 and cfg.backup.keep == 5 and cfg.status_interval_s == 2.0
    with pytest.raises(ConfigError, match="ops.backup: unknown key 'every'"):
        from_mapping(OpsConfig, {"backup": {"every": 3}}, "ops")
    with pytest.raises(ConfigError, match=r"ops.cost_per_hour: must be a number >= 0, got -1"):
        from_mapping(OpsConfig, {"cost_per_hour": -1}, "ops")
