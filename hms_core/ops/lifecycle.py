"""What the Snakefile's ``onstart`` / ``onsuccess`` / ``onerror`` handlers call.

::

    onstart:   hms_core.ops.lifecycle.on_start(".", config.get("ops"))
    onsuccess: hms_core.ops.lifecycle.on_end(".", config.get("ops"), state="finished")
    onerror:   hms_core.ops.lifecycle.on_end(".", config.get("ops"), state="failed")
"""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any, Mapping

from hms_core import status
from hms_core.config import from_mapping
from hms_core.ops import backup
from hms_core.ops.config import OpsConfig

logger = logging.getLogger(__name__)

_periodic: backup.PeriodicBackups | None = None


def on_start(workdir: str | os.PathLike, ops: Mapping[str, Any] | OpsConfig | None) -> None:
    """Record the run's start in ``status/run.json`` and start the automatic backups.

    The record names this host and process (the Snakemake that holds the workdir's lock),
    so :func:`hms_core.ops.resume.clear_stale_locks` can tell whose lock it is.

    Parameters
    ----------
    workdir : path-like
        Snakemake's working directory.
    ops : mapping, OpsConfig or None
        The ``ops`` config section.
    """
    global _periodic
    cfg = ops if isinstance(ops, OpsConfig) else from_mapping(OpsConfig, ops, "ops")
    status.start_run(Path(workdir, status.STATUS_FILE), cost_per_hour=cfg.cost_per_hour,
                     currency=cfg.currency, status_interval_s=cfg.status_interval_s,
                     stale_after_s=cfg.stale_after_s, backup_keep=cfg.backup.keep,
                     host=socket.gethostname())
    if cfg.backup.enabled and _periodic is None:
        _periodic = backup.start_periodic_backups(workdir, interval_min=cfg.backup.interval_min,
                                                  keep=cfg.backup.keep)


def on_end(workdir: str | os.PathLike, ops: Mapping[str, Any] | OpsConfig | None, *,
           state: str = "finished") -> None:
    """Stop the automatic backups, take a final backup and record ``state`` in the status."""
    global _periodic
    cfg = ops if isinstance(ops, OpsConfig) else from_mapping(OpsConfig, ops, "ops")
    if _periodic is not None:
        _periodic.stop()
        _periodic = None
    status.finish_run(Path(workdir, status.STATUS_FILE), state=state)
    if cfg.backup.enabled:
        try:
            backup.create_backup(workdir, keep=cfg.backup.keep)
        except Exception:  # the run's outcome must not change because a backup failed
            logger.exception("final backup of %s failed", workdir)
