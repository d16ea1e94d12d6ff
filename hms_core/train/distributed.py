"""Multi-process data-parallel training with PyTorch's own torchrun and torch.distributed.

A training job that holds more than one GPU runs as ``torchrun --standalone`` with one
process per GPU (:func:`launch_torchrun`); every process calls the same training code,
and :func:`init_from_env` joins the process group from torchrun's environment variables
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). NCCL is the
backend on CUDA, gloo on CPU. Outside torchrun (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``)
everything here is a no-op and training is the plain single-process loop.

Sharding keeps the global batch: the engine cuts the epoch into batches of
``batch_size`` exactly as one process would, and rank ``r`` of ``W`` trains on the
``r``-th contiguous part of each batch (:func:`shard_bounds`); DDP averages the
gradients, so one optimiser step sees the same rows as the single-process step.

The training loop talks to the other ranks through a :class:`Communicator`
(:func:`communicator`): :class:`SingleProcess`, whose every collective is the identity,
or :class:`DataParallel`, one rank of a torchrun job; so the loop has no branches for
the distributed case.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from hms_core.errors import ConfigError

logger = logging.getLogger(__name__)

FOLD_MAIN_MODULE = "hms_core.train.fold_main"


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job.

    Attributes
    ----------
    rank, world_size, local_rank : int
    backend : str
        "nccl" or "gloo"; "none" for a single process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = "none"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0


def choose_backend(device_name: str = "auto") -> str:
    """NCCL when training on CUDA, gloo otherwise (``device_name`` as in ``training.device``)."""
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    return "nccl" if use_cuda else "gloo"


def init_from_env(device_name: str = "auto") -> DistInfo:
    """Join the torchrun process group described by the environment (idempotent).

    Parameters
    ----------
    device_name : {"auto", "cpu", "cuda"}
        ``training.device``; decides the backend and, on CUDA, binds this process to
        GPU ``LOCAL_RANK`` of the visible ones.

    Returns
    -------
    DistInfo
        ``DistInfo()`` (rank 0 of 1) when not started by torchrun.
    """
    if dist.is_available() and dist.is_initialized():
        return current()
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    backend = choose_backend(device_name)
    if backend == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"compute.gpus_per_job: local rank {local_rank} but only "
                              f"{torch.cuda.device_count()} GPUs are visible "
                              f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    logger.info("joined process group: rank %d of %d (%s)", rank, world, backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, backend=backend)


def current() -> DistInfo:
    """This process's :class:`DistInfo` (single process when no group is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())),
                    backend=str(dist.get_backend()))


def is_rank0() -> bool:
    """True in the process that writes files (rank 0, or the only process)."""
    return current().is_rank0


def barrier() -> None:
    """Wait for every rank (no-op for one process)."""
    if current().distributed:
        dist.barrier()


