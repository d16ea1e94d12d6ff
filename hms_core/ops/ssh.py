"""Run commands on a remote host over OpenSSH, with host-key checking always on.

Host, user, port and key come from ``--host``/``--key``/``--port`` and the usual
``~/.ssh/config``; the environment variable ``HMS_SSH_CONFIG`` names another ssh config
file instead (``ssh -F``). Hosts must already be in a known_hosts file: hms never accepts
an unknown host key.
"""
from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
from typing import IO, Sequence

from hms_core.errors import HMSError

logger = logging.getLogger(__name__)

SSH_CONFIG_ENV = "HMS_SSH_CONFIG"
DEFAULT_REMOTE_DIR = "hms"  # default of ``hms deploy --dir``
_SSH_FAILED = 255  # ssh's own exit status for connection and authentication failures


class RemoteError(HMSError):
    """The remote host could not be reached or the remote command failed."""


def ssh_options(*, key: str | None = None, port: int | None = None) -> list[str]:
    """Options shared by ``ssh`` and ``rsync -e``: config file, strict host keys, no prompts."""
    options = []
    if os.environ.get(SSH_CONFIG_ENV):
        options += ["-F", os.environ[SSH_CONFIG_ENV]]
    options += ["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                "-o", "ConnectTimeout=20", "-o", "ServerAliveInterval=30"]
    if key:
        options += ["-i", os.fspath(key), "-o", "IdentitiesOnly=yes"]
    if port:
        options += ["-p", str(port)]
    return options


def ssh_argv(host: str, remote_command: str, *, key: str | None = None, port: int | None = None) -> list[str]:
    """The ``ssh`` command line that runs the shell command ``remote_command`` on ``host``."""
    return ["ssh", *ssh_options(key=key, port=port), host, remote_command]


def run_remote(host: str, remote_command: str, *, key: str | None = None, port: int | None = None,
               capture: bool = False, timeout_s: float | None = None) -> subprocess.CompletedProcess:
    """Run ``remote_command`` (a POSIX shell string) on ``host`` and wait for it.

    Raises
    ------
    RemoteError
        ssh could not connect or authenticate (exit status 255), or it timed out.
    """
    argv = ssh_argv(host, remote_command, key=key, port=port)
    logger.debug("ssh %s: %s", host, remote_command)
    try:
        result = subprocess.run(argv, capture_output=capture, text=True, timeout=timeout_s,
                                stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise RemoteError("ssh not found: install the OpenSSH client (apt-get install openssh-client)")
    except subprocess.TimeoutExpired:
        raise RemoteError(f"{host}: no answer within {timeout_s:.0f} s")
    if result.returncode == _SSH_FAILED:
        detail = (result.stderr or "").strip().splitlines()[-1:] if capture else []
        raise RemoteError(f"{host}: ssh failed{': ' + detail[0] if detail else ''} "
                          "(is the host key in known_hosts and the key authorised?)")
    return result


def remote_dir(workdir: str | os.PathLike) -> str:
    """The remote run directory for ``--directory``: ``"."`` means the deploy default."""
    workdir = os.fspath(workdir)
    return DEFAULT_REMOTE_DIR if workdir in ("", ".") else workdir


def hms_shell(workdir: str | os.PathLike, args: Sequence[str]) -> str:
    """Shell string that runs ``hms ARGS -d .`` in ``workdir`` with the project's venv if any."""
    quoted = shlex.join([*args, "-d", "."])
    return (f"cd {shlex.quote(remote_dir(workdir))} && "
            f"if [ -x .venv/bin/hms ]; then exec .venv/bin/hms {quoted}; else exec hms {quoted}; fi")


def stream_remote(host: str, remote_command: str, *, out: IO[str] | None = None,
                  key: str | None = None, port: int | None = None) -> int:
    """Run ``remote_command`` on ``host``, copying its output to ``out`` line by line.

    Returns the remote exit status; Ctrl-C stops the ssh client and returns 0.
    """
    out = out or sys.stdout
    argv = ssh_argv(host, remote_command, key=key, port=port)
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise RemoteError("ssh not found: install the OpenSSH client (apt-get install openssh-client)")
    try:
        for line in proc.stdout:
            out.write(line)
            out.flush()
        returncode = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        return 0
    if returncode == _SSH_FAILED:
        raise RemoteError(f"{host}: ssh failed (is the host key in known_hosts and the key authorised?)")
    return returncode
