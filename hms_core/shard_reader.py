"""Single windows read straight from the window stores' files, without zarr's machinery.

zarr-python 3 serves every ``array[row]`` through its asyncio event loop in another thread:
about 1.7 ms per window, ten times the cost of reading and decoding the window's bytes
(0.1-0.25 ms). Training reads one window per chunk at random, so that overhead was most of a
DataLoader worker's read time. :class:`ShardReader` reads exactly the layouts
:class:`hms_core.store.StoreWriter` writes and verifies every checksum as zarr does;
:func:`open_shard_reader` returns None for any other array, which is then read with zarr.

The layouts (zarr v3, one window per chunk, chunk codecs ``bytes`` (little endian),
``blosc``, ``crc32c``):

- sharded (``windows_per_shard > 1``): codec ``sharding_indexed``, index at the end with
  codecs ``bytes`` (little endian), ``crc32c``. A shard file holds its chunks' bytes, then
  the index: ``(offset, nbytes)`` as little-endian uint64 per chunk (both ``2**64 - 1`` for
  a chunk never written), then the CRC32C of the index;
- unsharded: one file per window holding its chunk.

A chunk is its blosc frame, then the CRC32C of the frame (uint32, little endian).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

_EMPTY = 2**64 - 1
_CRC_BYTES = 4
_INDEX_ENTRY_BYTES = 16  # offset and nbytes, uint64 each
_BLOSC_HEADER_BYTES = 16
CHUNK_CODECS = ["bytes", "blosc", "crc32c"]
INDEX_CODECS = ["bytes", "crc32c"]


class ShardDamage(ValueError):
    """The bytes of a shard do not decode to a window (what zarr raises as ValueError)."""


def _crc32c(data: np.ndarray) -> bytes:
    import google_crc32c

    return np.uint32(google_crc32c.value(data)).astype("<u4").tobytes()


def _head(data: bytes) -> np.ndarray:
    """``data`` without its trailing checksum, as a view (no copy of the chunk)."""
    return np.frombuffer(data, dtype=np.uint8, count=len(data) - _CRC_BYTES)


def _little_endian_codecs(codecs: list, names: list[str]) -> bool:
    return ([c["name"] for c in codecs] == names
            and codecs[0].get("configuration", {}).get("endian", "little") == "little")


def _windows_per_file(meta: dict) -> int | None:
    """Windows per file of array metadata ``meta`` (zarr.json) if it is a layout
    :class:`ShardReader` reads (1: unsharded), else None."""
    try:
        shape = meta["shape"]
        codecs = meta["codecs"]
        grid = meta["chunk_grid"]["configuration"]["chunk_shape"]
        plain = (meta.get("zarr_format") == 3 and meta.get("node_type") == "array"
                 and meta.get("data_type") in ("float16", "float32")
                 and meta["chunk_grid"]["name"] == "regular" and grid[1:] == shape[1:]
                 and meta["chunk_key_encoding"] == {"name": "default", "configuration": {"separator": "/"}}
                 and not meta.get("storage_transformers"))
        if not plain:
            return None
        if _little_endian_codecs(codecs, CHUNK_CODECS):
            return 1 if grid[0] == 1 else None
        sharding = codecs[0]["configuration"]
        if (len(codecs) == 1 and codecs[0]["name"] == "sharding_indexed"
                and sharding["chunk_shape"] == [1, *shape[1:]]
                and sharding.get("index_location", "end") == "end"
                and _little_endian_codecs(sharding["codecs"], CHUNK_CODECS)
                and _little_endian_codecs(sharding["index_codecs"], INDEX_CODECS)):
            return int(grid[0])
    except (KeyError, IndexError, TypeError, AttributeError):
        pass
    return None


class ShardReader:
    """Windows of one store array (``<store>/<field>``), one at a time.

    Parameters
    ----------
    path : path-like
        The array's directory (holding its ``zarr.json``).
    meta : dict
        Its parsed ``zarr.json``.
    windows_per_file : int
        Windows per shard file; 1: unsharded (``_windows_per_file(meta)``).
    """

    def __init__(self, path, meta: dict, windows_per_file: int):
        self.path = Path(path)
        self.shape = tuple(meta["shape"])
        self.dtype = np.dtype(meta["data_type"]).newbyteorder("<")
        self.windows_per_shard = int(windows_per_file)
        self.sharded = meta["codecs"][0]["name"] == "sharding_indexed"
        self.fill_value = float(meta.get("fill_value") or 0.0)
        self.window_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._index_bytes = self.windows_per_shard * _INDEX_ENTRY_BYTES + _CRC_BYTES

    def shard_file(self, row: int) -> Path:
        """The file holding window ``row`` (zarr v3 key ``c/<shard>/0/...``)."""
        return self.path.joinpath("c", str(row // self.windows_per_shard), *["0"] * (len(self.shape) - 1))

    def _chunk(self, row: int) -> bytes | None:
        """The stored bytes of window ``row``; None for a chunk never written."""
        fd = os.open(self.shard_file(row), os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if not self.sharded:
                return os.pread(fd, size, 0)
            if size < self._index_bytes:
                raise ShardDamage(f"shard file of {size} bytes is shorter than its index ({self._index_bytes})")
            index = os.pread(fd, self._index_bytes, size - self._index_bytes)
            if _crc32c(_head(index)) != index[-_CRC_BYTES:]:
                raise ShardDamage("shard index: stored and computed checksum do not match")
            offset, nbytes = (int(v) for v in np.frombuffer(
                index, dtype="<u8", count=2, offset=(row % self.windows_per_shard) * _INDEX_ENTRY_BYTES))
            if offset == _EMPTY and nbytes == _EMPTY:
                return None
            if offset + nbytes > size - self._index_bytes:
                raise ShardDamage(f"chunk at bytes {offset}+{nbytes} does not fit the shard file ({size} bytes)")
            return os.pread(fd, nbytes, offset)
        finally:
            os.close(fd)

    def read(self, row: int, out: np.ndarray | None = None) -> np.ndarray:
        """Window ``row`` (shape ``shape[1:]``, the stored dtype), decoded into ``out`` if given
        (any float dtype; the stored dtype is decoded in place, another one is cast).

        Raises
        ------
        FileNotFoundError
            The file of the window is missing.
        ShardDamage
            A checksum mismatch, or an index or frame that does not fit the file.
        RuntimeError
            Blosc cannot decode the frame.
        """
        import numcodecs.blosc

        if not 0 <= row < self.shape[0]:
            raise IndexError(f"window {row} outside 0..{self.shape[0] - 1}")
        if out is None:
            out = np.empty(self.shape[1:], dtype=self.dtype)
        chunk = self._chunk(row)
        if chunk is None:  # zarr's fill value, as zarr reads it
            out[...] = self.fill_value
            return out
        if len(chunk) < _BLOSC_HEADER_BYTES + _CRC_BYTES:
            raise ShardDamage(f"chunk of {len(chunk)} bytes is too short for a blosc frame")
        frame = _head(chunk)
        if _crc32c(frame) != chunk[-_CRC_BYTES:]:
            raise ShardDamage("chunk: stored and computed checksum do not match")
        # blosc header: version, versionlz, flags, typesize (1 byte each), then uint32 nbytes,
        # blocksize, cbytes
        decoded_bytes, _, frame_bytes = (int(v) for v in np.frombuffer(chunk, dtype="<u4", count=3, offset=4))
        if decoded_bytes != self.window_bytes or frame_bytes != len(frame):
            raise ShardDamage(f"chunk of {len(frame)} bytes is no blosc frame of one window "
                              f"({self.window_bytes} bytes)")
        if out.dtype == self.dtype and out.flags.c_contiguous:
            numcodecs.blosc.decompress(frame, out)
        else:
            window = np.empty(self.shape[1:], dtype=self.dtype)
            numcodecs.blosc.decompress(frame, window)
            out[...] = window
        return out


def open_shard_reader(path) -> ShardReader | None:
    """A :class:`ShardReader` of the array at ``path``, or None if its layout is another
    (older stores, other codecs: read those with zarr). Unreadable metadata raises OSError
    or ValueError."""
    meta = json.loads((Path(path) / "zarr.json").read_text())
    per_file = _windows_per_file(meta)
    return None if per_file is None else ShardReader(path, meta, per_file)
