"""Run commands on a remote host over OpenSSH, with host-key checking always on.

Host, user, port and key come from ``--host``/``--key``/``--port`` and the usual
``~/.ssh/config``; the environment variable ``HMS_SSH_CONFIG`` names another ssh config
file instead (``ssh -F``). Hosts must already be in a known_hosts file: hms never accepts
an unknown host key. A host that starts with ``-`` is refused (it would be read as an
option), and ``--`` ends the options before the destination. A remote folder is relative
to the remote home, or absolute; ``~`` and ``~/...`` mean the remote home in every command
(ssh shell and rsync alike).
"""
from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
from typing import IO, Sequence

from hms_core.errors import ConfigError, HMSError

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


def check_host(host: str) -> str:
    """Return ``host`` if it can only be read as a destination (``user@host`` or an alias).

    Raises
    ------
    ConfigError
        ``host`` is empty, starts with ``-`` or holds whitespace or control characters.
    """
    if not host or host.startswith("-") or any(c.isspace() or not c.isprintable() for c in host):
        raise ConfigError(f"--host {host!r}: not a host (it must not be empty, start with '-' or hold "
                          "spaces); give user@host or a Host alias of your ssh config")
    return host


def _home_relative(remote_dir: str) -> str | None:
    """The part after ``~/`` (``""`` for ``~``), or None when ``remote_dir`` does not start with ``~``."""
    if remote_dir == "~":
        return ""
    if remote_dir.startswith("~/"):
        return remote_dir[2:].lstrip("/")
    if remote_dir.startswith("~"):
        raise ConfigError(f"--dir {remote_dir!r}: only ~ and ~/... (the remote home) are understood; "
                          "give a path relative to the remote home or an absolute one")
    return None


def shell_dir(remote_dir: str) -> str:
    """``remote_dir`` as one word of a remote POSIX shell command (``~/x`` is ``"$HOME"/x``)."""
    rest = _home_relative(remote_dir)
    if rest is None:
        return shlex.quote(f"./{remote_dir}" if remote_dir.startswith("-") else remote_dir)
    return '"$HOME"' + (f"/{shlex.quote(rest)}" if rest else "")


def rsync_dir(remote_dir: str) -> str:
    """``remote_dir`` as rsync's remote path (relative paths are taken from the remote home)."""
    rest = _home_relative(remote_dir)
    if rest is None:
        return remote_dir
    return rest or "."


def ssh_argv(host: str, remote_command: str, *, key: str | None = None, port: int | None = None) -> list[str]:
    """The ``ssh`` command line that runs the shell command ``remote_command`` on ``host``."""
    return ["ssh", *ssh_options(key=key, port=port), "--", check_host(host), remote_command]


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
    return (f"cd {shell_dir(remote_dir(workdir))} && "
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
