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
