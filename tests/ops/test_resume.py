"""Stale-lock detection and ``hms resume`` against real Snakemake runs that get killed."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from hms_core import status
from hms_core.errors import HMSError
from hms_core.ops.run_status import run_status
from hms_core.ops import resume
from hms_core.ops.processes import snakemake_processes

# The job leaves a partial output and a "checkpoint", then runs long; a second attempt
# finds the checkpoint and finishes at once (as training resumes from models/checkpoints).
SNAKEFILE = """\
rule all:
    input: "out/result.txt"

rule work:
    output: "out/result.txt"
    log: "logs/work/all.log"
    shell:
        "if [ -f progress.ckpt ]; then echo resumed > {output}; "
        "else echo partial > {output}; touch progress.ckpt; sleep 60; fi"
"""


@pytest.fixture
def smk_dir(workdir: Path) -> Path:
    (workdir / "Snakefile").write_text(SNAKEFILE)
    profile = workdir / "profiles" / "default"
    profile.mkdir(parents=True)
    (profile / "config.yaml").write_text("cores: 1\n")
    return workdir


def _start_and_wait_for_job(smk_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "1"], cwd=smk_dir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 90
    while not (smk_dir / "progress.ckpt").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"snakemake did not start its job (exit status {proc.poll()})")
        time.sleep(0.1)
    return proc


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL Snakemake and its job shell (a power cut, as far as the workdir can tell)."""
    family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in family:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=10)
    proc.wait(10)


def test_live_lock_is_kept_then_killed_run_is_resumed(smk_dir):
    proc = _start_and_wait_for_job(smk_dir)
    try:
        # while Snakemake lives, its lock is not stale: nothing is cleared, resume refuses
        assert [p["pid"] for p in snakemake_processes(smk_dir)] == [proc.pid]
        locks = resume.lock_files(smk_dir)
        assert locks, "a running Snakemake holds a lock"
        with pytest.raises(HMSError, match=f"Snakemake is running in .*pid {proc.pid}"):
            resume.clear_stale_locks(smk_dir)
        with pytest.raises(HMSError, match="its lock is not stale"):
            resume.main(smk_dir, None, ["--cores", "1"])
        assert resume.lock_files(smk_dir) == locks
        st = run_status(smk_dir)
        assert st["snakemake"]["running_now"] and st["snakemake"]["running"][0]["rule"] == "work"
    finally:
        _kill_tree(proc)
    # the kill (a power cut) left the lock, a partial output and no Snakemake process
    assert snakemake_processes(smk_dir) == []
    assert resume.lock_files(smk_dir) == locks
    assert (smk_dir / "out/result.txt").read_text() == "partial\n"
    assert run_status(smk_dir)["run"]["state"] == "stopped"
    plain = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--rerun-incomplete"],
                           cwd=smk_dir, capture_output=True, text=True)
    assert plain.returncode != 0 and "cannot be locked" in plain.stdout + plain.stderr

    assert resume.main(smk_dir, None, ["--", "--cores", "1"]) == 0
    assert (smk_dir / "out/result.txt").read_text() == "resumed\n"
    assert resume.lock_files(smk_dir) == []
    assert (smk_dir / resume.LAUNCH_FILE).is_file()  # the arguments are remembered
    assert run_status(smk_dir)["run"]["state"] == "finished"


def test_clear_stale_locks_without_snakemake(workdir):
    locks = workdir / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text("out/a.txt\n")
    (locks / "0.output.lock").write_text("out/b.txt\n")
    assert [p.name for p in resume.clear_stale_locks(workdir)] == ["0.input.lock", "0.output.lock"]
    assert resume.lock_files(workdir) == [] and resume.clear_stale_locks(workdir) == []


def test_snakemake_command_uses_profile_and_args(smk_dir):
    command = resume.snakemake_command(smk_dir, ["--cores", "2"])
    assert command[1:4] == ["-m", "snakemake", "--rerun-incomplete"]
    assert command[4:6] == ["--profile", str(smk_dir / "profiles" / "default")]
    assert command[-2:] == ["--cores", "2"] and "--snakefile" not in command
    assert "--profile" not in resume.snakemake_command(smk_dir, ["--profile", "other"])[2:-2]


def _locked_by(workdir: Path, host: str, pid: int) -> list[Path]:
    locks = workdir / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text("out/a.txt\n")
    status.start_run(workdir / status.STATUS_FILE, host=host)
    record = json.loads((workdir / status.STATUS_FILE).read_text())
    record["run"]["pid"] = pid
    (workdir / status.STATUS_FILE).write_text(json.dumps(record))
    return resume.lock_files(workdir)


def test_a_lock_taken_on_another_host_is_reported_not_cleared(workdir):
    locks = _locked_by(workdir, "login-node-2", 4242)
    with pytest.raises(HMSError, match=r"lock .* was taken on host 'login-node-2' \(Snakemake pid 4242, started .*"
                                       r"hms resume on login-node-2"):
        resume.clear_stale_locks(workdir)
    assert resume.lock_files(workdir) == locks


def test_a_lock_of_this_host_is_cleared_only_when_its_process_is_dead(workdir):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        locks = _locked_by(workdir, socket.gethostname(), sleeper.pid)
        with pytest.raises(HMSError, match=rf"its pid {sleeper.pid} is alive on this host"):
            resume.clear_stale_locks(workdir)
        assert resume.lock_files(workdir) == locks
    finally:
        sleeper.kill()
        sleeper.wait()
    assert resume.clear_stale_locks(workdir) == locks and resume.lock_files(workdir) == []
