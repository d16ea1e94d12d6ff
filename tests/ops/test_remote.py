"""hms deploy / status / logs / resume against a real OpenSSH server on 127.0.0.1.

The test starts its own ``sshd`` on a free high port with a temporary host key and an
authorized_keys holding a generated client key (key-based auth only), writes the
known_hosts entry itself (host-key checking stays on) and stops sshd at the end.
"""
from __future__ import annotations

import getpass
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

import hms_core
from hms_core.ops import logs, monitor, remote, resume, ssh

SSHD = "/usr/sbin/sshd"
pytestmark = pytest.mark.skipif(
    not (os.path.exists(SSHD) and all(shutil.which(t) for t in ("ssh", "ssh-keygen", "rsync"))),
    reason="needs OpenSSH server and client and rsync (apt-get install openssh-server rsync)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hms-test", "-f", str(path)],
                   check=True, stdout=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    d = tmp_path_factory.mktemp("sshd")
    _keygen(d / "host_key")
    _keygen(d / "client_key")
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    (d / "authorized_keys").chmod(0o600)
    port, user = _free_port(), getpass.getuser()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPubkeyAuthentication yes\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"PermitRootLogin prohibit-password\nAllowUsers {user}\nMaxStartups 50\n")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    checked = subprocess.run([SSHD, "-t", "-f", str(d / "sshd_config")], capture_output=True, text=True)
    if checked.returncode != 0:
        pytest.skip(f"sshd cannot start here: {checked.stderr.strip()}")
    proc = subprocess.Popen([SSHD, "-D", "-f", str(d / "sshd_config"), "-E", str(d / "sshd.log")])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = (d / "sshd.log").read_text() if (d / "sshd.log").exists() else ""
                    pytest.skip(f"sshd could not be started: {log.strip()[-300:]}")
                time.sleep(0.05)
        (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {(d / 'host_key.pub').read_text()}")
        common = (f"Host 127.0.0.1\n  UserKnownHostsFile {d / 'known_hosts'}\n  GlobalKnownHostsFile /dev/null\n"
                  "  StrictHostKeyChecking yes\n  PasswordAuthentication no\n  LogLevel ERROR\n")
        # deploy gets port and key from its options; the other verbs from the ssh config
        (d / "ssh_config_deploy").write_text(common)
        (d / "ssh_config").write_text(common + f"  Port {port}\n  IdentityFile {d / 'client_key'}\n"
                                               "  IdentitiesOnly yes\n")
        yield {"dir": d, "port": port, "host": f"{user}@127.0.0.1", "key": str(d / "client_key")}
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


TINY_SNAKEFILE = """\
rule all:
    input: "out/done.txt"

rule work:
    output: "out/done.txt"
    log: "logs/work/all.log"
    shell:
        "echo working on it > {{log}}; "
        "{python} -c 'from hms_core.status import update_status; "
        "update_status(\\"status/run.json\\", \\"work\\", stage=\\"demo\\", epoch=2, epochs=2, state=\\"done\\")'; "
        "echo ok > {{output}}"
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A tiny project: this checkout's hms_core, a one-job Snakefile, a profile, and data not to copy."""
    root = tmp_path / "project"
    shutil.copytree(Path(hms_core.__file__).parent, root / "hms_core",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (root / "Snakefile").write_text(TINY_SNAKEFILE.format(python=sys.executable))
    (root / "profiles" / "default").mkdir(parents=True)
    (root / "profiles" / "default" / "config.yaml").write_text("cores: 1\n")
    (root / "data" / "raw").mkdir(parents=True)
    (root / "data" / "raw" / "train.csv").write_text("not for the remote")
    (root / ".gitignore").write_text("/scratch/\n")
    (root / "scratch").mkdir()
    (root / "scratch" / "big.bin").write_bytes(b"ignored by git")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return root


# Stand-in for `make venv`: a venv-like .venv/bin/hms that runs this interpreter.
SETUP = ("mkdir -p .venv/bin && printf '#!/bin/sh\\nexec %s -m hms_core.cli \"$@\"\\n' "
         f"{sys.executable} > .venv/bin/hms && chmod +x .venv/bin/hms")


def _wait_for(predicate, what: str, timeout_s: float = 90):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.3)


def _stop_remote_run(remote_dir: Path) -> None:
    pid_file = remote_dir / remote.PID_FILE
    if pid_file.exists():
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, PermissionError, ValueError):
            pass


def test_unknown_host_key_is_refused(sshd, tmp_path, monkeypatch):
    (tmp_path / "empty_known_hosts").write_text("")
    cfg = (sshd["dir"] / "ssh_config").read_text().replace(
        str(sshd["dir"] / "known_hosts"), str(tmp_path / "empty_known_hosts"))
    (tmp_path / "ssh_config").write_text(cfg)
    monkeypatch.setenv(ssh.SSH_CONFIG_ENV, str(tmp_path / "ssh_config"))
    with pytest.raises(ssh.RemoteError, match="ssh failed: Host key verification failed"):
        monitor.fetch_status(tmp_path, sshd["host"])


