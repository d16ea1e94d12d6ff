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

Each array has one window per chunk; chunks are grouped into shards of
``windows_per_shard`` windows (fewer files; a read still decodes only the chunks it needs).
The writer buffers whole shards so every shard file is written exactly once, and memory
stays bounded by one shard per field whatever the batch size.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from hms_core.errors import DataError

logger = logging.getLogger(__name__)

# 2: the ``referential`` field. Version-1 stores are still read (every field but that one).
STORE_VERSION = 2
READABLE_VERSIONS = (1, 2)
WINDOW_FIELDS = ("chains", "referential", "eeg_spec", "eeg_mel", "kaggle_spec")
INDEX_FILE = "index.parquet"
INDEX_COLUMNS = ("label_id", "eeg_id", "patient_id", "eeg_label_offset_seconds", "spectrogram_id",
                 "spectrogram_label_offset_seconds")
DTYPES = ("float16", "float32")


def _compressor(dtype: str):
    import zarr.codecs

    # Byte shuffle: on float16 chains it compresses better than bit shuffle and decodes faster.
    return zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=np.dtype(dtype).itemsize)


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
    """

    def __init__(self, path, *, max_windows: int, shapes: Mapping[str, tuple[int, ...]], dtype: str = "float16",
                 windows_per_shard: int = 16):
        import zarr

        self.path = Path(path)
        self.dtype = dtype
        self.shard = max(1, int(windows_per_shard))
        self.group = zarr.open_group(self.path, mode="w", zarr_format=3)
        missing = [name for name in WINDOW_FIELDS if name not in shapes]
        if missing:
            raise ValueError(f"{self.path}: no window shape for field(s) {', '.join(missing)} "
                             f"(a store holds {', '.join(WINDOW_FIELDS)})")
        self.shapes = {name: tuple(int(s) for s in shapes[name]) for name in WINDOW_FIELDS}
        self.arrays = {}
        for name, shape in self.shapes.items():
            self.arrays[name] = self.group.create_array(
                name, shape=(max(max_windows, 1), *shape), dtype=dtype, chunks=(1, *shape),
                shards=(self.shard, *shape) if self.shard > 1 else None,
                compressors=_compressor(dtype), fill_value=0)
        self.n_written = 0
        self._buffer: dict[str, list[np.ndarray]] = {name: [] for name in WINDOW_FIELDS}
        self._buffered = 0
        self._index: list[pd.DataFrame] = []

    def append(self, fields: Mapping[str, np.ndarray], index: pd.DataFrame) -> None:
        """Add ``k`` windows: ``fields[name]`` is ``(k, *shape)``, ``index`` has ``k`` rows."""
        k = len(index)
        for name in WINDOW_FIELDS:
            block = np.asarray(fields[name])
            if block.shape != (k, *self.shapes[name]):
                raise ValueError(f"{name}: got shape {block.shape}, expected {(k, *self.shapes[name])}")
            self._buffer[name].append(block.astype(self.dtype))
        self._index.append(index.reset_index(drop=True))
        self._buffered += k
        if self._buffered >= self.shard:
            self._flush(whole_shards_only=True)

    def _flush(self, *, whole_shards_only: bool) -> None:
        n = self._buffered - self._buffered % self.shard if whole_shards_only else self._buffered
        if n == 0:
            return
        for name in WINDOW_FIELDS:
            data = np.concatenate(self._buffer[name])
            array = self.arrays[name]
            if self.n_written + n > array.shape[0]:
                raise ValueError(f"more windows than max_windows={array.shape[0]}")
            array[self.n_written:self.n_written + n] = data[:n]
            self._buffer[name] = [data[n:]] if n < len(data) else []
        self.n_written += n
        self._buffered -= n

    def close(self, attributes: Mapping[str, Any] | None = None) -> int:
        """Flush, trim the arrays to the windows written, write the index and attributes."""
        self._flush(whole_shards_only=False)
        for name, array in self.arrays.items():
            array.resize((self.n_written, *self.shapes[name]))
        index = pd.concat(self._index, ignore_index=True) if self._index else pd.DataFrame(
            {c: pd.Series(dtype="int64") for c in INDEX_COLUMNS})
        if len(index) != self.n_written:
            raise RuntimeError(f"index has {len(index)} rows but {self.n_written} windows were written")
        index.to_parquet(self.path / INDEX_FILE, index=False)
        self.group.attrs.update({"hms_store_version": STORE_VERSION, "n_windows": self.n_written,
                                 "shapes": {k: list(v) for k, v in self.shapes.items()}, "dtype": self.dtype,
                                 **dict(attributes or {})})
        return self.n_written


def read_store_attributes(path) -> dict[str, Any]:
    """The group attributes of a finished store (config, shapes, n_windows)."""
    meta = Path(path) / "zarr.json"
    if not meta.is_file():
        raise DataError(path, "not a window store (no zarr.json)")
    return json.loads(meta.read_text()).get("attributes", {})


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
        for i, path in enumerate(self.paths):
            attrs = read_store_attributes(path)
            self.shapes = self.shapes or attrs.get("shapes", {})
            if attrs.get("shapes") != self.shapes:
                raise DataError(path, f"window shapes {attrs.get('shapes')} differ from {self.shapes} of "
                                      f"{self.paths[0]}; preprocess all batches with one config")
            if attrs.get("hms_store_version") not in READABLE_VERSIONS:
                raise DataError(path, f"store version {attrs.get('hms_store_version')!r}, expected one of "
                                      f"{list(READABLE_VERSIONS)}")
            index_path = path / INDEX_FILE
            if not index_path.is_file():
                raise DataError(path, f"incomplete store: {INDEX_FILE} missing")
            frame = pd.read_parquet(index_path)
            frame["store"] = i
            frame["row"] = np.arange(len(frame), dtype=np.int64)
            frames.append(frame)
        self.index = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        self._store_of = self.index["store"].to_numpy() if len(self.index) else np.zeros(0, dtype=np.int64)
        self._row_of = self.index["row"].to_numpy() if len(self.index) else np.zeros(0, dtype=np.int64)
        self._arrays: dict[tuple[int, str], Any] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_arrays"] = {}
        return state

    def _array(self, store: int, field: str):
        if self._pid != os.getpid():
            self._arrays, self._pid = {}, os.getpid()
        key = (store, field)
        if key not in self._arrays:
            import zarr

            self._arrays[key] = zarr.open_array(self.paths[store] / field, mode="r")
        return self._arrays[key]

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
                unique, inverse = np.unique(local, return_inverse=True)
                array = self._array(int(store), field)
                # One plain read per window: zarr's orthogonal selection on sharded arrays
                # is about 20x slower than this for a handful of scattered rows.
                block = np.stack([array[int(r)] for r in unique])
                result[where] = block[inverse]
            out[field] = result
        return out
