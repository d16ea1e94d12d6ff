"""Any EEG recording MNE reads, as the contract's 20 channels in uV at 200 Hz, read in pieces.

:class:`Recording` opens a file with ``mne.io.read_raw(preload=False)``, maps its channel
names to ``RAW_CHANNELS`` (:func:`contract_name`), and :meth:`Recording.read` returns any
sample range of the 200 Hz signal: the source samples it needs (plus a margin) are read
with ``get_data``, scaled from volts to uV, resampled with MNE's polyphase resampler and
trimmed. Memory is bounded by the range asked for, not by the length of the recording.
Samples outside the recording are NaN (the callers' padding); so is a missing EKG channel.
Up to two missing EEG channels may be interpolated with MNE's spherical splines.
"""
from __future__ import annotations

import logging
import math
import os
import re
from fractions import Fraction
from pathlib import Path

import numpy as np

from hms_core.contract import CHANNEL_INDEX, EEG_CHANNELS, EKG_CHANNEL, N_RAW_CHANNELS, SAMPLING_RATE_HZ
from hms_core.errors import DataError

logger = logging.getLogger(__name__)

MAX_INTERPOLATED = 2  # at most this many missing EEG channels may be interpolated
MODERN_NAMES = {"T7": "T3", "T8": "T4", "P7": "T5", "P8": "T6"}  # 10-10 names of the 10-20 ones
_PREFIX = re.compile(r"^(EEG|ECG|EKG)[\s_-]+", re.IGNORECASE)
_SUFFIX = re.compile(r"[\s_-]+(REF|LE|AVG|AV|AR)$", re.IGNORECASE)
_CANONICAL = {name.upper(): name for name in EEG_CHANNELS}
_MARGIN_S = 1.0  # extra source signal on either side of a read, so the resampler's edges fall outside


def contract_name(name: str) -> str | None:
    """The ``RAW_CHANNELS`` name of a recording's channel, or None when it is not one of them.

    Case is ignored; an ``EEG ``/``ECG `` prefix and a ``-REF``, ``-LE``, ``-AVG``, ``-AV``
    or ``-AR`` reference suffix are dropped; the 10-10 names T7, T8, P7, P8 become T3, T4,
    T5, T6; ``ECG``, ``EKG`` (optionally numbered: ``EKG1``) become ``EKG``.
    """
    stripped = name.strip()
    ekg_prefix = stripped.upper().startswith(("ECG", "EKG"))
    core = _SUFFIX.sub("", _PREFIX.sub("", stripped)).strip().upper()
    if re.fullmatch(r"(ECG|EKG)\d?", core) or (ekg_prefix and core in ("", "1", "2")):
        return EKG_CHANNEL
    core = MODERN_NAMES.get(core, core)
    return _CANONICAL.get(core)


def standard_montage_name() -> str:
    """MNE's built-in standard 10-20 positions: "colin27_1020" (MNE >= 1.13), else "standard_1020"."""
    import mne

    builtin = mne.channels.get_builtin_montages()
    return "colin27_1020" if "colin27_1020" in builtin else "standard_1020"


def interpolation_matrix(missing: list[str]) -> np.ndarray:
    """Spherical-spline weights ``(len(missing), 19 - len(missing))`` from the present EEG channels.

    Computed with MNE's ``interpolate_bads`` on the 10-20 montage: it is linear in the data,
    so applying it to unit impulses on the present channels gives its matrix.
    """
    import mne

    present = [c for c in EEG_CHANNELS if c not in missing]
    impulses = np.zeros((len(EEG_CHANNELS), len(present)))
    for j, name in enumerate(present):
        impulses[EEG_CHANNELS.index(name), j] = 1.0
    raw = mne.io.RawArray(impulses, mne.create_info(list(EEG_CHANNELS), SAMPLING_RATE_HZ, "eeg"), verbose=False)
    raw.set_montage(standard_montage_name(), verbose=False)
    raw.info["bads"] = list(missing)
    raw.interpolate_bads(reset_bads=True, verbose=False)
    return raw.get_data(picks=[EEG_CHANNELS.index(c) for c in missing])


