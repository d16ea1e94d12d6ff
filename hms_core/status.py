"""The live status file ``status/run.json`` that long jobs update and ``hms status`` reads.

Layout::

    {"run":  {"started_at", "cost_per_hour", "currency", "status_interval_s", ...},
     "jobs": {"<job>": {"stage", "model", "fold", "epoch", "epochs", "step", "steps",
                        "loss", "samples_per_s", "elapsed_s", "eta_s", "state",
                        "started_at", "updated_at"}},
     "updated_at": <Unix time, s>}

Jobs call :func:`update_status` as often as they like: progress-only fields are written
at most once per ``status_interval_s`` per job (the rest is kept in memory and written by
the next write, a timer or at exit); a change of any other field, and the job reaching
100%, is written at once.
"""
from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from hms_core import atomic
from hms_core.errors import DataError

logger = logging.getLogger(__name__)

STATUS_FILE = Path("status", "run.json")
# Fields that change every step; everything else (stage, model, fold, epoch, state, ...)
# is written immediately when its value changes.
PROGRESS_FIELDS = frozenset({"step", "loss", "samples_per_s", "elapsed_s", "eta_s", "progress",
                             "lr"})
DEFAULT_INTERVAL_S = 2.0  # what start_run records unless told otherwise
_MISSING = object()


@dataclass
class _JobWriter:
    interval_s: float = 0.0  # until the file's run section says otherwise
    last_write: float = float("-inf")  # time.monotonic() of the last write
    written: dict[str, Any] = field(default_factory=dict)
    pending: dict[str, Any] = field(default_factory=dict)
    timer: threading.Timer | None = None


_writers: dict[tuple[str, str], _JobWriter] = {}
_lock = threading.RLock()


def update_status(status_path: str | os.PathLike | None, job: str, **fields: Any) -> None:
    """Merge ``fields`` into ``status_path["jobs"][job]`` atomically, throttled.

    Several Snakemake jobs may update the same file at once: an ``flock`` on a sibling
    lock file serialises the read-modify-write, and the write itself is a rename, so a
    reader never sees a partial file. ``status_path=None`` does nothing.

    Conventional fields: ``stage``, ``model``, ``fold``, ``epoch`` (1-based) and
    ``epochs``, ``step`` and ``steps`` (over the whole job), ``loss``, ``samples_per_s``,
    ``elapsed_s``, ``eta_s`` (s), ``progress`` (0-1, when steps do not describe it) and
    ``state`` (``"done"`` or ``"failed"`` at the end). Calls that change only
    :data:`PROGRESS_FIELDS` within ``status_interval_s`` (recorded by :func:`start_run`;
    no throttle without it) of the last write are merged in memory and written later (by
    the next write, a timer, :func:`flush_status` or at exit); reaching 100% is written at once.
    """
    if status_path is None:
        return
    key = (str(Path(status_path).absolute()), job)
    with _lock:
        writer = _writers.setdefault(key, _JobWriter())
        writer.pending.update(fields)
        changed = any(name not in PROGRESS_FIELDS and writer.written.get(name, _MISSING) != value
                      for name, value in fields.items())
        finished = (job_progress({**writer.written, **writer.pending}) or 0.0) >= 1.0
        wait_s = writer.last_write + writer.interval_s - time.monotonic()
        if changed or finished or wait_s <= 0:
            _write_pending(key, writer)
        elif writer.timer is None:
            writer.timer = threading.Timer(wait_s, _flush_key, args=(key,))
            writer.timer.daemon = True
            writer.timer.start()


def flush_status() -> None:
    """Write every field held back by the throttle of :func:`update_status` now."""
    with _lock:
        for key, writer in list(_writers.items()):
            if writer.pending:
                _write_pending(key, writer)


def _flush_at_exit() -> None:
    try:
        flush_status()
    except OSError as err:  # e.g. the run directory is gone; nothing left to inform
        logger.warning("status not written at exit: %s", err)


