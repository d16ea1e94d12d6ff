"""Find the Snakemake processes that work in a given directory (they own its lock)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psutil


def snakemake_processes(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """Running Snakemake processes whose working directory is ``workdir``.

    A process counts when its command line runs ``snakemake`` (the script or
    ``python -m snakemake``) and its ``--directory`` (or, without one, its current
    directory) resolves to ``workdir``.

    Returns
    -------
    list of dict
        ``pid`` and ``cmdline`` (list of str) of each such process.
    """
    target = Path(workdir).resolve()
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.info["pid"] == os.getpid() or not _runs_snakemake(cmdline):
            continue
        try:
            cwd = Path(proc.cwd())
        except (psutil.Error, OSError):
            continue
        if _run_directory(cmdline, cwd) == target:
            found.append({"pid": proc.info["pid"], "cmdline": list(cmdline)})
    return found


def _runs_snakemake(cmdline: list[str]) -> bool:
    for i, arg in enumerate(cmdline[:3]):
        if Path(arg).name == "snakemake":
            return True
        if arg == "-m" and i + 1 < len(cmdline) and cmdline[i + 1] == "snakemake":
            return True
    return False


def _run_directory(cmdline: list[str], cwd: Path) -> Path:
    for i, arg in enumerate(cmdline):
        if arg in ("-d", "--directory") and i + 1 < len(cmdline):
            return (cwd / cmdline[i + 1]).resolve()
        if arg.startswith("--directory="):
            return (cwd / arg.split("=", 1)[1]).resolve()
    return cwd.resolve()
