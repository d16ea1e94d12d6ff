"""Preprocessing of one batch of recordings into one Zarr window store.

Per recording: read the parquet once, clean it (NaN gaps, DC, ICA; see
:mod:`hms_core.signal.ica`) and cut all its labelled windows (``ica.fit_on``: the cleaning is
fitted on the whole recording, or on each 50 s window as ``hms predict`` does), run :class:`WindowFrontend` on
them in batched torch calls (chains, referential channels, spectrograms), cut the Kaggle spectrogram windows, and append everything
to the batch store. The store is written under a temporary name and renamed when the
batch is complete, so an interrupted batch leaves nothing behind and is redone whole.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import pandas as pd
import torch

from hms_core import atomic
from hms_core.config import check_option, from_mapping
from hms_core.contract import (EEG_CHANNELS, N_RAW_CHANNELS, SAMPLING_RATE_HZ, SPEC_WINDOW_ROWS, VOTE_COLUMNS,
                               WINDOW_SAMPLES)
from hms_core.data.validate import OnBad
from hms_core.errors import ConfigError, DataError
from hms_core.status import update_status
from hms_core.signal.filters import FilterConfig
from hms_core.signal.frontend import (FRONTEND_FIELDS, FrontendConfig, WindowFrontend, kaggle_spec_image,
                                     window_shapes)
from hms_core.signal.ica import IcaConfig, clean_recording
from hms_core.signal.nan import NanConfig
from hms_core.signal.shared_frames import RecordingSpectrograms
from hms_core.signal.spectrogram import SpectrogramConfig
from hms_core.store import INDEX_COLUMNS, StoreCompressor, StoreWriter

logger = logging.getLogger(__name__)

FrontendDevice = Literal["auto", "cpu", "cuda"]
FRONTEND_DEVICES = typing.get_args(FrontendDevice)


@dataclass
class PreprocessConfig:
    """The ``preprocessing`` config section.

    Parameters
    ----------
    nan : NanConfig
        NaN gap handling (``max_interp_s``).
    clip_uv : float
        Chains and referential channels are clipped to +-clip_uv uV; default 1024.
    filter : FilterConfig
        Window band-pass / notch.
    ica : IcaConfig
        Recording-level artifact removal.
    spectrogram : SpectrogramConfig
        STFT / mel settings.
    dtype : {"float16", "float32"}
        Store dtype; default "float16".
    on_bad_recording : {"error", "skip"}
        What a bad recording does: "error" (default) stops the batch with a DataError naming
        it; "skip" lists it in the quarantine report and leaves it out of the store.
    n_batches : int
        Number of batch stores the recordings are split into; default 8.
    windows_per_shard : int
        Windows per shard file in the store; default 16.
    compressor : {"zstd", "lz4"}
        Blosc codec of the store's chunks (byte shuffle, one Blosc block per window); default
        "lz4". A store is written once and read every epoch of every fold of every model, so
        decoding speed weighs more than its size. Measured on the realistic synthetic batch
        (float16, one core, per window): lz4 level 9 writes in about 1.5 ms of compression,
        1.01 MB, and decodes in 0.32 ms; zstd level 1 in 2.75 ms, 0.90 MB (12% less; 19% less on
        the spectrogram fields), decoding in 0.81 ms. lz4 has no entropy coding, so on smoother
        signals the gap in size may be larger: take zstd (level 1) when disk matters more.
    compression_level : int
        Blosc level of ``compressor``, 0 (none) to 9; default 9, lz4's best ratio (level 1: 6%
        larger, 0.5 ms less per window). For zstd take 1: level 3 makes the stores about 4%
        smaller for 2.7x the compression time, and 9 is very slow.
    frontend_batch : int
        Windows per front-end call; default 8. Small batches keep every temporary of the front
        end below glibc's mmap threshold (32 MiB), so its memory is reused from one call to the
        next instead of being mapped afresh: on the CPU, 8 takes about 1 s less system time
        (page faults) per 300 windows than 64 for the same user time. On a GPU (``device:
        cuda``) 64 gives the device bigger calls.
    device : {"auto", "cpu", "cuda"}
        Where the front end (filter, montage, STFT, mel) runs: "auto" (default) takes the
        GPU when CUDA is available, else the CPU. The recording-level cleaning (NaN gaps,
        ICA) always runs on the CPU.
    """

    nan: NanConfig = field(default_factory=NanConfig)
    clip_uv: float = 1024.0
    filter: FilterConfig = field(default_factory=FilterConfig)
    ica: IcaConfig = field(default_factory=IcaConfig)
    spectrogram: SpectrogramConfig = field(default_factory=SpectrogramConfig)
    dtype: Literal["float16", "float32"] = "float16"
    on_bad_recording: OnBad = "error"
    n_batches: int = 8
    windows_per_shard: int = 16
    compressor: StoreCompressor = "lz4"
    compression_level: int = 9
    frontend_batch: int = 8
    device: FrontendDevice = "auto"

    def validate(self, path: str = "preprocessing") -> None:
        """Raise ConfigError naming ``<path>.<key>`` for a count below 1, a bad clip level or device."""
        check_option(f"{path}.device", self.device, FRONTEND_DEVICES)
        if not isinstance(self.compression_level, int) or not 0 <= self.compression_level <= 9:
            raise ConfigError(f"{path}.compression_level: {self.compression_level!r} must be an integer in [0, 9]")
        for key in ("n_batches", "windows_per_shard", "frontend_batch"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{path}.{key}: {value!r} must be a positive integer")
        self.frontend.validate(path)

    @property
    def frontend(self) -> FrontendConfig:
        """The window-level part, as :class:`WindowFrontend` (and the ONNX export) takes it."""
        return from_mapping(FrontendConfig, {"clip_uv": float(self.clip_uv), "filter": asdict(self.filter),
                                             "spectrogram": asdict(self.spectrogram)}, "preprocessing")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def assign_batches(train_df: pd.DataFrame, n_batches: int) -> dict[int, list[int]]:
    """Split the recordings of ``train_df`` into ``n_batches`` batches balanced by rows.

    Deterministic: recordings are placed largest first (ties by eeg_id) into the batch with
    the fewest rows so far (ties by batch number). Every eeg_id lands in exactly one batch;
    with more batches than recordings some batches are empty.

    Returns
    -------
    dict
        ``batch number -> sorted list of eeg_id``, for every batch 0..n_batches-1.
    """
    if not isinstance(n_batches, int) or isinstance(n_batches, bool) or n_batches < 1:
        raise ConfigError(f"preprocessing.n_batches: {n_batches!r} must be a positive integer")
    counts = train_df.groupby("eeg_id").size()
    order = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    load = [0] * n_batches
    batches: dict[int, list[int]] = {b: [] for b in range(n_batches)}
    for eeg_id, n_rows in order:
        target = min(range(n_batches), key=lambda b: (load[b], b))
        batches[target].append(int(eeg_id))
        load[target] += int(n_rows)
    return {b: sorted(ids) for b, ids in batches.items()}


def frontend_device(name: str) -> torch.device:
    """The device of ``preprocessing.device``: "auto" is CUDA when available, else the CPU."""
    check_option("preprocessing.device", name, FRONTEND_DEVICES)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("preprocessing.device: 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def preprocess_batch(data_dir, train_df: pd.DataFrame, eeg_ids: Sequence[int], out_store, cfg, *,
                     threads: int = 1, quarantine_out=None, status_path=None) -> dict[str, Any]:
    """Preprocess the recordings ``eeg_ids`` into the store ``out_store``.

    Parameters
    ----------
    data_dir : path-like
        Kaggle layout (``train_eegs/``, ``train_spectrograms/``).
    train_df : pandas.DataFrame
        train.csv rows (at least those of ``eeg_ids``).
    eeg_ids : sequence of int
        The batch, e.g. from :func:`assign_batches`.
    out_store : path-like
        Store directory to write (replaced atomically when the batch completes).
    cfg : PreprocessConfig or mapping
        The ``preprocess`` config section.
    threads : int
        BLAS and OpenMP threads (threadpoolctl). torch's own thread count is the caller's:
        :func:`hms_core.workflow.rule_context` sets it to the rule's ``threads``.
    quarantine_out : path-like, optional
        JSON report of skipped recordings (``{"bad_recordings": [{eeg_id, path, problem}]}``).
    status_path : path-like, optional
        ``status/run.json`` to update after each recording.

    Returns
    -------
    dict
        ``n_recordings``, ``n_windows``, ``n_bad``.

    Raises
    ------
    DataError
        A bad recording when ``on_bad_recording`` is "error" (nothing is written).
    DiskFullError
        The disk filled up while the store was written: the message names the store and
        the space it needs; nothing is left behind, and a re-run rebuilds the store.
    """
    from threadpoolctl import threadpool_limits
    from tqdm import tqdm

    _keep_freed_memory()
    cfg = cfg if isinstance(cfg, PreprocessConfig) else from_mapping(PreprocessConfig, cfg, "preprocessing")
    eeg_ids = sorted(int(e) for e in eeg_ids)
    rows = train_df[train_df["eeg_id"].isin(eeg_ids)]
    missing = sorted(set(eeg_ids) - set(rows["eeg_id"].unique()))
    if missing:
        raise ValueError(f"eeg_ids {missing[:5]} have no rows in train_df")
    job = f"preprocess_{Path(out_store).name.split('.')[0]}"
    frontend_cfg = cfg.frontend
    frontend = WindowFrontend(frontend_cfg, fir_method="fft").eval().to(frontend_device(cfg.device))
    bad: list[dict[str, Any]] = []
    _remove_stale_temporaries(Path(out_store))
    with threadpool_limits(threads), atomic.atomic_path(out_store) as tmp:
        writer = StoreWriter(tmp, max_windows=len(rows), shapes=window_shapes(frontend_cfg), dtype=cfg.dtype,
                             windows_per_shard=cfg.windows_per_shard, compression_level=cfg.compression_level,
                             compressor=cfg.compressor,
                             name=out_store)
        by_id = dict(tuple(rows.groupby("eeg_id")))
        buffer = np.empty((cfg.frontend_batch, N_RAW_CHANNELS, WINDOW_SAMPLES), dtype=np.float32)
        spectrograms = SpectrogramCache()
        for i, eeg_id in enumerate(tqdm(eeg_ids, desc=job, unit="rec", mininterval=5, disable=None)):
            try:
                chunks = process_recording(data_dir, eeg_id, by_id[eeg_id], cfg, frontend, buffer=buffer,
                                           spectrograms=spectrograms)
            except DataError as err:
                if cfg.on_bad_recording == "error":
                    raise
                logger.warning("skipping bad recording: %s", err)
                bad.append({"eeg_id": eeg_id, "path": err.path, "problem": err.problem})
            else:
                for fields, index in chunks:
                    writer.append(fields, index)
                del chunks, fields, index  # free this recording's windows before the next is read
            if _resident_bytes() > _TRIM_ABOVE_BYTES:
                _release_freed_memory()
            update_status(status_path, job=job, stage="preprocessing", done=i + 1, total=len(eeg_ids),
                          windows=writer.n_written + writer._buffered, bad_recordings=len(bad))
        n_windows = writer.close({"preprocess_config": cfg.to_dict(), "frontend_config": frontend_cfg.to_dict(),
                                  "eeg_ids": eeg_ids, "bad_eeg_ids": [b["eeg_id"] for b in bad]})
    if quarantine_out is not None:
        atomic.write_json(quarantine_out, {"store": str(out_store), "bad_recordings": bad})
    logger.info("%s: %d windows from %d recordings (%d skipped)", out_store, n_windows, len(eeg_ids) - len(bad), len(bad))
    return {"n_recordings": len(eeg_ids) - len(bad), "n_windows": n_windows, "n_bad": len(bad)}


# Freed memory is handed back to the OS only when the process holds more than this (the
# longest recording of a 0.009 share of the full preset peaks at 1.4 GB): each
# trim makes the next recording fault its working memory in afresh (about 5 ms of system time
# per window when trimming after every recording), and below it nothing creeps.
_TRIM_ABOVE_BYTES = 2 << 30


def _keep_freed_memory() -> None:
    """Have glibc keep freed memory for reuse instead of handing it back after every large free.

    Its defaults map each allocation above a (moving) threshold afresh and trim the heap top
    when more than twice that is free, so every recording faults its working memory in again.
    A fixed 32 MiB mmap threshold and a 1 GiB trim threshold keep it (the explicit trim above
    ``_TRIM_ABOVE_BYTES`` still bounds the process); measured on the realistic batch: a third
    fewer page faults, about 0.15 s less system time per 300 windows. Process-wide, as the
    preprocessing job is its process's work; nothing to do off glibc.
    """
    libc = _glibc()
    if libc is not None:
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD (the largest glibc allows)
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD


def _resident_bytes() -> int:
    """Resident set size of this process (Linux; 0 elsewhere, which never trims)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _release_freed_memory() -> None:
    """Return freed heap pages to the OS (glibc). Recordings differ in length, and without
    this the heap fragments and the resident size creeps up after the long ones."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.lru_cache(maxsize=1)
def _glibc():
    """glibc with its allocator controls, or None (another C library: nothing to tune)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def _remove_stale_temporaries(out_store: Path) -> None:
    """Delete what a killed earlier run of this batch left (``atomic_path`` temporaries)."""
    import shutil

    for stale in out_store.parent.glob(f".{out_store.name}.*.tmp"):
        logger.info("removing %s left by an interrupted run", stale)
        shutil.rmtree(stale, ignore_errors=True)


