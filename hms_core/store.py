"""Per-batch Zarr v3 window stores: the writer used by preprocessing, the reader used by training.

Layout of one store directory (``data/processed/batch_0000.zarr``)::

    zarr.json               group attributes: version, config, shapes, n_windows
    chains/                 (n, 18, 10000)  float16 (or float32), uV, BIPOLAR_PAIRS order
    referential/            (n, 19, 10000)  float16 (or float32), uV, EEG_CHANNELS order
                            (same cleaning, filter and clip as the chains; the average
                            reference is ``x - x.mean(channel axis)``, formed by the models)
    eeg_spec/               (n, 4, F, T)    log power
    eeg_mel/                (n, 4, M, T)    log power
    kaggle_spec/            (n, 4, 100, 300) log power
    index.parquet           one row per window, row i <-> index i of every array
    hms_complete.json       written last: n_windows and the size of every file of the store

Each array has one window per chunk; chunks are grouped into shards of
``windows_per_shard`` windows (fewer files; a read still decodes only the chunks it needs).
Chunks are Blosc frames (zstd or lz4, byte shuffle, one Blosc block per window chunk).
:class:`StoreWriter` writes the zarr v3 files itself (:mod:`hms_core.shard_writer`: zarr's
per-chunk machinery cost more CPU than the compression): it encodes each window once and
writes each shard file once, whole, holding at most one shard of encoded windows per field.
zarr reads the stores as any zarr v3 group.
:class:`WindowStore` reads windows straight from these files with
:class:`hms_core.shard_reader.ShardReader` (zarr's per-read overhead was 10x the decoding),
and with zarr for any other layout (older stores).

Integrity (store version 3): every chunk and every shard index carries a CRC32C checksum,
so changed bytes fail to read instead of decoding to wrong values. All-zero windows are
written too (zarr would otherwise leave their chunk out), so a missing file is always damage.
:class:`WindowStore` checks on open that the completion marker exists and that every shard
file the marker lists is there with the size it was written with; a damaged window is a
:class:`~hms_core.errors.DataError` naming store, field and window. :func:`verify_store`
reads a whole store (``hms doctor``).
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import shutil
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import pandas as pd

from hms_core import atomic, shard_writer
from hms_core.errors import DataError, DiskFullError
from hms_core.shard_reader import ShardReader, open_shard_reader
from hms_core.shard_writer import BloscSettings

logger = logging.getLogger(__name__)

# 2: the ``referential`` field. Version-1 stores are still read (every field but that one).
# 3: CRC32C checksums, all-zero chunks written, the completion marker. Versions 1-2 are read
# without the integrity checks (a warning says so).
STORE_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
CHECKED_VERSION = 3
COMPLETE_FILE = "hms_complete.json"
WINDOW_FIELDS = ("chains", "referential", "eeg_spec", "eeg_mel", "kaggle_spec")
INDEX_FILE = "index.parquet"
INDEX_COLUMNS = ("label_id", "eeg_id", "patient_id", "eeg_label_offset_seconds", "spectrogram_id",
                 "spectrogram_label_offset_seconds")
DTYPES = ("float16", "float32")
StoreCompressor = Literal["zstd", "lz4"]
COMPRESSORS = typing.get_args(StoreCompressor)


# Blosc block of up to 1 MiB: one block per window chunk of the default shapes. zstd
# level 1 against blosc's automatic 32 KiB blocks, on the realistic synthetic batch: 24% less
# compression CPU, 6% fewer bytes, decoding in 0.55x the time.
BLOSC_BLOCK_BYTES = 1 << 20


def _blosc(dtype: str, level: int, compressor: str = "zstd") -> BloscSettings:
    # Byte shuffle: on float16 chains it compresses better than bit shuffle and decodes faster.
    return BloscSettings(cname=compressor, clevel=int(level), typesize=np.dtype(dtype).itemsize, shuffle="shuffle",
                         blocksize=BLOSC_BLOCK_BYTES)


def _codecs(dtype: str, level: int, compressor: str = "zstd") -> tuple:
    """The store's chunk codecs as zarr codecs: compression, then a CRC32C of the compressed
    bytes (zarr's shard index carries its own CRC32C by default)."""
    import zarr.codecs

    return (zarr.codecs.BloscCodec(**_blosc(dtype, level, compressor).configuration()),
            zarr.codecs.Crc32cCodec())


CAST_WINDOWS = 4  # windows cast per step, into a buffer reused for every step


def _cast(block: np.ndarray, dtype: str, buffer: np.ndarray | None = None) -> np.ndarray:
    """``block.astype(dtype)``; float32 to float16 through torch, which rounds the same
    (to nearest even, overflow to inf) with vector instructions, about 2x faster than numpy.
    Into ``buffer[:len(block)]`` if given (its dtype; a fresh array costs twice the cast in
    page faults)."""
    if buffer is not None:
        out = buffer[:len(block)]
        if block.dtype == np.float32 and out.dtype == np.float16:
            import torch

            torch.from_numpy(out).copy_(torch.from_numpy(np.ascontiguousarray(block)))
        else:
            out[...] = block
        return out
    if block.dtype == np.float32 and np.dtype(dtype) == np.float16:
        import torch

        return torch.from_numpy(np.ascontiguousarray(block)).to(torch.float16).numpy()
    return block.astype(dtype)


def shard_key(field: str, shard: int, ndim: int) -> str:
    """Path, relative to the store, of shard ``shard`` of ``field`` (zarr v3 ``c/<i>/0/...``).

    ``ndim`` is the number of per-window dimensions; with ``windows_per_shard`` 1 it is the
    path of the chunk of window ``shard``.
    """
    return "/".join([field, "c", str(shard), *["0"] * ndim])


def _windows_label(first: int, last: int) -> str:
    return f"window {first}" if first == last else f"windows {first}-{last}"


class StoreWriter:
    """Write one batch store at ``path`` (normally the temporary path of ``atomic_path``).

    Parameters
    ----------
    path : path-like
        Directory to create.
    max_windows : int
        Upper bound on the windows that will be appended (rows of the batch in train.csv).
    shapes : dict
        Per-window shape of each field in ``WINDOW_FIELDS``.
    dtype : str
        "float16" (default) or "float32".
    windows_per_shard : int
        Windows per shard file; 1 turns sharding off.
    compression_level : int
        Blosc level, 0 (none) to 9; default 9 (lz4's best ratio; take 1 with zstd).
    compressor : {"zstd", "lz4"}
        Blosc codec; default "lz4" (``preprocessing.compressor`` says when to take which).
    name : path-like, optional
        The store's final path, named in errors (default ``path``).

    Raises
    ------
    DiskFullError
        The disk filled up; the message gives the store's estimated size (bytes needed).
    """

    def __init__(self, path, *, max_windows: int, shapes: Mapping[str, tuple[int, ...]], dtype: str = "float16",
                 windows_per_shard: int = 16, compression_level: int = 9, compressor: str = "lz4", name=None):
        if compressor not in COMPRESSORS:
            raise ValueError(f"compressor {compressor!r}: allowed values are {', '.join(COMPRESSORS)}")
        if not 0 <= int(compression_level) <= 9:
            raise ValueError(f"compression_level {compression_level!r} must lie in [0, 9]")
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r}: allowed values are {', '.join(DTYPES)}")
        self.path = Path(path)
        self.name = Path(name) if name is not None else self.path
        self.dtype = dtype
        self.shard = max(1, int(windows_per_shard))
        self.max_windows = int(max_windows)
        missing = [name for name in WINDOW_FIELDS if name not in shapes]
        if missing:
            raise ValueError(f"{self.path}: no window shape for field(s) {', '.join(missing)} "
                             f"(a store holds {', '.join(WINDOW_FIELDS)})")
        self.shapes = {name: tuple(int(s) for s in shapes[name]) for name in WINDOW_FIELDS}
        self.blosc = _blosc(dtype, compression_level, compressor)
        self.n_written = 0
        with self._disk_full_is_named():
            if self.path.exists():  # a new store replaces whatever is there, as zarr's mode "w"
                shutil.rmtree(self.path)
            self.path.mkdir(parents=True)
            shard_writer.write_json(self.path / "zarr.json", shard_writer.group_metadata({}))
            self._write_array_metadata(max(self.max_windows, 1))
        # Encoded windows not yet in a shard file: (blosc frame, CRC32C) each.
        self._pending: dict[str, list[tuple[bytes, bytes]]] = {name: [] for name in WINDOW_FIELDS}
        self._buffered = 0
        self._index: list[pd.DataFrame] = []
        self._cast_buffers: dict[str, np.ndarray] = {}

    def _write_array_metadata(self, n_windows: int) -> None:
        for name, shape in self.shapes.items():
            (self.path / name).mkdir(exist_ok=True)
            shard_writer.write_json(self.path / name / "zarr.json", shard_writer.array_metadata(
                n_windows, shape, self.dtype, self.shard, self.blosc))

    def append(self, fields: Mapping[str, np.ndarray], index: pd.DataFrame) -> None:
        """Add ``k`` windows: ``fields[name]`` is ``(k, *shape)``, ``index`` has ``k`` rows."""
        k = len(index)
        if self.n_written + self._buffered + k > self.max_windows:
            raise ValueError(f"more windows than max_windows={self.max_windows}")
        blocks = {}
        for name in WINDOW_FIELDS:
            blocks[name] = np.asarray(fields[name])
            if blocks[name].shape != (k, *self.shapes[name]):
                raise ValueError(f"{name}: got shape {blocks[name].shape}, expected {(k, *self.shapes[name])}")
        for name, block in blocks.items():
            buffer = self._cast_buffers.setdefault(name, np.empty((CAST_WINDOWS, *self.shapes[name]), self.dtype))
            for start in range(0, k, CAST_WINDOWS):
                cast = _cast(block[start:start + CAST_WINDOWS], self.dtype, buffer)
                self._pending[name].extend(shard_writer.encode_windows(cast, self.blosc))
        self._index.append(index.reset_index(drop=True))
        self._buffered += k
        if self._buffered >= self.shard:
            with self._disk_full_is_named():
                self._flush(whole_shards_only=True)

    def _flush(self, *, whole_shards_only: bool) -> None:
        """Write the buffered windows as shard files (each written once, whole): all of them,
        or only those that fill whole shards."""
        n = self._buffered - self._buffered % self.shard if whole_shards_only else self._buffered
        for start in range(0, n, self.shard):
            shard = (self.n_written + start) // self.shard
            for name in WINDOW_FIELDS:
                chunks = self._pending[name][start:start + self.shard]
                shard_writer.write_file(self.path / shard_key(name, shard, len(self.shapes[name])),
                                        shard_writer.shard_buffers(chunks, self.shard))
        for name in WINDOW_FIELDS:
            del self._pending[name][:n]
        self.n_written += n
        self._buffered -= n

    def close(self, attributes: Mapping[str, Any] | None = None) -> int:
        """Flush, trim the arrays to the windows written, write the index and attributes,
        sync everything to disk, and write the completion marker last."""
        index = pd.concat(self._index, ignore_index=True) if self._index else pd.DataFrame(
            {c: pd.Series(dtype="int64") for c in INDEX_COLUMNS})
        if len(index) != self.n_written + self._buffered:
            raise RuntimeError(f"index has {len(index)} rows but {self.n_written + self._buffered} windows "
                               "were appended")
        with self._disk_full_is_named():
            self._flush(whole_shards_only=False)
            if self.n_written != max(self.max_windows, 1):
                self._write_array_metadata(self.n_written)
            index.to_parquet(self.path / INDEX_FILE, index=False)
            shard_writer.write_json(self.path / "zarr.json", shard_writer.group_metadata(
                {"hms_store_version": STORE_VERSION, "n_windows": self.n_written, "windows_per_shard": self.shard,
                 "shapes": {k: list(v) for k, v in self.shapes.items()}, "dtype": self.dtype,
                 **dict(attributes or {})}))
            self._write_completion_marker()
        return self.n_written

    def _write_completion_marker(self) -> None:
        files = sorted(p for p in self.path.rglob("*") if p.is_file())
        for file in files:
            atomic.fsync_path(file)
        for folder in sorted({p.parent for p in files}, key=lambda p: len(p.parts), reverse=True):
            atomic.fsync_path(folder)
        marker = {"hms_store_version": STORE_VERSION, "n_windows": self.n_written, "windows_per_shard": self.shard,
                  "files": {p.relative_to(self.path).as_posix(): p.stat().st_size for p in files}}
        atomic.write_json(self.path / COMPLETE_FILE, marker)
        atomic.fsync_path(self.path / COMPLETE_FILE)
        atomic.fsync_path(self.path)

    @contextlib.contextmanager
    def _disk_full_is_named(self):
        """Turn ENOSPC / EDQUOT into a DiskFullError naming the store and the space it needs."""
        try:
            yield
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            partial = _tree_bytes(self.path)
            free = _free_bytes(self.path) + partial  # the partial store is removed after the error
            raise DiskFullError(self.name, self._bytes_needed(partial), free) from err

    def _bytes_needed(self, partial_bytes: int) -> int:
        """The whole store's size: extrapolated from the windows written so far, or
        uncompressed before the first shard."""
        if self.n_written:
            return int(partial_bytes / self.n_written * max(self.max_windows, self.n_written) * 1.05)
        per_window = sum(math.prod(shape) for shape in self.shapes.values()) * np.dtype(self.dtype).itemsize
        return int(per_window * max(self.max_windows, 1))


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else 0