def test_deploy_status_logs_resume(sshd, project, tmp_path, monkeypatch):
    remote_dir = tmp_path / "remote home" / "hms"  # a space: quoting must hold
    host = sshd["host"]
    monkeypatch.setenv(ssh.SSH_CONFIG_ENV, str(sshd["dir"] / "ssh_config_deploy"))
    try:
        assert remote.deploy(host, sshd["key"], str(remote_dir), sshd["port"], ["--", "--cores", "1"],
                             project_dir=project, setup_command=SETUP) == 0
        assert (remote_dir / "Snakefile").is_file() and (remote_dir / ".venv/bin/hms").is_file()
        assert (remote_dir / "hms_core/ops/remote.py").is_file()
        for not_copied in ("data", ".git", "scratch"):
            assert not (remote_dir / not_copied).exists(), not_copied

        monkeypatch.setenv(ssh.SSH_CONFIG_ENV, str(sshd["dir"] / "ssh_config"))
        st = _wait_for(lambda: (s := monitor.fetch_status(str(remote_dir), host))["snakemake"]["complete"] and s,
                       "the deployed run to finish")
        assert st["workdir"] == str(remote_dir.resolve())
        assert (st["snakemake"]["done"], st["snakemake"]["total"]) == (2, 2)
        assert st["jobs"]["work"]["stage"] == "demo" and st["jobs"]["work"]["state"] == "done"
        _wait_for(lambda: (remote_dir / remote.EXIT_FILE).is_file(), "the deployed hms resume to exit")
        assert (remote_dir / remote.EXIT_FILE).read_text().strip() == "0"
        assert "2 of 2 steps (100%) done" in (remote_dir / remote.RUN_LOG).read_text()

        console = Console(record=True, width=160, color_system=None)
        assert monitor.print_status(str(remote_dir), host, False, console=console) == 0
        frame = console.export_text()
        assert "work" in frame and "2 of 2 steps" in frame

        out = io.StringIO()
        assert logs.show_logs(str(remote_dir), "work", False, host, out=out) == 0
        assert "working on it" in out.getvalue()

        # a lost output: resume over SSH reruns the job with the remembered arguments
        (remote_dir / "out" / "done.txt").unlink()
        assert resume.main(str(remote_dir), host, []) == 0
        _wait_for(lambda: (remote_dir / remote.EXIT_FILE).is_file(), "the resumed run to end")
        assert (remote_dir / remote.EXIT_FILE).read_text().strip() == "0"
        assert (remote_dir / "out" / "done.txt").read_text() == "ok\n"
    finally:
        _stop_remote_run(remote_dir)


SLOW_SNAKEFILE = """\
rule all:
    input: "out/done.txt"

rule work:
    output: "out/done.txt"
    log: "logs/work/all.log"
    shell: "sleep 120; echo ok > {output}"
"""


def test_deploy_and_resume_refuse_while_a_run_is_alive(sshd, project, tmp_path, monkeypatch):
    remote_dir = tmp_path / "remote" / "hms"
    host = sshd["host"]
    (project / "Snakefile").write_text(SLOW_SNAKEFILE)
    monkeypatch.setenv(ssh.SSH_CONFIG_ENV, str(sshd["dir"] / "ssh_config_deploy"))
    deploy = lambda: remote.deploy(host, sshd["key"], str(remote_dir), sshd["port"], ["--cores", "1"],
                                   project_dir=project, setup_command=SETUP)
    try:
        assert deploy() == 0
        pid = int((remote_dir / remote.PID_FILE).read_text())
        log_before = (remote_dir / remote.RUN_LOG).read_text()
        (project / "hms_core" / "NEW_CODE.txt").write_text("must not reach the live run")
        with pytest.raises(ssh.RemoteError, match=rf"a run is alive in .* \(pid {pid} on .*\); nothing was "
                                                  rf"copied or started.*kill -TERM -- -{pid}"):
            deploy()
        assert not (remote_dir / "hms_core" / "NEW_CODE.txt").exists()
        monkeypatch.setenv(ssh.SSH_CONFIG_ENV, str(sshd["dir"] / "ssh_config"))
        with pytest.raises(ssh.RemoteError, match=rf"pid {pid} on "):
            resume.main(str(remote_dir), host, [])
        assert (remote_dir / remote.RUN_LOG).read_text().startswith(log_before)
        _stop_remote_run(remote_dir)
        _wait_for(lambda: remote.live_run(host, str(remote_dir)) is None, "the stopped run to be gone", 30)
        (remote_dir / "Snakefile").write_text(TINY_SNAKEFILE.format(python=sys.executable))
        (remote_dir / ".snakemake" / "locks").mkdir(parents=True, exist_ok=True)
        assert resume.main(str(remote_dir), host, ["--cores", "1"]) == 0
        _wait_for(lambda: (remote_dir / remote.EXIT_FILE).is_file(), "the resumed run to end")
        text = (remote_dir / remote.RUN_LOG).read_text()
        assert text.startswith(log_before) and text.count("=== hms resume started") == 2  # appended
    finally:
        _stop_remote_run(remote_dir)