def process_recording(data_dir, eeg_id: int, rows: pd.DataFrame, cfg: PreprocessConfig,
                      frontend: WindowFrontend, *, buffer: np.ndarray | None = None,
                      spectrograms: "SpectrogramCache | None" = None
                      ) -> list[tuple[dict[str, np.ndarray], pd.DataFrame]]:
    """All windows of one recording, in order, as chunks of at most ``cfg.frontend_batch``:
    ``[(fields {name: (c, ...) float32}, index (c rows))]`` (chunks rather than one array per
    field, which would be one more copy of every window of a long recording).

    ``buffer``, float32 ``(frontend_batch, 20, 10000)``, optional: where the cleaned windows of
    each chunk are cut into, reused from one recording to the next (a fresh array per
    recording costs about as much in page faults as the copy itself). ``spectrograms``: a
    :class:`SpectrogramCache` shared by the recordings of a batch (several recordings often
    share one spectrogram file).

    Raises
    ------
    DataError
        Unreadable, truncated or missing parquet, missing channels, a recording shorter
        than an offset needs, an all-NaN recording, or a spectrogram too short.
    """
    from hms_core.data.io import eeg_path, eeg_samples_needed, eeg_window_slice, read_eeg

    rows = rows.sort_values(["eeg_label_offset_seconds", "label_id"])
    path = eeg_path(data_dir, eeg_id)
    raw = read_eeg(path, eeg_id)
    offsets = rows["eeg_label_offset_seconds"].to_numpy()
    needed = eeg_samples_needed(offsets.max())
    if raw.shape[0] < needed:
        raise DataError(path, f"recording has {raw.shape[0]} samples ({raw.shape[0] / SAMPLING_RATE_HZ:.1f} s) "
                              f"but offset {offsets.max():g} s needs {needed}", eeg_id=eeg_id)
    n_eeg = len(EEG_CHANNELS)
    slices = [eeg_window_slice(o) for o in offsets]
    cut_windows, infos = _window_cutter(raw, slices, cfg, eeg_id=eeg_id, path=path, buffer=buffer)
    # NaN count per sample row, summed once: each window's share is a difference of two cumulative sums
    nan_rows = np.concatenate([[0], np.cumsum(np.isnan(raw[:, :n_eeg]).sum(axis=1))])
    nan_fraction = [float(nan_rows[s.stop] - nan_rows[s.start]) / ((s.stop - s.start) * n_eeg) for s in slices]
    parts: list[dict[str, np.ndarray]] = []
    device = frontend.fir.weight.device
    # Windows cut from one cleaned recording share their STFT frames (see signal.shared_frames).
    starts = np.array([s.start for s in slices])
    shared = RecordingSpectrograms(frontend, starts, WINDOW_SAMPLES) if cfg.ica.fit_on == "recording" else None
    chunks = [slice(start, start + cfg.frontend_batch) for start in range(0, len(slices), cfg.frontend_batch)]
    with torch.no_grad():
        for chunk in chunks:
            raw_chunk = torch.from_numpy(cut_windows(chunk)).to(device)
            if shared is None:
                out = frontend.fields(raw_chunk)
            else:
                chains, referential = frontend.signals(raw_chunk)
                eeg_spec, eeg_mel = shared(raw_chunk, chains, starts[chunk])
                out = {"chains": chains, "referential": referential, "eeg_spec": eeg_spec, "eeg_mel": eeg_mel}
            parts.append({name: out[name].cpu().numpy() for name in FRONTEND_FIELDS})
    kaggle = kaggle_windows(data_dir, rows, eeg_id, spectrograms=spectrograms)
    index = rows[list(INDEX_COLUMNS) + list(VOTE_COLUMNS)].reset_index(drop=True)
    index["nan_fraction"] = nan_fraction
    index["ica_removed"] = [json.dumps(info["ica"]["removed"]) for info in infos]
    index["ica_status"] = [info["ica"].get("status", "") for info in infos]
    return [({**fields, "kaggle_spec": kaggle[chunk]}, index.iloc[chunk]) for fields, chunk in zip(parts, chunks)]


