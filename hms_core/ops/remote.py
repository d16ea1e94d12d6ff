"""``hms deploy``: copy the project to a host over SSH, set it up and start the run detached.

Steps: ``rsync`` the project (what ``.gitignore`` does not exclude, and never data, models
or run state) into ``--dir`` on the host; run the setup command there (``make venv``, or
``$HMS_DEPLOY_SETUP``);
start ``hms resume`` there under ``setsid nohup`` so the run outlives the SSH session,
with its pid in ``status/hms-run.pid``, its exit status in ``status/hms-run.exit`` and
its output appended to ``logs/hms/run.log``. ``hms status|monitor|logs|resume --host`` then
work against it (``--directory`` = the same ``--dir``). Deploy and resume refuse while the
run started there is still alive: new code is never copied under a live run.
"""
from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

from hms_core.ops import ssh
from hms_core.paths import REPO_ROOT as PROJECT_DIR

logger = logging.getLogger(__name__)

SETUP_ENV = "HMS_DEPLOY_SETUP"
DEFAULT_SETUP = "make venv"
PID_FILE = "status/hms-run.pid"
EXIT_FILE = "status/hms-run.exit"
RUN_LOG = "logs/hms/run.log"
RSYNC_EXCLUDES = (
    ".git/", ".venv/", "__pycache__/", "*.egg-info/", ".pytest_cache/", ".snakemake/",
    "/data/", "/models/", "/oof/", "/logs/", "/status/", "/backups/", "/results/",
    "/demo_run/", "/training_results.json", "/report.html",
)
_START_CHECK_S = 2  # how long after the start the remote run must still be alive (or done)


def deploy(host: str, key: str | None, remote_dir: str, port: int | None,
           snakemake_args: Sequence[str] | None, *, project_dir: str | os.PathLike | None = None,
           setup_command: str | None = None) -> int:
    """Copy the project to ``host:remote_dir``, set it up there and start the workflow.

    Parameters
    ----------
    host : str
        ``user@host`` (or a ``Host`` alias of the ssh config); its key must be in known_hosts.
    key : str or None
        SSH private key file.
    remote_dir : str
        Project folder on the host (relative to the remote home or absolute).
    port : int or None
        SSH port.
    snakemake_args : sequence of str
        Passed to Snakemake on the host (e.g. ``--cores 8 --configfile config/full.yaml``).
    project_dir : path-like or None
        Local project to copy (default: this checkout).
    setup_command : str or None
        Shell command run in ``remote_dir`` after the copy (default ``$HMS_DEPLOY_SETUP`` or
        ``make venv``).

    Returns
    -------
    int
        0 when the run was started.
    """
    args = list(snakemake_args or [])
    if args[:1] == ["--"]:
        args = args[1:]
    ssh.check_host(host)
    if shutil.which("rsync") is None:
        raise ssh.RemoteError("rsync not found here: install it (apt-get install rsync)")
    project = Path(project_dir or PROJECT_DIR).resolve()
    setup = setup_command or os.environ.get(SETUP_ENV) or DEFAULT_SETUP
    conn = {"key": key, "port": port}

    refuse_if_alive(host, remote_dir, **conn)
    check = ssh.run_remote(host, f"mkdir -p {ssh.shell_dir(remote_dir)} && command -v rsync >/dev/null",
                           capture=True, timeout_s=60, **conn)
    if check.returncode != 0:
        raise ssh.RemoteError(f"{host}: cannot create {remote_dir} or rsync is missing there "
                              f"(install it: apt-get install rsync): {check.stderr.strip()}")
    logger.info("copying %s to %s:%s", project, host, remote_dir)
    rsync = ["rsync", "-az", "--filter=:- .gitignore", *[f"--exclude={pattern}" for pattern in RSYNC_EXCLUDES],
             "-e", shlex.join(["ssh", *ssh.ssh_options(**conn)]), "--", f"{project}/",
             f"{host}:{ssh.rsync_dir(remote_dir)}/"]
    copied = subprocess.run(rsync, stdin=subprocess.DEVNULL)
    if copied.returncode != 0:
        raise ssh.RemoteError(f"rsync to {host}:{remote_dir} failed with exit status {copied.returncode}")
    logger.info("setting up on %s: %s", host, setup)
    done = ssh.run_remote(host, f"cd {ssh.shell_dir(remote_dir)} && {setup}", **conn)
    if done.returncode != 0:
        raise ssh.RemoteError(f"{host}: setup command {setup!r} failed in {remote_dir} "
                              f"(exit status {done.returncode})")
    return start_detached(host, remote_dir, args, **conn)