class Recording:
    """One EEG file opened lazily, read as ``(n, 20)`` uV at 200 Hz in ``RAW_CHANNELS`` order.

    Parameters
    ----------
    path : path
        Any file ``mne.io.read_raw`` reads (EDF, BDF, BrainVision, FIF, EEGLAB, ...).
    interpolate_missing : bool
        Interpolate up to :data:`MAX_INTERPOLATED` missing EEG channels (spherical splines);
        default False: a missing EEG channel is an error.

    Attributes
    ----------
    source_sfreq_hz : float
        The file's sampling rate.
    n_samples : int
        Length at 200 Hz.
    duration_s : float
        ``n_samples / 200``.
    channel_map : dict
        Contract name -> the file's channel name.
    interpolated : list of str
        EEG channels computed from their neighbours.
    ekg_missing : bool
        No EKG/ECG channel: the EKG column is NaN (cleaning and the models tolerate it).

    Raises
    ------
    DataError
        Unreadable file, two channels mapping to one contract name, missing EEG channels
        (each named), or an empty recording.
    """

    def __init__(self, path: str | os.PathLike, *, interpolate_missing: bool = False):
        import mne

        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(self.path, "recording not found")
        try:
            self.raw = mne.io.read_raw(self.path, preload=False, verbose="error")
        except Exception as err:  # MNE raises many types for unreadable or unsupported files
            raise DataError(self.path, f"not a recording MNE can read ({type(err).__name__}: {err})") from None
        self.channel_map = self._map_channels(self.raw.ch_names)
        missing = [c for c in EEG_CHANNELS if c not in self.channel_map]
        self.interpolated: list[str] = []
        self._interp = None
        if missing:
            if not interpolate_missing or len(missing) > MAX_INTERPOLATED:
                hint = (f" (--interpolate-missing fills at most {MAX_INTERPOLATED})" if interpolate_missing
                        else "; --interpolate-missing interpolates up to 2 with spherical splines")
                raise DataError(self.path, f"missing EEG channel(s) {', '.join(missing)}{hint}; "
                                           f"the file has {', '.join(self.raw.ch_names)}")
            self.interpolated = missing
            self._interp = interpolation_matrix(missing)
            logger.warning("%s: EEG channel(s) %s interpolated from their neighbours (spherical splines)",
                           self.path.name, ", ".join(missing))
        self.ekg_missing = EKG_CHANNEL not in self.channel_map
        if self.ekg_missing:
            logger.warning("%s: no EKG/ECG channel; the EKG column is left NaN", self.path.name)
        self.source_sfreq_hz = float(self.raw.info["sfreq"])
        ratio = Fraction(SAMPLING_RATE_HZ) / Fraction(self.source_sfreq_hz).limit_denominator(1000)
        self._up, self._down = ratio.numerator, ratio.denominator  # 200 Hz samples per source block
        self._n_source = int(self.raw.n_times)
        self.n_samples = self._n_source * self._up // self._down
        if self.n_samples == 0:
            raise DataError(self.path, "recording has no samples")
        self.duration_s = self.n_samples / SAMPLING_RATE_HZ
        self._picks = [self.raw.ch_names.index(self.channel_map[c]) for c in EEG_CHANNELS if c in self.channel_map]
        self._rows = [CHANNEL_INDEX[c] for c in EEG_CHANNELS if c in self.channel_map]
        if not self.ekg_missing:
            self._picks.append(self.raw.ch_names.index(self.channel_map[EKG_CHANNEL]))
            self._rows.append(CHANNEL_INDEX[EKG_CHANNEL])

    def _map_channels(self, names: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for name in names:
            target = contract_name(name)
            if target is None:
                continue
            if target in found:
                raise DataError(self.path, f"channels {found[target]!r} and {name!r} both map to {target}")
            found[target] = name
        return found

    def describe(self) -> dict:
        """What was read, for the outputs: rate, length, channel names, interpolation, EKG."""
        return {"recording": str(self.path), "source_sfreq_hz": self.source_sfreq_hz,
                "duration_s": self.duration_s, "channel_map": self.channel_map,
                "interpolated_channels": self.interpolated, "ekg_missing": self.ekg_missing}

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples ``start:stop`` (200 Hz; may reach outside the recording) as float32 ``(n, 20)`` uV.

        Samples before 0 or at/after :attr:`n_samples` are NaN, as is a missing EKG channel.
        """
        out = np.full((stop - start, N_RAW_CHANNELS), np.nan, dtype=np.float32)
        lo, hi = max(start, 0), min(stop, self.n_samples)
        if hi > lo:
            out[lo - start:hi - start] = self._read_inside(lo, hi)
        return out

    def _read_inside(self, lo: int, hi: int) -> np.ndarray:
        """Samples ``lo:hi`` (inside the recording) in RAW_CHANNELS order, uV."""
        if self._up == self._down:
            data = self.raw.get_data(picks=self._picks, start=lo, stop=hi) * 1e6  # V -> uV
        else:
            data = self._resampled(lo, hi)
        out = np.full((hi - lo, N_RAW_CHANNELS), np.nan, dtype=np.float32)
        out[:, self._rows] = data.T
        if self._interp is not None:
            present = [CHANNEL_INDEX[c] for c in EEG_CHANNELS if c not in self.interpolated]
            out[:, [CHANNEL_INDEX[c] for c in self.interpolated]] = out[:, present] @ self._interp.T
        return out

    def _resampled(self, lo: int, hi: int) -> np.ndarray:
        """``(picks, hi - lo)`` uV at 200 Hz, resampled over whole blocks with a margin.

        A block is ``down`` source samples = ``up`` output samples; reads start on a block
        boundary so every read lands on the same 200 Hz grid, and a margin of at least
        ``_MARGIN_S`` keeps the resampler's edge effects out of the samples returned. NaN
        source samples are resampled as 0 and put back as NaN (nearest output samples).
        """
        import mne

        up, down = self._up, self._down
        margin = max(1, math.ceil(_MARGIN_S * SAMPLING_RATE_HZ / up))
        first = max(lo // up - margin, 0)
        last = min(-(-hi // up) + margin, -(-self._n_source // down))
        src_lo, src_hi = first * down, min(last * down, self._n_source)
        data = self.raw.get_data(picks=self._picks, start=src_lo, stop=src_hi) * 1e6  # V -> uV
        short = last * down - src_hi
        if short > 0:  # the recording ends inside a block: complete it by reflection
            data = np.pad(data, ((0, 0), (0, short)), mode="reflect")
        nan = np.isnan(data)
        if nan.any():
            data = np.where(nan, 0.0, data)
        out = mne.filter.resample(data, up=up, down=down, method="polyphase", verbose="error")
        if nan.any():
            src_of_out = np.minimum((np.arange(out.shape[1]) * down) // up, data.shape[1] - 1)
            out[nan[:, src_of_out]] = np.nan
        offset = lo - first * up
        return out[:, offset:offset + hi - lo]