def _window_cutter(raw_uv: np.ndarray, slices: Sequence[slice], cfg: PreprocessConfig, *, eeg_id, path,
                   buffer: np.ndarray | None):
    """``(cut, infos)``: ``cut(chunk)`` gives the cleaned windows ``slices[chunk]`` as float32
    ``(c, 20, T)``, as :func:`clean_windows` would, without holding all of them at once."""
    if cfg.ica.fit_on == "window":
        windows, infos = clean_windows(raw_uv, slices, cfg, eeg_id=eeg_id, path=path)
        return (lambda chunk: windows[chunk]), infos
    cleaned, info = clean_recording(raw_uv, cfg, eeg_id=eeg_id, path=path)
    channels_first = np.ascontiguousarray(cleaned.T)  # one transpose, then contiguous window copies
    del cleaned

    def cut(chunk: slice) -> np.ndarray:
        parts = [channels_first[:, s] for s in slices[chunk]]
        out = buffer[:len(parts)] if buffer is not None and len(parts) <= len(buffer) else None
        return np.stack(parts, out=out)

    return cut, [info] * len(slices)


def clean_windows(raw_uv: np.ndarray, slices: Sequence[slice], cfg: PreprocessConfig, *,
                  eeg_id: int | None = None, path=None) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The cleaned labelled windows of one recording, fitted as ``cfg.ica.fit_on`` says.

    Parameters
    ----------
    raw_uv : np.ndarray
        ``(n_samples, 20)`` the whole recording in uV, 200 Hz; may contain NaN.
    slices : sequence of slice
        The windows' sample ranges (:func:`hms_core.data.io.eeg_window_slice`).
    cfg : PreprocessConfig
        ``ica.fit_on`` "recording": :func:`clean_recording` runs once on the whole
        recording and the windows are cut from it. "window": it runs on each window's raw
        samples by themselves, as ``hms predict`` cleans a 50 s test file.
    eeg_id, path
        Named in errors and warnings.

    Returns
    -------
    windows : np.ndarray
        float32 ``(k, 20, window samples)``.
    infos : list of dict
        :func:`clean_recording`'s info for each window (the same dict for every window of
        the recording when fitted on the recording).

    Raises
    ------
    DataError
        From :func:`clean_recording` (with "window": a window whose EEG is all NaN).
    """
    if cfg.ica.fit_on == "window":
        cleaned = [clean_recording(raw_uv[s], cfg, eeg_id=eeg_id, path=path) for s in slices]
        return np.stack([c.T for c, _ in cleaned]), [info for _, info in cleaned]
    cut, infos = _window_cutter(raw_uv, slices, cfg, eeg_id=eeg_id, path=path, buffer=None)
    return cut(slice(None)), infos


class SpectrogramCache:
    """The power arrays of the spectrogram files read lately, at most ``max_bytes`` of them
    (least recently used dropped first): recordings that share a spectrogram file read it once.

    Parameters
    ----------
    max_bytes : int
        Default 256 MiB (about 500 ten-minute spectrograms).
    """

    def __init__(self, max_bytes: int = 256 << 20):
        from collections import OrderedDict

        self.max_bytes = max_bytes
        self._arrays: OrderedDict[int, np.ndarray] = OrderedDict()
        self._bytes = 0
        self.hits = self.misses = 0

    def power(self, data_dir, spectrogram_id: int) -> np.ndarray:
        """``read_spectrogram``'s power array of ``spectrogram_id`` (shared: do not modify it;
        errors as ``read_spectrogram``)."""
        from hms_core.data.io import read_spectrogram, spectrogram_path

        if spectrogram_id in self._arrays:
            self._arrays.move_to_end(spectrogram_id)
            self.hits += 1
            return self._arrays[spectrogram_id]
        self.misses += 1
        power = read_spectrogram(spectrogram_path(data_dir, spectrogram_id), spectrogram_id)[1]
        self._arrays[spectrogram_id] = power
        self._bytes += power.nbytes
        while self._bytes > self.max_bytes and len(self._arrays) > 1:
            self._bytes -= self._arrays.popitem(last=False)[1].nbytes
        return power


def kaggle_windows(data_dir, rows: pd.DataFrame, eeg_id: int, *,
                   spectrograms: SpectrogramCache | None = None) -> np.ndarray:
    """Log images ``(k, 4, 100, 300)`` of the Kaggle spectrogram windows of ``rows``.

    Windows of one spectrogram overlap, so the log image is taken once over the rows they
    span (when that is fewer rows than the windows hold) and the windows are cut from it:
    the same numbers, elementwise. ``spectrograms``: where the files are read through
    (default: a cache for this call only).
    """
    from hms_core.data.io import spectrogram_first_row, spectrogram_path

    spectrograms = spectrograms if spectrograms is not None else SpectrogramCache()

    images: list[np.ndarray | None] = [None] * len(rows)
    ids = rows["spectrogram_id"].to_numpy().astype(np.int64)
    firsts = np.array([spectrogram_first_row(o) for o in rows["spectrogram_label_offset_seconds"]], dtype=np.int64)
    for spectrogram_id in dict.fromkeys(ids.tolist()):  # rows of one eeg usually share one
        path = spectrogram_path(data_dir, spectrogram_id)
        power = spectrograms.power(data_dir, spectrogram_id)
        members = np.flatnonzero(ids == spectrogram_id)
        for i in members:
            if firsts[i] + SPEC_WINDOW_ROWS > len(power):
                offset = rows["spectrogram_label_offset_seconds"].iloc[i]
                raise DataError(path, f"spectrogram has {len(power)} rows but offset {offset:g} s needs "
                                      f"{firsts[i] + SPEC_WINDOW_ROWS}", eeg_id=eeg_id)
        low, high = int(firsts[members].min()), int(firsts[members].max()) + SPEC_WINDOW_ROWS
        with torch.no_grad():
            if high - low < len(members) * SPEC_WINDOW_ROWS:
                span = kaggle_spec_image(torch.from_numpy(power[None, low:high])).numpy()[0]  # (4, 100, span)
                for i in members:
                    images[i] = span[..., firsts[i] - low:firsts[i] - low + SPEC_WINDOW_ROWS]
            else:
                cut = np.stack([power[f:f + SPEC_WINDOW_ROWS] for f in firsts[members]])
                for i, image in zip(members, kaggle_spec_image(torch.from_numpy(cut)).numpy()):
                    images[i] = image
    return np.stack(images)
