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


class DiskFullError(HMSError):
    """A write ran out of disk space; the file it would have replaced is untouched.

    Parameters
    ----------
    path : str
        The file (or folder) being written.
    attempted_bytes : int
        Bytes the write had put on disk or was putting there when it failed.
    free_bytes : int
        Bytes free on that filesystem after the partial write was removed.
    """

    def __init__(self, path, attempted_bytes: int, free_bytes: int):
        self.path = str(path)
        self.attempted_bytes = int(attempted_bytes)
        self.free_bytes = int(free_bytes)
        super().__init__(
            f"{self.path}: disk full: the write needs at least {self.attempted_bytes} bytes "
            f"({self.attempted_bytes / 2**20:.1f} MiB) but only {self.free_bytes} bytes "
            f"({self.free_bytes / 2**20:.1f} MiB) are free on that filesystem; the previous "
            "file, if any, is untouched. Free some space and run again.")
