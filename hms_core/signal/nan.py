"""NaN stretches in a recording: interpolate the short ones, report the long ones.

Infinite samples count as missing too (they are recording faults, see
:func:`hms_core.data.io.read_eeg`), so a single +inf can never spread through a filter.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hms_core.errors import ConfigError


@dataclass
class NanConfig:
    """NaN handling at the recording level.

    Parameters
    ----------
    max_interp_s : float
        NaN gaps up to this length (s) are linearly interpolated; longer gaps are set to 0
        (after DC removal, i.e. to the channel median) and reported. Default 1.0.
    """

    max_interp_s: float = 1.0

    def validate(self, path: str = "preprocessing.nan") -> None:
        """The interpolation limit must be >= 0 s."""
        if not self.max_interp_s >= 0:
            raise ConfigError(f"{path}.max_interp_s: {self.max_interp_s!r} must be >= 0 (seconds)")


def nan_runs(missing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and stop indices (stop exclusive) of the runs of True in a 1-D boolean array."""
    padded = np.concatenate([[False], missing, [False]]).astype(np.int8)
    edges = np.diff(padded)
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def interpolate_short_gaps(x: np.ndarray, *, max_gap_samples: int) -> np.ndarray:
    """Fill NaN runs of at most ``max_gap_samples`` in each column of ``x (n, C)``.

    +-inf samples are missing like NaN. Inner gaps are interpolated linearly between their
    finite neighbours; a short gap at the start or end takes the nearest finite value.
    Longer gaps and all-missing columns become NaN. Returns a new float array; ``x`` is
    not modified.
    """
    out = np.array(x, dtype=np.float64, copy=True)
    bad = ~np.isfinite(out)
    gappy = np.flatnonzero(bad.any(axis=0))
    if not len(gappy):
        return out
    out[bad] = np.nan
    n = out.shape[0]
    for col in gappy:
        values = out[:, col]
        missing = bad[:, col]
        if missing.all():
            continue
        starts, stops = nan_runs(missing)
        short = (stops - starts) <= max_gap_samples
        if not short.any():
            continue
        finite = np.flatnonzero(~missing)
        fill = np.zeros(n, dtype=bool)
        for start, stop in zip(starts[short], stops[short]):
            fill[start:stop] = True
        # np.interp extends the end values as constants, which is the edge rule above.
        values[fill] = np.interp(np.flatnonzero(fill), finite, values[finite])
    return out
