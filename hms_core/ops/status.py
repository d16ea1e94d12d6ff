"""The live status file ``status/run.json`` that long jobs update and ``hms status`` reads."""
from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from hms_core import atomic


def update_status(status_path: str | os.PathLike | None, job: str, **fields: Any) -> None:
    """Merge ``fields`` into ``status_path["jobs"][job]`` atomically.

    Several Snakemake jobs may update the same file at once: an ``flock`` on a sibling
    lock file serialises the read-modify-write, and the write itself is a rename, so a
    reader never sees a partial file. ``status_path=None`` does nothing.
    """
    if status_path is None:
        return
    path = Path(status_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            status = json.loads(path.read_text()) if path.exists() else {}
        except json.JSONDecodeError:
            status = {}
        jobs = status.setdefault("jobs", {})
        entry = jobs.setdefault(job, {})
        entry.update(fields)
        entry["updated_at"] = time.time()
        status["updated_at"] = entry["updated_at"]
        atomic.write_json(path, status)