atexit.register(_flush_at_exit)


def _flush_key(key: tuple[str, str]) -> None:
    with _lock:
        writer = _writers.get(key)
        if writer is not None:
            writer.timer = None
            if writer.pending:
                try:
                    _write_pending(key, writer)
                except OSError as err:  # a status write must never kill the job
                    logger.warning("status update of %s failed: %s", key[0], err)


def _write_pending(key: tuple[str, str], writer: _JobWriter) -> None:
    if writer.timer is not None:
        writer.timer.cancel()
        writer.timer = None
    fields, writer.pending = writer.pending, {}
    status = _merge(Path(key[0]), key[1], fields)
    writer.written.update(fields)
    writer.last_write = time.monotonic()
    writer.interval_s = float(status.get("run", {}).get("status_interval_s", 0.0))


def _merge(path: Path, job: str | None, fields: Mapping[str, Any], *, run: bool = False) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            status = json.loads(path.read_text()) if path.exists() else {}
        except json.JSONDecodeError:
            status = {}  # only a file written outside update_status can be partial
        now = time.time()
        if run:
            status.setdefault("run", {}).update(fields)
        else:
            entry = status.setdefault("jobs", {}).setdefault(job, {"started_at": now})
            entry.update(fields)
            entry["updated_at"] = now
        status["updated_at"] = now
        atomic.write_json(path, status)
    return status


def start_run(status_path: str | os.PathLike, *, cost_per_hour: float = 0.0, currency: str = "USD",
              status_interval_s: float = DEFAULT_INTERVAL_S, stale_after_s: float = 900.0,
              **extra: Any) -> None:
    """Record the start of a workflow run in the ``run`` section (Snakefile ``onstart``).

    Parameters
    ----------
    status_path : path-like
        ``status/run.json`` of the working directory.
    cost_per_hour : float
        Machine price per hour of wall time (``currency``); 0 hides the cost.
    status_interval_s : float
        Throttle of progress-only fields in :func:`update_status`, s.
    stale_after_s : float
        A job silent for longer is shown as stale, s.
    **extra
        Any further facts to show (e.g. ``config="config/config.yaml"``).
    """
    _merge(Path(status_path), None, {
        "started_at": time.time(), "finished_at": None, "state": "running",
        "cost_per_hour": float(cost_per_hour), "currency": currency,
        "status_interval_s": float(status_interval_s), "stale_after_s": float(stale_after_s),
        "pid": os.getpid(), **extra}, run=True)


def finish_run(status_path: str | os.PathLike, *, state: str = "finished") -> None:
    """Record the end of the run (Snakefile ``onsuccess``: ``"finished"``, ``onerror``: ``"failed"``)."""
    flush_status()
    _merge(Path(status_path), None, {"finished_at": time.time(), "state": state}, run=True)


def read_status(status_path: str | os.PathLike) -> dict[str, Any]:
    """The content of ``status/run.json`` (``{}`` when the run has not written it yet).

    Raises
    ------
    DataError
        The file exists but is not a JSON object.
    """
    path = Path(status_path)
    if not path.exists():
        return {}
    try:
        status = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(path, f"not valid JSON ({err}); it is rewritten by the next status update")
    if not isinstance(status, dict):
        raise DataError(path, f"expected a JSON object, found {type(status).__name__}")
    return status


def job_progress(entry: Mapping[str, Any]) -> float | None:
    """Fraction 0-1 of a job done: ``progress``, else ``step/steps``, else ``epoch/epochs``."""
    if isinstance(entry.get("progress"), (int, float)):
        return min(max(float(entry["progress"]), 0.0), 1.0)
    for done, total in (("step", "steps"), ("epoch", "epochs")):
        if isinstance(entry.get(done), (int, float)) and entry.get(total):
            return min(max(entry[done] / entry[total], 0.0), 1.0)
    return None
