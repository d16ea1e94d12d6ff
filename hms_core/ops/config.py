"""Config of the ``ops`` section: cost rate, status throttle, stale-job threshold, backups.

The Snakemake config section ``ops`` is built with ``from_mapping(OpsConfig, config["ops"], "ops")``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hms_core.errors import ConfigError


def _check_number(section: str, key: str, value: Any, *, minimum: float, strict: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value > minimum if strict else value >= minimum)
    if not ok:
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ConfigError(f"{section}.{key}: must be a number {bound}, got {value!r}")


@dataclass
class BackupConfig:
    """Automatic backups of the run's critical state (``backups/<timestamp>/``).

    Parameters
    ----------
    enabled : bool
        Take backups at all (default True).
    interval_min : float
        Minutes between automatic backups (default 30).
    keep : int
        Number of newest backups kept; older ones are deleted (default 5).
    """

    enabled: bool = True
    interval_min: float = 30.0
    keep: int = 5

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"ops.backup.enabled: must be true or false, got {self.enabled!r}")
        _check_number("ops.backup", "interval_min", self.interval_min, minimum=0, strict=True)
        if not isinstance(self.keep, int) or isinstance(self.keep, bool) or self.keep < 1:
            raise ConfigError(f"ops.backup.keep: must be an integer >= 1, got {self.keep!r}")


@dataclass
class OpsConfig:
    """Operating a run: what ``hms status`` / ``hms monitor`` show and how state is kept safe.

    Parameters
    ----------
    cost_per_hour : float
        Price of the machine per hour of wall time, in ``currency`` (default 0: cost not shown).
    currency : str
        Currency label of ``cost_per_hour`` (default ``"USD"``).
    status_interval_s : float
        Minimum seconds between two writes of ``status/run.json`` by one job for
        progress-only fields (step, loss, samples/s, ETA); default 2 s.
    stale_after_s : float
        A running job whose status is older than this is shown as stale (default 900 s).
    backup : BackupConfig
        Automatic backups.
    """

    cost_per_hour: float = 0.0
    currency: str = "USD"
    status_interval_s: float = 2.0
    stale_after_s: float = 900.0
    backup: BackupConfig = field(default_factory=BackupConfig)

    def __post_init__(self) -> None:
        _check_number("ops", "cost_per_hour", self.cost_per_hour, minimum=0, strict=False)
        _check_number("ops", "status_interval_s", self.status_interval_s, minimum=0, strict=False)
        _check_number("ops", "stale_after_s", self.stale_after_s, minimum=0, strict=True)
        if not isinstance(self.currency, str) or not self.currency:
            raise ConfigError(f"ops.currency: must be a non-empty string, got {self.currency!r}")
