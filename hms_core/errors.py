"""Errors that name the file (and recording) that caused them."""
from __future__ import annotations


class HMSError(Exception):
    """Base class of every error hms raises on purpose."""


class ConfigError(HMSError):
    """A config value is invalid; the message names the key, the value and the allowed values."""


class DataError(HMSError):
    """A data file is missing or malformed.

    Parameters
    ----------
    path : str
        The file at fault.
    problem : str
        What is wrong with it, in words a user can act on.
    eeg_id : int | None
        The recording concerned, when there is one.
    """

    def __init__(self, path, problem: str, eeg_id: int | None = None):
        self.path = str(path)
        self.problem = problem
        self.eeg_id = eeg_id
        where = f"{self.path}" + (f" (eeg_id {eeg_id})" if eeg_id is not None else "")
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):  # rebuilt from its fields, so it crosses DataLoader worker processes intact
        return type(self), (self.path, self.problem, self.eeg_id)


class DiskFullError(HMSError):
    """A write ran out of disk space; nothing partial was kept.

    Parameters
    ----------
    path : str
        What was being written.
    needed_bytes : int
        Estimated free space (bytes) the write needs to succeed.
    free_bytes : int
        Free space (bytes) on that file system when the write failed.
    """

    def __init__(self, path, needed_bytes: int, free_bytes: int):
        self.path = str(path)
        self.needed_bytes = int(needed_bytes)
        self.free_bytes = int(free_bytes)
        super().__init__(f"{self.path}: no space left on device; the write needs about "
                         f"{_mb(self.needed_bytes)} MB ({self.needed_bytes:,} bytes), {_mb(self.free_bytes)} MB free. "
                         f"Free some space and re-run: nothing partial was kept.")

    def __reduce__(self):
        return type(self), (self.path, self.needed_bytes, self.free_bytes)


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:,.1f}"
