"""``hms resume``: continue a run after a crash or power loss.

Clears Snakemake's lock when no Snakemake process owns it any more (a lock taken on
another host, as recorded in ``status/run.json``, is reported and kept), then runs
``snakemake --rerun-incomplete`` (with the project's profile) in the working directory.
Training jobs continue from their last checkpoint on their own (the training engine).
The Snakemake arguments of the last ``hms resume``/``hms deploy`` are remembered in
``status/launch.json`` and reused when none are given.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import psutil

from hms_core import atomic, status
from hms_core.errors import HMSError
from hms_core.ops.processes import snakemake_processes
from hms_core.paths import REPO_ROOT

logger = logging.getLogger(__name__)

LAUNCH_FILE = Path("status", "launch.json")
PROFILE = Path("profiles", "default")
PROJECT_DIR = REPO_ROOT  # the checkout that holds the Snakefile
_SNAKEFILES = ("Snakefile", "workflow/Snakefile", "snakefile")


def lock_files(workdir: str | os.PathLike) -> list[Path]:
    """Snakemake's lock files in ``workdir/.snakemake/locks``."""
    locks = Path(workdir, ".snakemake", "locks")
    return sorted(p for p in locks.iterdir() if p.is_file()) if locks.is_dir() else []


def clear_stale_locks(workdir: str | os.PathLike) -> list[Path]:
    """Remove Snakemake's lock files of ``workdir`` if no Snakemake process owns them.

    The run that took the lock recorded its host and pid in ``status/run.json`` (Snakefile
    ``onstart``). A lock is cleared only when that host is this one and that process is
    dead (or, for a run without that record, when no Snakemake process of this host works
    in ``workdir``).

    Returns
    -------
    list of Path
        The lock files removed (empty when there were none).

    Raises
    ------
    HMSError
        A Snakemake process is running in ``workdir``, the recorded owner is alive here, or
        the lock was taken on another host (its processes cannot be seen from here).
    """
    running = snakemake_processes(workdir)
    if running:
        pids = ", ".join(str(p["pid"]) for p in running)
        raise HMSError(f"Snakemake is running in {Path(workdir).resolve()} (pid {pids}); "
                       "its lock is not stale. Watch it with `hms monitor`.")
    locks = lock_files(workdir)
    if not locks:
        return []
    owner = status.read_status(Path(workdir, status.STATUS_FILE)).get("run", {})
    if owner.get("state") == "running" and owner.get("host") and owner.get("pid"):
        host, pid = owner["host"], int(owner["pid"])
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started_at", 0)))
        if host != socket.gethostname():
            raise HMSError(f"the Snakemake lock of {Path(workdir).resolve()} was taken on host {host!r} "
                           f"(Snakemake pid {pid}, started {since}); its processes cannot be seen from "
                           f"{socket.gethostname()!r}, so the lock is kept. Check the run there (hms status "
                           f"on {host}); if it is dead, run hms resume on {host}")
        if _alive_since(pid, owner.get("started_at", 0.0)):
            raise HMSError(f"the run that holds the Snakemake lock of {Path(workdir).resolve()} is not "
                           f"dead: its pid {pid} is alive on this host (started {since}); the lock is kept")
    for path in locks:
        path.unlink()
    logger.info("removed stale Snakemake lock (%s)", ", ".join(p.name for p in locks))
    return locks


def _alive_since(pid: int, started_at: float) -> bool:
    """Whether process ``pid`` runs and was started before ``started_at`` (not a reused pid)."""
    try:
        return psutil.Process(pid).create_time() <= started_at + 1.0
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True


def snakemake_command(workdir: str | os.PathLike, snakemake_args: Sequence[str]) -> list[str]:
    """``python -m snakemake --rerun-incomplete [--profile ...] [--snakefile ...] ARGS``.

    The profile ``profiles/default`` (in ``workdir``, else in the project) is added unless
    ``snakemake_args`` name one; the project's Snakefile is added when ``workdir`` has none.
    """
    workdir = Path(workdir)
    args = list(snakemake_args)
    command = [sys.executable, "-m", "snakemake", "--rerun-incomplete"]
    if not any(a == "--profile" or a.startswith("--profile=") for a in args):
        for base in (workdir, PROJECT_DIR):
            if (base / PROFILE / "config.yaml").is_file():
                command += ["--profile", str(base / PROFILE)]
                break
    has_snakefile = any(a in ("-s", "--snakefile") or a.startswith("--snakefile=") for a in args)
    if not has_snakefile and not any((workdir / name).is_file() for name in _SNAKEFILES):
        project_snakefile = PROJECT_DIR / "Snakefile"
        if project_snakefile.is_file():
            command += ["--snakefile", str(project_snakefile)]
    return command + args


def main(workdir: str | os.PathLike, host: str | None, snakemake_args: Sequence[str] | None) -> int:
    """``hms resume``: clear a stale lock and run Snakemake again; returns its exit status.

    With ``host`` the same is started on the remote machine, detached (see
    :func:`hms_core.ops.remote.start_detached`).
    """
    args = list(snakemake_args or [])
    if args[:1] == ["--"]:
        args = args[1:]
    if host is not None:
        from hms_core.ops import remote, ssh

        return remote.start_detached(host, ssh.remote_dir(workdir), args)
    workdir = Path(workdir)
    launch = workdir / LAUNCH_FILE
    if args:
        atomic.write_json(launch, {"snakemake_args": args})
    elif launch.is_file():
        args = list(json.loads(launch.read_text()).get("snakemake_args", []))
        logger.info("reusing the Snakemake arguments of the last launch: %s", " ".join(args))
    clear_stale_locks(workdir)
    command = snakemake_command(workdir, args)
    logger.info("running %s in %s", " ".join(command), workdir)
    return subprocess.run(command, cwd=workdir).returncode
