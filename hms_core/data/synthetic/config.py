"""Options of the synthetic data set (the ``data.synthetic`` config section)."""
from __future__ import annotations

from dataclasses import dataclass

from hms_core.errors import ConfigError


@dataclass
class SyntheticConfig:
    """Options of the synthetic data set (the ``data.synthetic`` config section).

    Parameters
    ----------
    patients : int
        Number of training patients (default 40).
    seed : int
        Random seed; the same seed gives byte-identical files (default 0).
    recordings_per_patient : (int, int)
        Inclusive range of EEG files per patient (default (1, 3)).
    sub_windows : (int, int)
        Inclusive range of labelled sub-windows per EEG file (default (1, 11)).
    n_test : int
        Number of test recordings (50 s EEG + 600 s spectrogram each; default 4).
    two_eeg_fraction : float
        Fraction of sessions (spectrograms) that serve two EEG files (default 0.3).
    nan_fraction : float
        Fraction of EEG files with 1-3 NaN stretches of 0.5-8 s (default 0.35).
    save_answer_key : bool
        Write ``answer_key/`` with the latent vectors (default True).
    """

    patients: int = 40
    seed: int = 0
    recordings_per_patient: tuple[int, int] = (1, 3)
    sub_windows: tuple[int, int] = (1, 11)
    n_test: int = 4
    two_eeg_fraction: float = 0.3
    nan_fraction: float = 0.35
    save_answer_key: bool = True

    def validate(self, path: str = "data.synthetic") -> None:
        """Check counts and fractions; the ranges become ``(min, max)`` tuples of int."""
        self.recordings_per_patient = _int_range(path, "recordings_per_patient", self.recordings_per_patient, 1)
        self.sub_windows = _int_range(path, "sub_windows", self.sub_windows, 1)
        for key in ("patients", "n_test"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{path}.{key}: {value!r} is not a positive integer")
        for key in ("two_eeg_fraction", "nan_fraction"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ConfigError(f"{path}.{key}: {value!r} is not a fraction in [0, 1]")


def _int_range(path: str, key: str, value, minimum: int) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}.{key}: {value!r} is not a [min, max] pair of integers") from None
    if not minimum <= lo <= hi:
        raise ConfigError(f"{path}.{key}: {value!r} needs {minimum} <= min <= max")
    return lo, hi