def broadcast_object(obj: Any, *, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (picklable objects; no-op for one process)."""
    if not current().distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` for one process)."""
    info = current()
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s contiguous share of ``n`` items (sizes differ <= 1)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def gather_rows(local: np.ndarray) -> np.ndarray:
    """Concatenate every rank's rows in rank order, on every rank.

    With :func:`shard_bounds` shards this restores the single-process row order.
    """
    parts = all_gather_object(np.ascontiguousarray(local))
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def destroy() -> None:
    """Leave the process group (no-op when none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class Communicator(Protocol):
    """What the training loop asks of the other ranks; see :class:`SingleProcess` and
    :class:`DataParallel`. Every rank must make the same calls in the same order."""

    rank: int
    world_size: int
    is_rank0: bool

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module to train (DDP-wrapped in a job of several processes)."""

    def shard(self, batches: list[list[int]], epoch: int) -> list[list[int]]:
        """This rank's part of each global batch of dataset indices."""

    def scale_loss(self, loss: torch.Tensor, n_local: int, n_global: int) -> torch.Tensor:
        """The loss to backpropagate, so the averaged gradient is the global batch mean's."""

    def batch_mean(self, loss: torch.Tensor, logs: Mapping[str, Any], n_local: int,
                   n_global: int) -> tuple[float, Mapping[str, Any], int]:
        """The global batch's mean loss, mean logs and rows."""

    def agree_signal(self, signum: int | None) -> int | None:
        """The stop signal if any rank received one (the same answer on every rank)."""

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj``."""

    def barrier(self) -> None:
        """Wait for every rank."""


class SingleProcess:
    """The communicator of a one-process run: each collective is the identity."""

    rank = 0
    world_size = 1
    is_rank0 = True

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        return model

    def shard(self, batches: list[list[int]], epoch: int) -> list[list[int]]:
        return batches

    def scale_loss(self, loss: torch.Tensor, n_local: int, n_global: int) -> torch.Tensor:
        return loss

    def batch_mean(self, loss: torch.Tensor, logs: Mapping[str, Any], n_local: int,
                   n_global: int) -> tuple[float, Mapping[str, Any], int]:
        return float(loss.detach()), logs, n_local

    def agree_signal(self, signum: int | None) -> int | None:
        return signum

    def gather(self, obj: Any) -> list[Any]:
        return [obj]

    def broadcast(self, obj: Any) -> Any:
        return obj

    def barrier(self) -> None:
        return None


class DataParallel:
    """The communicator of one rank of a torchrun job: DDP and torch.distributed collectives.

    Parameters
    ----------
    info : DistInfo
        This rank (a joined process group of more than one process).
    device : torch.device
        The training device; collectives of tensors run on it with NCCL, on the CPU with gloo.
    """

    def __init__(self, info: DistInfo, device: torch.device):
        self.rank, self.world_size, self.is_rank0 = info.rank, info.world_size, info.is_rank0
        self._comm_device = device if info.backend == "nccl" else torch.device("cpu")

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            model, device_ids=[torch.cuda.current_device()] if device.type == "cuda" else None)

    def shard(self, batches: list[list[int]], epoch: int) -> list[list[int]]:
        """This rank's contiguous part of every global batch (see :func:`shard_bounds`)."""
        out = []
        for b in batches:
            if len(b) < self.world_size:
                raise ConfigError(f"training.batch_size: a batch of epoch {epoch} has {len(b)} "
                                  f"rows, fewer than the {self.world_size} processes; use "
                                  "drop_last or a larger batch_size")
            start, stop = shard_bounds(len(b), self.rank, self.world_size)
            out.append(b[start:stop])
        return out

    def scale_loss(self, loss: torch.Tensor, n_local: int, n_global: int) -> torch.Tensor:
        """DDP averages gradients over ranks; weight this rank's by its share of the rows."""
        return loss * (self.world_size * n_local / n_global)

    def batch_mean(self, loss: torch.Tensor, logs: Mapping[str, Any], n_local: int,
                   n_global: int) -> tuple[float, dict[str, float], int]:
        names = sorted(logs)
        values = [float(loss.detach()) * n_local, float(n_local),
                  *(float(logs[k]) * n_local for k in names)]
        sums = torch.tensor(values, dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        sums = sums.cpu().tolist()
        n = sums[1]
        return sums[0] / n, {k: v / n for k, v in zip(names, sums[2:])}, n_global

    def agree_signal(self, signum: int | None) -> int | None:
        flag = torch.tensor([signum or 0], dtype=torch.int64, device=self._comm_device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None

    def gather(self, obj: Any) -> list[Any]:
        return all_gather_object(obj)

    def broadcast(self, obj: Any) -> Any:
        return broadcast_object(obj)

    def barrier(self) -> None:
        barrier()


def communicator(info: DistInfo, device: torch.device) -> Communicator:
    """:class:`DataParallel` for a rank of a multi-process job, else :class:`SingleProcess`."""
    return DataParallel(info, device) if info.distributed else SingleProcess()


def visible_gpu_ids(env: dict[str, str] | None = None) -> list[str]:
    """GPU ids this job may use: ``CUDA_VISIBLE_DEVICES`` if set, else every GPU of the box.

    Snakemake counts ``resources: gpu`` but assigns no ids, so a job either inherits
    ``CUDA_VISIBLE_DEVICES`` from its executor (SLURM sets it per allocation) or, on a
    workstation running one multi-GPU job at a time, owns every visible GPU.
    """
    env = os.environ if env is None else env
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is not None:
        return [v.strip() for v in value.split(",") if v.strip() and v.strip() != "-1"]
    return [str(i) for i in range(torch.cuda.device_count())]


def torchrun_command(nproc: int, module_args: Sequence[str], *,
                     module: str = FOLD_MAIN_MODULE) -> list[str]:
    """The ``python -m torch.distributed.run --standalone`` command line for ``nproc`` processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nnodes", "1", "--nproc_per_node", str(int(nproc)),
            "-m", module, *[str(a) for a in module_args]]


def launch_torchrun(nproc: int, module_args: Sequence[str], *,
                    gpu_ids: Sequence[int | str] | None = None,
                    module: str = FOLD_MAIN_MODULE,
                    env: dict[str, str] | None = None,
                    timeout_s: float | None = None) -> int:
    """Run ``module`` in ``nproc`` processes under torchrun and wait for it.

    Parameters
    ----------
    nproc : int
        Processes (one per GPU on CUDA).
    module_args : sequence of str
        Arguments of ``module`` (see :mod:`hms_core.train.fold_main`).
    gpu_ids : sequence, optional
        GPU ids of this job's allocation; sets ``CUDA_VISIBLE_DEVICES`` for the job so
        local rank ``i`` uses ``gpu_ids[i]``. Must hold at least ``nproc`` ids. None keeps
        the inherited visibility (CPU/gloo runs).
    module : str, default ``hms_core.train.fold_main``
    env : mapping, optional
        The environment (default: this process's).
    timeout_s : float, optional
        Wall-clock limit in s; the job is killed past it (``subprocess.TimeoutExpired``).

    The job's stdout and stderr go to this process's ``sys.stderr`` when that is a file
    (so a Snakemake rule's log gets them), else they are inherited. SIGTERM/SIGINT sent to
    this process while it waits are passed on to torchrun, which stops every rank (rank 0
    writes the emergency checkpoint); the exit status then reports the failure.

    Returns
    -------
    int
        torchrun's exit status (0 when every rank succeeded).
    """
    if int(nproc) < 1:
        raise ConfigError(f"compute.gpus_per_job: need >= 1 process, got {nproc!r}")
    run_env = dict(os.environ if env is None else env)
    if gpu_ids is not None:
        ids = [str(g) for g in gpu_ids]
        if len(ids) < int(nproc):
            raise ConfigError(f"compute.gpus_per_job: {nproc} processes but only {len(ids)} "
                              f"GPU ids given ({','.join(ids) or 'none'})")
        run_env["CUDA_VISIBLE_DEVICES"] = ",".join(ids[:int(nproc)])
    # One intra-op thread per rank unless the caller chose otherwise (torchrun warns, too).
    run_env.setdefault("OMP_NUM_THREADS", "1")
    cmd = torchrun_command(nproc, module_args, module=module)
    logger.info("launching %s (CUDA_VISIBLE_DEVICES=%s)", " ".join(cmd),
                run_env.get("CUDA_VISIBLE_DEVICES"))
    stream = _inherited_stderr()
    proc = subprocess.Popen(cmd, env=run_env, stdout=stream, stderr=stream)
    with _forward_signals(proc):
        try:
            return proc.wait(timeout=timeout_s)
        except BaseException:
            proc.kill()
            proc.wait()
            raise


@contextlib.contextmanager
def _forward_signals(proc: subprocess.Popen):
    """Pass SIGTERM/SIGINT on to ``proc`` (torchrun hands them to every rank, which
    checkpoint and exit) instead of dying and leaving the job running."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def forward(signum, frame):
        logger.warning("received signal %d: passing it on to the torchrun job", signum)
        proc.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, forward)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _inherited_stderr() -> Any:
    """``sys.stderr`` when it is a real file (a rule's log under ``rule_context``), else None."""
    try:
        sys.stderr.flush()
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    return sys.stderr
