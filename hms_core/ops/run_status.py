"""What an operator sees of a run: the jobs' status file joined with Snakemake's progress,
the processes that own the working directory, the GPUs and the cost so far.

Stages write ``status/run.json`` through :mod:`hms_core.status`; only the operator verbs
(``hms status``, ``hms monitor``, ``hms resume``) read it through :func:`run_status`.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any, Mapping

from hms_core.errors import DataError
from hms_core.ops import gpu, processes, snakemake_log
from hms_core.status import STATUS_FILE, flush_status, job_progress, read_status


def run_status(workdir: str | os.PathLike, *, cost_per_hour: float | None = None,
               now: float | None = None) -> dict[str, Any]:
    """Everything an operator needs about a run, in one JSON-ready dict.

    Parameters
    ----------
    workdir : path-like
        The Snakemake working directory.
    cost_per_hour : float or None
        Machine price per hour; None takes the rate :func:`start_run` recorded.
    now : float or None
        Unix time in s (default: now).

    Returns
    -------
    dict
        ``workdir``, ``host``, ``generated_at``; ``run`` (the recorded run facts with
        ``state``, ``elapsed_s`` and a rough ``eta_s``); ``jobs`` (per job: the fields it
        wrote plus ``progress`` 0-1, ``state`` running/done/failed/stale/stopped, and
        ``eta_s``/``elapsed_s`` advanced to ``now``); ``cost`` (``per_hour``, ``currency``,
        ``so_far``, ``estimated_total``; None where unknown); ``gpu``
        (:func:`hms_core.ops.gpu.gpu_status`); ``snakemake`` (progress from its newest log,
        ``running`` bool, ``pids``).
    """
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise DataError(workdir, "no such run directory (give the Snakemake working directory with -d)")
    now = time.time() if now is None else now
    flush_status()
    status = read_status(workdir / STATUS_FILE)
    run = dict(status.get("run", {}))
    smk_log = snakemake_log.newest_snakemake_log(workdir)
    smk = snakemake_log.parse_snakemake_log(smk_log) if smk_log else {
        "log": None, "done": 0, "total": None, "percent": None, "running": [], "failed_rules": [],
        "complete": False, "nothing_to_do": False, "error": False, "started_at": None}
    pids = [p["pid"] for p in processes.snakemake_processes(workdir)]
    smk.update(running_now=bool(pids), pids=pids)
    # Without any Snakemake log the jobs run outside Snakemake: judge them by freshness.
    alive = bool(pids) or smk_log is None
    stale_after_s = float(run.get("stale_after_s", 900.0))
    jobs = {name: _job_view(entry, now, stale_after_s, alive=alive)
            for name, entry in status.get("jobs", {}).items()}

    started = run.get("started_at") or smk["started_at"]
    end = run.get("finished_at") or (smk_log.stat().st_mtime if smk_log and not pids else now)
    elapsed_s = max(end - started, 0.0) if started else None
    if run.get("state", "running") == "running" and not alive:
        run["state"] = "failed" if smk["error"] else "finished" if smk["complete"] else "stopped"
    run.setdefault("state", "running" if pids else "unknown")
    run["elapsed_s"] = elapsed_s
    run["eta_s"] = _run_eta(smk, jobs, elapsed_s) if run["state"] == "running" else None

    rate = cost_per_hour if cost_per_hour is not None else run.get("cost_per_hour")
    cost = {"per_hour": rate, "currency": run.get("currency", "USD"), "so_far": None,
            "estimated_total": None}
    if rate and elapsed_s is not None:
        cost["so_far"] = rate * elapsed_s / 3600
        if run["eta_s"] is not None:
            cost["estimated_total"] = rate * (elapsed_s + run["eta_s"]) / 3600
    return {"workdir": str(workdir.resolve()), "host": socket.gethostname(), "generated_at": now,
            "run": run, "jobs": jobs, "cost": cost, "gpu": gpu.gpu_status(), "snakemake": smk}


def _job_view(entry: Mapping[str, Any], now: float, stale_after_s: float, *, alive: bool) -> dict:
    view = dict(entry)
    view["progress"] = job_progress(entry)
    age_s = max(now - entry.get("updated_at", now), 0.0)
    view["age_s"] = age_s
    if "state" not in entry:
        if view["progress"] is not None and view["progress"] >= 1.0 and not entry.get("eta_s"):
            view["state"] = "done"
        elif not alive:
            view["state"] = "stopped"
        else:
            view["state"] = "stale" if age_s > stale_after_s else "running"
    if view["state"] == "running":
        if isinstance(entry.get("eta_s"), (int, float)):
            view["eta_s"] = max(entry["eta_s"] - age_s, 0.0)
        if isinstance(entry.get("elapsed_s"), (int, float)):
            view["elapsed_s"] = entry["elapsed_s"] + age_s
    return view


def _run_eta(smk: Mapping[str, Any], jobs: Mapping[str, Mapping], elapsed_s: float | None) -> float | None:
    etas = [j["eta_s"] for j in jobs.values() if j["state"] == "running"
            and isinstance(j.get("eta_s"), (int, float))]
    if smk.get("total") and smk["done"] and elapsed_s:
        etas.append(elapsed_s * (smk["total"] - smk["done"]) / smk["done"])
    return max(etas) if etas else None
