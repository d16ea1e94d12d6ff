"""The Snakefile hooks: run facts in status/run.json, automatic and final backups."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from hms_core import status
from hms_core.ops.run_status import run_status
from hms_core.ops import backup, lifecycle


def test_on_start_and_on_end(workdir):
    (workdir / "data").mkdir()
    (workdir / "data" / "folds.csv").write_text("label_id,fold\n")
    ops = {"cost_per_hour": 1.5, "status_interval_s": 1.0, "backup": {"interval_min": 30, "keep": 2}}
    lifecycle.on_start(workdir, ops)
    try:
        run = json.loads((workdir / status.STATUS_FILE).read_text())["run"]
        assert (run["cost_per_hour"], run["status_interval_s"], run["backup_keep"]) == (1.5, 1.0, 2)
        assert (run["host"], run["pid"]) == (socket.gethostname(), os.getpid())  # who holds the lock
        assert lifecycle._periodic is not None and lifecycle._periodic._thread.is_alive()
    finally:
        lifecycle.on_end(workdir, ops, state="failed")
    assert lifecycle._periodic is None
    st = run_status(workdir)
    assert st["run"]["state"] == "failed" and st["run"]["finished_at"] is not None
    (final,) = backup.list_backups(workdir)
    assert "data/folds.csv" in backup.verify_backup(final["path"])


SNAKEFILE = """\
from hms_core.ops import lifecycle

onstart:
    lifecycle.on_start(".", config.get("ops"))
onsuccess:
    lifecycle.on_end(".", config.get("ops"), state="finished")
onerror:
    lifecycle.on_end(".", config.get("ops"), state="failed")

rule all:
    output: "data/folds.csv"
    shell: "mkdir -p data && echo label_id,fold > {output}"
"""


def test_hooks_in_a_real_snakemake_run(workdir):
    (workdir / "Snakefile").write_text(SNAKEFILE)
    (workdir / "config.yaml").write_text("ops:\n  cost_per_hour: 2.0\n  backup:\n    keep: 3\n")
    done = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", "config.yaml"],
                          cwd=workdir, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    st = run_status(workdir)
    assert st["run"]["state"] == "finished" and st["cost"]["per_hour"] == 2.0
    assert st["snakemake"]["done"] == st["snakemake"]["total"] == 1
    (final,) = backup.list_backups(workdir)
    assert set(backup.verify_backup(final["path"])) == {"data/folds.csv", "status/run.json"}
