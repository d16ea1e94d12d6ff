"""A throw-away single-node SLURM cluster on localhost, for workflow tests.

``start_cluster(root)`` writes a munge key and a ``slurm.conf`` under ``root``, then starts
``munged``, ``slurmctld`` and ``slurmd`` in the foreground as children of the test process
(root only: slurmd must be able to start jobs as the submitting user). Everything lives
under ``root``: config, key, sockets, state, spool, logs and pid files; the daemons listen
on free loopback ports and the node's address is 127.0.0.1. Clients reach the cluster
through the environment of ``cluster.env`` (``SLURM_CONF``).

There is no slurmdbd, so ``sacct`` has nothing to read; the executor plugin must query
``squeue`` instead, which shows finished jobs for ``MinJobAge`` seconds (set to an hour).

``cluster.stop()`` cancels every job, waits for the queue to drain, then kills the daemons
and any process they left behind (found by a marker in its environment), so nothing
outlives the test session.
"""
from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

logger = logging.getLogger(__name__)

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "sinfo", "scontrol")
MARKER = "HMS_TEST_SLURM_ROOT"


class SlurmUnavailable(RuntimeError):
    """SLURM cannot be started here; the message says what failed."""


@dataclass
class SlurmCluster:
    """Handle on a running test cluster.

    Attributes
    ----------
    root : Path
        Folder holding all of the cluster's files.
    node : str
        Name of the one compute node (this host's short name).
    partitions : tuple of str
        Partition names, all holding the one node; the first is the default.
    cpus : int
        CPUs the node offers.
    gpus : int
        Count of the node's ``gpu`` GRES. These are bookkeeping only (no devices behind
        them): they let jobs that ask for ``--gpus`` be scheduled on a CPU-only machine.
    memory_mb : int
        Memory the node offers, MB.
    env : dict
        Environment for SLURM clients and for Snakemake (``SLURM_CONF`` set).
    """

    root: Path
    node: str
    partitions: tuple[str, ...]
    cpus: int
    gpus: int
    memory_mb: int
    env: dict[str, str]
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    def run(self, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster."""
        proc = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}"
                               f"\n{self.log_tail()}")
        return proc

    def jobs(self) -> list[dict[str, str]]:
        """All jobs slurmctld still knows (running or finished within MinJobAge).

        Returns
        -------
        list of dict
            One dict per job with keys ``id``, ``name``, ``state``, ``comment``.
        """
        out = self.run("squeue", "--states=all", "--noheader", "--format=%i|%j|%T|%k").stdout
        keys = ("id", "name", "state", "comment")
        return [dict(zip(keys, line.split("|", 3))) for line in out.splitlines() if line.strip()]

    def job_detail(self, job_id: str) -> dict[str, str]:
        """``scontrol -d show job`` of one job as a dict (``Partition``, ``TresPerJob``, and
        while it runs ``JOB_GRES``, the GRES it was allocated)."""
        out = self.run("scontrol", "show", "job", "--oneliner", "--details", job_id).stdout
        return dict(field.split("=", 1) for field in out.split() if "=" in field)

    def log_tail(self, n_chars: int = 1500) -> str:
        """The last characters of each daemon's log, for error messages."""
        parts = []
        for name in DAEMONS:
            path = self.log_dir / f"{name}.log"
            if path.exists():
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-n_chars:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel all jobs, then kill the daemons and whatever they started."""
        if self._procs.get("slurmctld") and self._procs["slurmctld"].poll() is None:
            try:
                self.run("scancel", "--user", str(os.getuid()), check=False, timeout=10)
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline and any(
                        j["state"] in ("RUNNING", "PENDING", "COMPLETING", "CONFIGURING")
                        for j in self.jobs()):
                    time.sleep(0.5)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                logger.warning("could not drain the test cluster's queue: %s", exc)
        for name in reversed(DAEMONS):
            proc = self._procs.pop(name, None)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        for pid in _marked_pids(str(self.root)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _marked_pids(root: str) -> list[int]:
    """Pids of processes whose environment carries this cluster's marker (slurmstepd, jobs)."""
    needle = f"{MARKER}={root}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _placeholder_gpu_devices(folder: Path, count: int) -> list[str]:
    """Device files for ``count`` placeholder GPUs: copies of /dev/null (char 1:3).

    slurmd drops a file-less gpu GRES, so each placeholder GPU needs a device file; nothing
    ever opens it (task/none, no cgroups). Where mknod is not permitted, /dev/null itself
    stands in for a single GPU.
    """
    if count <= 0:
        return []
    folder.mkdir(exist_ok=True)
    paths = []
    try:
        for index in range(count):
            path = folder / f"gpu{index}"
            if not path.exists():
                os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
            paths.append(str(path))
    except OSError as exc:
        logger.warning("mknod not permitted (%s): the test node gets one GPU, /dev/null", exc)
        paths = ["/dev/null"]
    return paths


def _srun_shim(folder: Path, conf: Path) -> Path:
    """A folder with an ``srun`` that restores ``SLURM_CONF`` before running the real one.

    snakemake-executor-plugin-slurm-jobstep (0.6) deletes every ``SLURM_*`` variable but a
    few job ids before it calls ``srun`` inside the job, ``SLURM_CONF`` included; without a
    /etc/slurm/slurm.conf that srun then finds no cluster. The shim, first on the jobs'
    PATH, points srun back at this cluster's config.
    """
    folder.mkdir(exist_ok=True)
    shim = folder / "srun"
    shim.write_text(f'#!/bin/sh\nSLURM_CONF={conf} exec {shutil.which("srun")} "$@"\n')
    shim.chmod(0o755)
    return folder


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _node_memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise SlurmUnavailable("cannot read MemTotal from /proc/meminfo")


def _slurm_conf(root: Path, *, node: str, partitions: Sequence[str], cpus: int, memory_mb: int,
                gpus: int, ctld_port: int, slurmd_port: int) -> str:
    gres = f" Gres=gpu:{gpus}" if gpus else ""
    lines = [f"PartitionName={name} Nodes={node} Default={'YES' if i == 0 else 'NO'} "
             "MaxTime=INFINITE State=UP" for i, name in enumerate(partitions)]
    return f"""\
ClusterName=hmstest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=3600
KillWait=5
InactiveLimit=0
Waittime=0
SlurmctldTimeout=30
SlurmdTimeout=30
GresTypes=gpu
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb}{gres} State=UNKNOWN
""" + "\n".join(lines) + "\n"


def _start(cluster: SlurmCluster, name: str, cmd: list[str]) -> None:
    out = (cluster.log_dir / f"{name}.stdout").open("w")
    cluster._procs[name] = subprocess.Popen(cmd, env=cluster.env, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(cluster: SlurmCluster, what: str, ready, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for name, proc in cluster._procs.items():
            if proc.poll() is not None:
                stdout = (cluster.log_dir / f"{name}.stdout").read_text(errors="replace")[-1500:]
                raise SlurmUnavailable(f"{name} exited with code {proc.returncode} while waiting "
                                       f"for {what}:\n{stdout}\n{cluster.log_tail()}")
        if ready():
            return
        time.sleep(0.3)
    raise SlurmUnavailable(f"timed out after {timeout_s:.0f} s waiting for {what}:\n{cluster.log_tail()}")


def start_cluster(root: str | os.PathLike, *, partitions: Sequence[str] = ("main",),
                  cpus: int | None = None, gpus: int = 0, memory_mb: int | None = None,
                  timeout_s: float = 60) -> SlurmCluster:
    """Start a single-node SLURM cluster on localhost with all its state under ``root``.

    Parameters
    ----------
    root : path
        Empty or missing folder for the cluster's files.
    partitions : sequence of str, default ("main",)
        Partition names; each holds the one node, the first is the default.
    cpus : int, optional
        CPUs of the node; default: this machine's CPU count.
    gpus : int, default 0
        Count of placeholder ``gpu`` GRES on the node (no devices: CUDA stays unavailable to
        jobs); lets ``--gpus=N`` requests be scheduled for N <= gpus.
    memory_mb : int, optional
        Memory of the node in MB; default: this machine's total memory.
    timeout_s : float, default 60
        How long to wait for the node to become idle, s.

    Returns
    -------
    SlurmCluster
        The running cluster; call ``stop()`` when done.

    Raises
    ------
    SlurmUnavailable
        Not root, a binary is missing, or a daemon did not come up (message has its log tail).
    """
    if os.geteuid() != 0:
        raise SlurmUnavailable("the test cluster's slurmd must run as root")
    missing = [b for b in DAEMONS + CLIENTS if shutil.which(b) is None]
    if missing:
        raise SlurmUnavailable(f"missing SLURM/munge binaries {missing} "
                               "(apt-get install slurmctld slurmd slurm-client munge)")
    root = Path(root).resolve()
    for sub in ("munge", "state", "spool", "run", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "munge", 0o700)
    node = socket.gethostname().split(".")[0]
    cpus = cpus or os.cpu_count() or 1
    memory_mb = memory_mb or _node_memory_mb()
    conf = root / "slurm.conf"
    partitions = tuple(dict.fromkeys(partitions))
    if not partitions:
        raise ValueError("start_cluster needs at least one partition name")
    gpu_files = _placeholder_gpu_devices(root / "dev", gpus)
    gpus = len(gpu_files)
    (root / "gres.conf").write_text(
        "".join(f"NodeName={node} Name=gpu File={path}\n" for path in gpu_files))
    conf.write_text(_slurm_conf(root, node=node, partitions=partitions, cpus=cpus, gpus=gpus,
                                memory_mb=memory_mb, ctld_port=_free_port(),
                                slurmd_port=_free_port()))
    key = root / "munge" / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    os.chmod(key, 0o600)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env.update({"SLURM_CONF": str(conf), MARKER: str(root),
                "PATH": f"{_srun_shim(root / 'bin', conf)}{os.pathsep}{env.get('PATH', '')}"})
    cluster = SlurmCluster(root=root, node=node, partitions=partitions, cpus=cpus, gpus=gpus,
                           memory_mb=memory_mb, env=env)
    socket_path = root / "munge" / "munge.socket"
    try:
        _start(cluster, "munged", [
            "munged", "--foreground", "--force", f"--socket={socket_path}", f"--key-file={key}",
            f"--pid-file={root}/run/munged.pid", f"--log-file={root}/log/munged.log",
            f"--seed-file={root}/munge/munged.seed"])
        _wait_for(cluster, "munged's socket", socket_path.exists, timeout_s)
        _start(cluster, "slurmctld", ["slurmctld", "-D", "-f", str(conf)])
        _wait_for(cluster, "slurmctld", lambda: cluster.run("scontrol", "ping", check=False,
                                                            timeout=10).returncode == 0, timeout_s)
        _start(cluster, "slurmd", ["slurmd", "-D", "-f", str(conf), "-N", node])
        _wait_for(cluster, f"node {node} to become idle", lambda: "idle" in cluster.run(
            "sinfo", "--noheader", "--format=%T", check=False, timeout=10).stdout, timeout_s)
    except BaseException:
        cluster.stop()
        raise
    logger.info("test SLURM cluster up: node %s, partitions %s, %d CPUs, %d GPU GRES, %d MB, "
                "root %s", node, ",".join(partitions), cpus, gpus, memory_mb, root)
    return cluster
