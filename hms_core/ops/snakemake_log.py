"""Read Snakemake's own log (``.snakemake/log/<date>.snakemake.log``): progress and jobs."""
from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

_PROGRESS = re.compile(r"^(\d+) of (\d+) steps \((\d+(?:\.\d+)?)%\) done")
_TOTAL = re.compile(r"^total\s+(\d+)\s*$")
_RULE = re.compile(r"^(?:local)?(?:rule|checkpoint) (\S+):$")
_JOBID = re.compile(r"^\s+jobid: (\d+)")
_WILDCARDS = re.compile(r"^\s+wildcards: (.*)$")
_FINISHED = re.compile(r"^Finished job(?:id:)? (\d+)")
_ERROR = re.compile(r"^Error in rule (\S+):")
_DATE = re.compile(r"^\s+Date: (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)")
_NAME_DATE = re.compile(r"^(\d{4}-\d\d-\d\dT\d{6})")


def newest_snakemake_log(workdir: str | os.PathLike) -> Path | None:
    """The most recent ``.snakemake/log/*.snakemake.log`` of ``workdir``, or None."""
    logs = sorted(Path(workdir, ".snakemake", "log").glob("*.snakemake.log"),
                  key=lambda p: (p.stat().st_mtime, p.name))
    return logs[-1] if logs else None


def parse_snakemake_log(path: str | os.PathLike) -> dict[str, Any]:
    """Summarise one Snakemake log.

    Parameters
    ----------
    path : path-like
        A ``.snakemake/log/*.snakemake.log`` file (it may still be growing).

    Returns
    -------
    dict
        ``log`` (str), ``started_at`` (Unix time in s, or None), ``done`` and ``total``
        (jobs; ``total`` from the job-stats table until the first progress line),
        ``percent`` (0-100 or None), ``running`` (list of ``{rule, jobid, wildcards}``
        started and not finished), ``failed_rules`` (list of str), ``complete`` (the run
        ended: a ``Complete log`` line or nothing to be done), ``nothing_to_do`` (bool) and
        ``error`` (bool: Snakemake reported a failed job or an exception).
    """
    path = Path(path)
    done, total, percent = 0, None, None
    started: dict[int, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    failed: list[str] = []
    summary = {"complete": False, "nothing_to_do": False, "error": False, "started_at": None}
    for line in path.read_text(errors="replace").splitlines():
        if (m := _PROGRESS.match(line)):
            done, total, percent = int(m[1]), int(m[2]), float(m[3])
        elif (m := _TOTAL.match(line)) and percent is None:
            total = int(m[1])
        elif (m := _RULE.match(line)):
            current = {"rule": m[1], "jobid": None, "wildcards": ""}
        elif current is not None and (m := _JOBID.match(line)):
            if current.get("failed"):
                started.pop(int(m[1]), None)
            else:
                current["jobid"] = int(m[1])
                started[current["jobid"]] = current
        elif current is not None and (m := _WILDCARDS.match(line)):
            current["wildcards"] = m[1]
        elif (m := _FINISHED.match(line)):
            started.pop(int(m[1]), None)
        elif (m := _ERROR.match(line)):
            failed.append(m[1])
            summary["error"] = True
            current = {"failed": True}
        elif line.startswith("Complete log"):
            summary["complete"] = True
        elif line.startswith("Nothing to be done"):
            summary["complete"] = summary["nothing_to_do"] = True
        elif line.startswith(("Exiting because a job execution failed", "WorkflowError",
                              "Error: ", "IncompleteFilesException", "LockException")):
            summary["error"] = True
        elif (m := _DATE.match(line)):
            summary["started_at"] = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S").timestamp()
    if summary["started_at"] is None and (m := _NAME_DATE.match(path.name)):
        summary["started_at"] = datetime.strptime(m[1], "%Y-%m-%dT%H%M%S").timestamp()
    if summary["nothing_to_do"]:
        percent = 100.0
    running = [] if summary["complete"] else list(started.values())
    return {"log": str(path), "done": done, "total": total, "percent": percent, "running": running,
            "failed_rules": failed, **summary}