def _free_bytes(path: Path) -> int:
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return shutil.disk_usage(existing).free


def read_store_attributes(path) -> dict[str, Any]:
    """The group attributes of a finished store (config, shapes, n_windows)."""
    meta = Path(path) / "zarr.json"
    if not meta.is_file():
        raise DataError(path, "not a window store (no zarr.json)")
    try:
        return json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError) as err:
        raise DataError(path, f"zarr.json is unreadable ({err}); delete the store and re-run preprocessing") from None


def completeness_problems(path, attrs: Mapping[str, Any]) -> list[str]:
    """What the completion marker of a version-3 store says is missing or damaged.

    Checks, without reading any array: the marker exists and agrees with ``attrs``, every
    shard file that ``n_windows`` needs is listed in it, and every listed file is on disk,
    non-empty and of the size it was written with (a cheap ``stat`` per file).

    Returns
    -------
    list of str
        One line per problem, naming the field and windows of a shard; empty if complete.
    """
    path = Path(path)
    marker_path = path / COMPLETE_FILE
    if not marker_path.exists():
        return [f"incomplete store: {COMPLETE_FILE} (written last) is missing, so the write was interrupted "
                "or the store was copied in part; delete it and re-run preprocessing"]
    try:
        marker = json.loads(marker_path.read_text())
        files, n_windows, per_shard = dict(marker["files"]), int(marker["n_windows"]), int(marker["windows_per_shard"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return [f"{COMPLETE_FILE} is unreadable ({err!r}); delete the store and re-run preprocessing"]
    if n_windows != attrs.get("n_windows"):
        return [f"{COMPLETE_FILE} records {n_windows} windows but zarr.json {attrs.get('n_windows')}"]
    what = {}
    for field, shape in attrs.get("shapes", {}).items():
        for shard in range(math.ceil(n_windows / per_shard)):
            key = shard_key(field, shard, len(shape))
            what[key] = (f"field {field}, "
                         f"{_windows_label(shard * per_shard, min(n_windows, (shard + 1) * per_shard) - 1)} ({key})")
            files.setdefault(key, None)
    problems = []
    for key, written in files.items():
        where = what.get(key, key)
        try:
            size = (path / key).stat().st_size
        except FileNotFoundError:
            problems.append(f"{where}: file missing")
            continue
        except OSError as err:
            problems.append(f"{where}: file unreadable ({err.strerror})")
            continue
        if written is None:
            problems.append(f"{where}: not recorded in {COMPLETE_FILE}")
        elif size == 0 and written:
            problems.append(f"{where}: file is empty, {written} bytes were written")
        elif size != written:
            problems.append(f"{where}: file has {size} bytes, {written} bytes were written (truncated or changed)")
    return problems


def verify_store(path) -> list[str]:
    """Check a whole window store: completeness, then every window of every array decoded.

    For ``hms doctor``. Unlike opening a :class:`WindowStore` (a ``stat`` per file), this
    reads and decodes every byte, so every CRC32C checksum is verified (version-3 stores;
    older ones are only decoded). Nothing is changed.

    Parameters
    ----------
    path : path-like
        A batch store directory (``data/processed/batch_0000.zarr``).

    Returns
    -------
    list of str
        The problems found, each naming the store and, for damaged data, the field and
        window; empty if the store is sound.
    """
    import zarr

    path = Path(path)
    try:
        attrs = read_store_attributes(path)
    except DataError as err:
        return [str(err)]
    checked = attrs.get("hms_store_version", 0) >= CHECKED_VERSION
    problems = [f"{path}: {p}" for p in (completeness_problems(path, attrs) if checked else [])]
    try:
        n_index = len(pd.read_parquet(path / INDEX_FILE))
        if n_index != attrs.get("n_windows", n_index):
            problems.append(f"{path}: {INDEX_FILE} has {n_index} rows, the store {attrs.get('n_windows')} windows")
    except (OSError, ValueError) as err:
        problems.append(f"{path}: {INDEX_FILE} is unreadable ({err})")
    for field in attrs.get("shapes", {}):
        try:
            array = zarr.open_array(path / field, mode="r")
        except (OSError, ValueError, KeyError) as err:
            problems.append(f"{path}: field {field}: array metadata unreadable ({err!r})")
            continue
        step = (array.shards or array.chunks)[0]
        for start in range(0, array.shape[0], step):
            try:
                array[start:start + step]
                continue
            except _READ_ERRORS:
                pass
            for row in range(start, min(start + step, array.shape[0])):  # name the windows
                try:
                    array[row]
                except _READ_ERRORS as err:
                    problems.append(f"{path}: field {field}, window {row}: {_read_error(err)}")
    logger.info("%s: %s", path, f"{len(problems)} problem(s)" if problems else "sound")
    return problems


# What zarr raises for damaged bytes: checksum mismatch and short shard index (ValueError),
# undecodable compressed data (RuntimeError from blosc), unreadable file (OSError).
_READ_ERRORS = (ValueError, RuntimeError, OSError)


def _read_error(err: Exception) -> str:
    if "checksum" in str(err):
        return "CRC32C checksum mismatch: its bytes changed after they were written"
    return f"cannot be decoded ({type(err).__name__}: {err})"


def open_window_source(store_paths: Any) -> Any:
    """A :class:`WindowStore` over ``store_paths`` (one path or several).

    Anything that already is a window source (has ``index`` and ``read``, e.g. a
    ``WindowStore`` or an in-memory source) is returned as is.
    """
    if hasattr(store_paths, "index") and hasattr(store_paths, "read"):
        return store_paths
    return WindowStore([store_paths] if isinstance(store_paths, (str, os.PathLike)) else list(store_paths))


class WindowStore:
    """Random access to the windows of several batch stores.

    Parameters
    ----------
    store_paths : sequence of path-like
        Finished batch stores (written by ``preprocess_batch``).

    Attributes
    ----------
    index : pandas.DataFrame
        One row per window across all stores, in store order, with the store's index
        columns plus ``store`` (position in ``store_paths``) and ``row`` (row in that store).

    Notes
    -----
    Arrays are opened lazily in each process (and reopened after a fork), so a
    ``WindowStore`` can be handed to DataLoader worker processes.
    """

    def __init__(self, store_paths: Sequence[str | os.PathLike]):
        self.paths = [Path(p) for p in ([store_paths] if isinstance(store_paths, (str, os.PathLike)) else store_paths)]
        frames = []
        self.shapes: dict[str, list[int]] = {}
        self._checked: list[bool] = []  # version 3: missing chunks are damage, not zeros
        self._first: list[int] = []  # position in ``index`` of each store's window 0
        for i, path in enumerate(self.paths):
            attrs = read_store_attributes(path)
            self.shapes = self.shapes or attrs.get("shapes", {})
            if attrs.get("shapes") != self.shapes:
                raise DataError(path, f"window shapes {attrs.get('shapes')} differ from {self.shapes} of "
                                      f"{self.paths[0]}; preprocess all batches with one config")
            version = attrs.get("hms_store_version")
            if version not in READABLE_VERSIONS:
                raise DataError(path, f"store version {version!r}, expected one of {list(READABLE_VERSIONS)}")
            if version >= CHECKED_VERSION:
                problems = completeness_problems(path, attrs)
                if problems:
                    more = f" (and {len(problems) - 1} more problem(s); `hms doctor` lists them)" if len(problems) > 1 else ""
                    raise DataError(path, f"{problems[0]}{more}")
            else:
                logger.warning("%s: store version %s has no checksums, so damaged bytes cannot be detected; "
                               "re-run preprocessing to rewrite it", path, version)
            self._checked.append(version >= CHECKED_VERSION)
            index_path = path / INDEX_FILE
            if not index_path.is_file():
                raise DataError(path, f"incomplete store: {INDEX_FILE} missing")
            try:
                frame = pd.read_parquet(index_path)
            except (OSError, ValueError) as err:
                raise DataError(path, f"{INDEX_FILE} is unreadable ({err})") from None
            if len(frame) != attrs.get("n_windows", len(frame)):
                raise DataError(path, f"{INDEX_FILE} has {len(frame)} rows but the store {attrs['n_windows']} windows")
            self._first.append(sum(len(f) for f in frames))
            frame["store"] = i
            frame["row"] = np.arange(len(frame), dtype=np.int64)
            frames.append(frame)
        self.index = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        self._store_of = self.index["store"].to_numpy() if len(self.index) else np.zeros(0, dtype=np.int64)
        self._row_of = self.index["row"].to_numpy() if len(self.index) else np.zeros(0, dtype=np.int64)
        self._arrays: dict[tuple[int, str], Any] = {}
        self._readers: dict[tuple[int, str], ShardReader | None] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_arrays"], state["_readers"] = {}, {}
        return state

    def _array(self, store: int, field: str):
        if self._pid != os.getpid():
            self._arrays, self._readers, self._pid = {}, {}, os.getpid()
        key = (store, field)
        if key not in self._arrays:
            import zarr

            try:
                self._arrays[key] = zarr.open_array(self.paths[store] / field, mode="r")
            except (OSError, ValueError, KeyError) as err:
                raise DataError(self.paths[store], f"field {field}: array metadata unreadable ({err!r}); delete "
                                                   "the store and re-run preprocessing") from None
        return self._arrays[key]

    def _reader(self, store: int, field: str) -> ShardReader | None:
        """The direct reader of ``field`` of store ``store``; None: read it with zarr."""
        if self._pid != os.getpid():
            self._arrays, self._readers, self._pid = {}, {}, os.getpid()
        key = (store, field)
        if key not in self._readers:
            try:
                self._readers[key] = open_shard_reader(self.paths[store] / field)
            except (OSError, ValueError) as err:
                raise DataError(self.paths[store], f"field {field}: array metadata unreadable ({err!r}); delete "
                                                   "the store and re-run preprocessing") from None
        return self._readers[key]

    def _read_window(self, store: int, field: str, row: int, out: np.ndarray) -> None:
        """Window ``row`` of store ``store`` into ``out``; damage is a DataError naming store,
        field and window."""
        reader = self._reader(store, field)
        if reader is not None:
            try:
                reader.read(row, out)
            except FileNotFoundError:
                key = shard_key(field, row // reader.windows_per_shard, len(self.shapes[field]))
                raise self._damage(store, field, row, f"its file {key} is missing") from None
            except _READ_ERRORS as err:
                raise self._damage(store, field, row, _read_error(err)) from err
            return
        array = self._array(store, field)
        try:
            window = array[row]
        except _READ_ERRORS as err:
            raise self._damage(store, field, row, _read_error(err)) from err
        # zarr reads a missing chunk as zeros (+0.0, all bytes 0: a byte test is 20x faster
        # than float16 ``any``).
        if self._checked[store] and not np.ascontiguousarray(window).view(np.uint8).any():
            key = shard_key(field, row // ((array.shards or array.chunks)[0]), len(self.shapes[field]))
            if not (self.paths[store] / key).exists():
                raise self._damage(store, field, row, f"its file {key} is missing")
        out[...] = window

    def _damage(self, store: int, field: str, row: int, problem: str) -> DataError:
        eeg_id = self.index["eeg_id"].iat[self._first[store] + row] if "eeg_id" in self.index else None
        return DataError(self.paths[store], f"field {field}, window {row}: {problem}; the store is damaged: "
                                            "delete it and re-run preprocessing",
                         eeg_id=None if eeg_id is None else int(eeg_id))

    def read(self, rows: np.ndarray, fields: Sequence[str]) -> dict[str, np.ndarray]:
        """Read windows ``rows`` (positions in :attr:`index`) of each field, as float32.

        Returns
        -------
        dict
            ``field -> (len(rows), *shape)`` float32, in the order of ``rows``.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        unknown = [f for f in fields if f not in WINDOW_FIELDS]
        if unknown:
            raise KeyError(f"unknown store fields {unknown}; allowed: {list(WINDOW_FIELDS)}")
        absent = [f for f in fields if f not in self.shapes]
        if absent and len(self.paths):
            raise DataError(self.paths[0], f"store has no field(s) {absent} (written by an older version "
                                           f"of preprocessing); re-run preprocessing to add them")
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows must lie in [0, {len(self)}), got {rows.min()}..{rows.max()}")
        out = {}
        for field in fields:
            shape = tuple(self.shapes[field])
            result = np.empty((len(rows), *shape), dtype=np.float32)
            stores = self._store_of[rows]
            for store in np.unique(stores):
                where = np.flatnonzero(stores == store)
                local = self._row_of[rows[where]]
                unique, first, inverse = np.unique(local, return_index=True, return_inverse=True)
                # One plain read per window, decoded into its place in ``result``: zarr's
                # orthogonal selection on sharded arrays is about 20x slower for scattered rows.
                for r, at in zip(unique, where[first]):
                    self._read_window(int(store), field, int(r), result[at])
                again = where != where[first][inverse]  # rows asked for more than once
                result[where[again]] = result[where[first][inverse][again]]
            out[field] = result
        return out