def live_run(host: str, remote_dir: str, *, key: str | None = None,
             port: int | None = None) -> tuple[int, str] | None:
    """``(pid, host name)`` of the run that :func:`start_detached` started in ``remote_dir``
    on ``host`` if it is still alive (its pid runs and has written no exit status), else None."""
    script = (f"cd {ssh.shell_dir(remote_dir)} 2>/dev/null || exit 0; "
              f"[ -f {PID_FILE} ] && [ ! -f {EXIT_FILE} ] || exit 0; P=$(cat {PID_FILE}); "
              'if kill -0 "$P" 2>/dev/null; then echo "alive $P $(hostname)"; fi')
    result = ssh.run_remote(host, script, capture=True, timeout_s=60, key=key, port=port)
    words = result.stdout.split()
    if result.returncode != 0:
        raise ssh.RemoteError(f"{host}: cannot check for a live run in {remote_dir}: {result.stderr.strip()}")
    if len(words) >= 2 and words[0] == "alive" and words[1].isdigit():
        return int(words[1]), (words[2] if len(words) > 2 else host)
    return None


def refuse_if_alive(host: str, remote_dir: str, *, key: str | None = None, port: int | None = None) -> None:
    """Raise :class:`hms_core.ops.ssh.RemoteError` when a run is alive in ``remote_dir`` on ``host``."""
    alive = live_run(host, remote_dir, key=key, port=port)
    if alive is None:
        return
    pid, name = alive
    where = f"--host {shlex.quote(host)} -d {shlex.quote(remote_dir)}"
    raise ssh.RemoteError(
        f"{host}: a run is alive in {remote_dir} (pid {pid} on {name}); nothing was copied or started. "
        f"Let it finish (watch it: hms monitor {where}) or stop it first: "
        f"ssh {shlex.quote(host)} kill -TERM -- -{pid} (its process group), then run this again")


def start_detached(host: str, remote_dir: str, snakemake_args: Sequence[str], *,
                   key: str | None = None, port: int | None = None) -> int:
    """Start ``hms resume ARGS`` in ``remote_dir`` on ``host``, detached from the SSH session.

    Refuses while the run started there before is alive. Its output is appended to
    ``logs/hms/run.log`` (never truncated). Returns 0 when the run is alive (or already
    finished successfully) two seconds later; otherwise raises
    :class:`hms_core.ops.ssh.RemoteError` with the end of its log.
    """
    ssh.check_host(host)
    refuse_if_alive(host, remote_dir, key=key, port=port)
    inner = ("if [ -x .venv/bin/hms ]; then H=.venv/bin/hms; else H=hms; fi; "
             f'"$H" resume -d . -- {shlex.join(snakemake_args)}; echo $? > {EXIT_FILE}')
    script = (
        f"cd {ssh.shell_dir(remote_dir)} && mkdir -p logs/hms status && rm -f {EXIT_FILE} && "
        f"echo \"=== hms resume started $(date -u +%Y-%m-%dT%H:%M:%SZ) ===\" >> {RUN_LOG} && "
        "if command -v setsid >/dev/null; then S=setsid; else S=; fi && "
        f"{{ $S nohup sh -c {shlex.quote(inner)} >> {RUN_LOG} 2>&1 < /dev/null & }} && "
        f"echo $! > {PID_FILE} && sleep {_START_CHECK_S} && "
        f"if kill -0 $(cat {PID_FILE}) 2>/dev/null; then echo running $(cat {PID_FILE}); "
        f"elif [ \"$(cat {EXIT_FILE} 2>/dev/null)\" = 0 ]; then echo finished; "
        f"else echo failed; tail -n 20 {RUN_LOG}; fi"
    )
    result = ssh.run_remote(host, script, capture=True, timeout_s=60, key=key, port=port)
    lines = result.stdout.strip().splitlines()
    first = lines[0] if lines else ""
    if result.returncode != 0 or not first.startswith(("running", "finished")):
        raise ssh.RemoteError(f"{host}: the run in {remote_dir} did not start:\n"
                              + ("\n".join(lines[1:]) or result.stderr.strip()))
    where = f"--host {shlex.quote(host)} -d {shlex.quote(remote_dir)}"
    print(f"run {first} on {host} in {remote_dir} (output: {remote_dir}/{RUN_LOG})\n"
          f"  watch: hms monitor {where}\n  logs:  hms logs {where}\n  after a crash: hms resume {where}")
    return 0
