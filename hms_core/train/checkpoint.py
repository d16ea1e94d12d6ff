"""Resumable training state on disk: run keys, RNG seeding and capture, atomic checkpoint files.

A checkpoint is one ``torch.save`` dict written atomically and durably (temp file, fsync,
rename, folder fsync), so a crash at any moment leaves either the previous checkpoint or the
new one. ``last.pt`` keeps its predecessor as ``last.prev.pt``: a ``last.pt`` that the disk
damaged later is moved aside and the run resumes from the previous one, never from zero. Everything in
it is a tensor or a plain Python value, so it loads with ``torch.load(weights_only=True)``.
Each checkpoint carries the ``run_key`` of the run that wrote it; a checkpoint with a
different key is stale (other inputs or training parameters) and is never resumed.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
import socket
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from hms_core import atomic
from hms_core.errors import HMSError

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
LAST_NAME = "last.pt"
BEST_NAME = "best.pt"
LOCK_NAME = "job.lock"
PREVIOUS_SUFFIX = ".prev"  # last.pt -> last.prev.pt
CORRUPT_INFIX = ".corrupt-"  # last.pt -> last.pt.corrupt-<time>


class CheckpointError(HMSError):
    """A checkpoint exists but cannot be used; the message says how to start fresh on purpose."""


class CheckpointLockedError(CheckpointError):
    """Another process holds the checkpoint folder's lock (a second copy of the same job)."""


class UnreadableCheckpoint(CheckpointError):
    """A checkpoint file exists but cannot be read (torn, truncated, I/O error, not a checkpoint)."""

    def __init__(self, path: Path, problem: str):
        self.path = Path(path)
        super().__init__(f"{path}: unreadable checkpoint ({problem})")


def make_run_key(*parts: Any) -> str:
    """Hash JSON-serialisable ``parts`` (inputs, configs, seeds) into a short hex key.

    Parameters
    ----------
    *parts : Any
        Anything that identifies the run: input file digests, config dicts, fold number.
        Dict keys are sorted, so the key does not depend on insertion order.

    Returns
    -------
    str
        The first 20 hex digits of the SHA-256 of the canonical JSON.
    """
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def capture_rng_state() -> dict[str, Any]:
    """Every random generator's state (Python, NumPy legacy, torch CPU, CUDA) as tensors/plain types."""
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": [py_version, torch.tensor(py_internal, dtype=torch.int64), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos),
                  int(np_has_gauss), float(np_cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }
    return state


def seed_rngs(seed: int) -> None:
    """Seed torch (CPU and CUDA), NumPy's legacy generator and Python's ``random`` with ``seed``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the generators saved by :func:`capture_rng_state`."""
    py_version, py_internal, py_gauss = state["python"]
    random.setstate((int(py_version), tuple(int(v) for v in py_internal.tolist()), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_cached = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), int(np_pos),
                         int(np_has_gauss), float(np_cached)))
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            logger.warning("checkpoint has %d CUDA RNG states but %d devices are visible; "
                           "CUDA RNG not restored", len(cuda_states), torch.cuda.device_count())


def previous_path(path: str | os.PathLike) -> Path:
    """Where the checkpoint replaced by the last save of ``path`` is kept (``last.prev.pt``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}{PREVIOUS_SUFFIX}{path.suffix}")


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any], *,
                    keep_previous: bool = False) -> None:
    """Write ``state`` (must contain ``run_key``) atomically and durably to ``path``.

    ``keep_previous=True`` keeps the checkpoint being replaced as :func:`previous_path`,
    the fallback of :func:`resume_checkpoint` when ``path`` turns out unreadable.
    """
    if "run_key" not in state:
        raise ValueError("a checkpoint needs a run_key")
    atomic.torch_save({"format": CHECKPOINT_FORMAT, **state}, path,
                      previous=previous_path(path) if keep_previous else None)


def load_checkpoint(path: str | os.PathLike, *, run_key: str,
                    map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """Load the checkpoint at ``path`` if it belongs to the run ``run_key``.

    Returns
    -------
    dict | None
        The checkpoint, or None when the file is missing, of another format or written by
        a different run (stale); the reason is logged.

    Raises
    ------
    UnreadableCheckpoint
        The file exists but cannot be read or is not a checkpoint (damage, not absence).
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except MemoryError:  # too little memory says nothing about the file
        raise
    except Exception as exc:  # torn, truncated, EIO: every failure to read is damage
        raise UnreadableCheckpoint(path, f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict):
        raise UnreadableCheckpoint(path, f"holds a {type(state).__name__}, not a checkpoint")
    if state.get("format") != CHECKPOINT_FORMAT:
        logger.warning("ignoring checkpoint %s: format %r, this version writes %r",
                       path, state.get("format"), CHECKPOINT_FORMAT)
        return None
    if state.get("run_key") != run_key:
        logger.warning("ignoring stale checkpoint %s: run key %s differs from this run's %s "
                       "(inputs or training parameters changed); starting fresh",
                       path, state.get("run_key"), run_key)
        return None
    return state


def resume_checkpoint(last_path: str | os.PathLike, *, run_key: str,
                      map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The checkpoint to resume the run ``run_key`` from: ``last.pt``, else the previous one.

    Missing and unreadable are different things. No ``last.pt`` (and no previous one): a
    fresh start (None). An unreadable one is moved aside (``last.pt.corrupt-<time>``) and the
    previous checkpoint (``last.prev.pt``) is used. A stale one (another run key): None.

    Raises
    ------
    CheckpointError
        The folder holds a damaged checkpoint and no usable one: training from scratch
        would silently discard the run's progress, so that takes a deliberate step (the
        message says which).
    """
    last_path = Path(last_path)
    folder = last_path.parent
    moved: list[Path] = []
    for path in (last_path, previous_path(last_path)):
        try:
            state = load_checkpoint(path, run_key=run_key, map_location=map_location)
        except UnreadableCheckpoint as exc:
            moved.append(_move_aside(path))
            logger.error("%s; moved it aside to %s", exc, moved[-1])
            continue
        if state is not None:
            if path != last_path:
                logger.warning("resuming from the previous checkpoint %s (global step %s)",
                               path, state.get("global_step"))
            return state
        if path.exists():  # another run's checkpoint: this run has none to lose
            if not moved:
                return None
            break
    damaged = moved + [p for p in sorted(folder.glob(f"{last_path.name}{CORRUPT_INFIX}*"))
                       if p not in moved]
    if not damaged:
        return None
    raise CheckpointError(
        f"{folder}: no usable checkpoint to resume from: {', '.join(p.name for p in damaged)} "
        f"{'is' if len(damaged) == 1 else 'are'} damaged and no other checkpoint of this run is "
        f"left. To train this job again from scratch on purpose, delete the folder {folder} "
        "(or move it away) and run again.")


def load_best(path: str | os.PathLike, *, run_key: str, epoch: int,
              map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The best epoch's checkpoint (``best.pt``) of the run ``run_key``; it must be ``epoch``'s.

    ``best.prev.pt`` is used when it, not ``best.pt``, holds ``epoch``: a run killed after
    writing a new best but before its ``last.pt`` leaves that epoch's ``best.pt``, and on a
    GPU the redone epoch may not beat the old best again.

    Raises
    ------
    CheckpointError
        Neither file holds this run's ``epoch`` (missing, unreadable or other weights):
        returning the last epoch instead would ship weights the metrics do not describe.
    """
    path = Path(path)
    problems = []
    for candidate in (path, previous_path(path)):
        if not candidate.exists():
            problems.append(f"{candidate.name} is missing")
            continue
        try:
            best = load_checkpoint(candidate, run_key=run_key, map_location=map_location)
        except UnreadableCheckpoint as exc:
            problems.append(str(exc))
            continue
        if best is not None and best.get("epoch") == epoch:
            return best
        problems.append(f"{candidate.name} holds "
                        + ("another run's weights" if best is None else f"epoch {best.get('epoch')}"))
    raise CheckpointError(
        f"{path}: the best epoch's weights (epoch {epoch}) of this run are not on disk "
        f"({'; '.join(problems)}). To train this job again from scratch on purpose, delete the "
        f"folder {path.parent} and run again.")


@contextlib.contextmanager
def exclusive_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold the checkpoint folder ``folder`` exclusively for the block (one copy of a job).

    An ``fcntl.flock`` on ``<folder>/job.lock``, which then names its holder (pid, host,
    start time). The kernel releases it when the block ends or the process dies (even by
    SIGKILL), so a stale lock file never blocks a later run. Works across hosts on local
    filesystems and NFS (where Linux maps ``flock`` to a POSIX lock).

    Raises
    ------
    CheckpointLockedError
        At once, when another process holds the lock (SLURM requeued the job, or a retry
        started while the first copy still runs).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown process"
            raise CheckpointLockedError(
                f"{folder}: another copy of this job is using this checkpoint folder ({holder}); "
                "two copies would overwrite each other's checkpoints. Wait for it to finish or "
                "stop it (a SLURM requeue or a retry while the first copy still runs?); its lock "
                "is released when it exits.") from None
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} since {started}\n"
                  .encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


def _move_aside(path: Path) -> Path:
    """Rename the damaged ``path`` to ``<name>.corrupt-<UTC time>`` (durably) and return it."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}{CORRUPT_INFIX}{stamp}")
    n = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}{CORRUPT_INFIX}{stamp}-{n}")
        n += 1
    try:
        os.replace(path, aside)
        atomic.fsync_dir(path.parent)
    except OSError as exc:
        raise CheckpointError(f"{path}: unreadable and cannot be moved aside ({exc}); check the "
                              "disk, then move it away by hand") from exc
    return aside
