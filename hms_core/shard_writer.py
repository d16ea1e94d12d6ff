"""Store arrays written straight to their files, without zarr: metadata, chunks, shards.

The writing side of :mod:`hms_core.shard_reader`: the zarr.json, byte layout and checksums
that zarr writes for the store's arrays (described there), so zarr and
:class:`~hms_core.shard_reader.ShardReader` both read them (the tests compare the metadata
with zarr's own). zarr-python 3 sends every chunk through ``asyncio.to_thread`` and its event
loop: on the realistic synthetic batch its writes cost about 8 ms of CPU per window (five
fields, all threads), of which about 4 ms was the compression itself. Here each window is
compressed once, in the calling thread, and each shard file is written with one ``writev``;
preprocessing does not import zarr (0.2 s of CPU per process).
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

_EMPTY = np.uint64(2**64 - 1)
_SHUFFLES = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}
_IOV_MAX = 512  # buffers per writev call (Linux allows 1024)


@dataclass(frozen=True)
class BloscSettings:
    """The ``blosc`` codec of an array: what each window's frame is compressed with."""

    cname: str
    clevel: int
    typesize: int
    shuffle: str = "shuffle"
    blocksize: int = 0

    def configuration(self) -> dict:
        """The codec's ``configuration`` in zarr.json, as zarr writes it."""
        return {"typesize": self.typesize, "cname": self.cname, "clevel": self.clevel, "shuffle": self.shuffle,
                "blocksize": self.blocksize}


def array_metadata(n_windows: int, shape: Sequence[int], dtype: str, windows_per_shard: int,
                   blosc: BloscSettings) -> dict:
    """zarr.json of a store array of ``n_windows`` windows of ``shape``: one window per chunk,
    ``windows_per_shard`` windows per shard file (1: unsharded), chunk codecs ``bytes``,
    ``blosc``, ``crc32c``; what ``zarr.create_array`` writes for the same array."""
    shape = [int(s) for s in shape]
    chunk_codecs = [{"name": "bytes", "configuration": {"endian": "little"}},
                    {"name": "blosc", "configuration": blosc.configuration()}, {"name": "crc32c"}]
    if windows_per_shard > 1:
        codecs = [{"name": "sharding_indexed", "configuration": {
            "chunk_shape": [1, *shape], "codecs": chunk_codecs,
            "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
            "index_location": "end"}}]
    else:
        codecs = chunk_codecs
    return {"shape": [int(n_windows), *shape], "data_type": dtype,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [int(windows_per_shard), *shape]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": 0.0, "codecs": codecs, "attributes": {}, "zarr_format": 3, "node_type": "array",
            "storage_transformers": []}


def group_metadata(attributes: dict) -> dict:
    """zarr.json of a zarr v3 group with ``attributes``."""
    return {"attributes": attributes, "zarr_format": 3, "node_type": "group"}


def _plain(value):
    """numpy scalars and arrays in attributes as the Python values zarr would store."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_json(path: Path, obj: dict) -> None:
    """``obj`` as ``path`` (indented, as zarr writes metadata). Not synced (see write_file)."""
    write_file(path, [json.dumps(obj, indent=2, default=_plain, allow_nan=False).encode()])


def _crc32c(data) -> bytes:
    import google_crc32c

    return int(google_crc32c.value(data)).to_bytes(4, "little")


@contextlib.contextmanager
def _single_threaded_blosc():
    """numcodecs compresses with blosc's global thread pool when called from the main
    thread; one context-local thread is cheaper in CPU (measured: 1.08 against 1.32 ms per
    chains window with the pool's 2 threads). Other threads use one thread anyway."""
    import numcodecs.blosc

    before = numcodecs.blosc.use_threads
    numcodecs.blosc.use_threads = False
    try:
        yield
    finally:
        numcodecs.blosc.use_threads = before


def encode_windows(block: np.ndarray, settings: BloscSettings) -> list[tuple[bytes, bytes]]:
    """One stored chunk per window of ``block`` (``(k, *shape)``, the store's dtype): the
    blosc frame and the CRC32C of the frame (uint32, little endian) that follows it (kept
    apart: joining them would copy the frame)."""
    import numcodecs.blosc

    block = np.ascontiguousarray(block, dtype=block.dtype.newbyteorder("<"))
    cname, shuffle = settings.cname.encode(), _SHUFFLES[settings.shuffle]
    chunks = []
    with _single_threaded_blosc():
        for window in block:
            frame = numcodecs.blosc.compress(window, cname, settings.clevel, shuffle, settings.blocksize,
                                             settings.typesize)
            chunks.append((frame, _crc32c(frame)))
    return chunks


def shard_buffers(chunks: Sequence[tuple[bytes, bytes]], windows_per_shard: int) -> list[bytes]:
    """The buffers of one shard file, in order: its chunks (from :func:`encode_windows`),
    then the index (``(offset, nbytes)`` as little-endian uint64 per slot, both ``2**64 - 1``
    for a slot not written) and the index's CRC32C. ``chunks`` fill the first slots; with
    ``windows_per_shard`` 1 the file is the chunk alone (no sharding)."""
    if windows_per_shard == 1:
        if len(chunks) != 1:
            raise ValueError(f"an unsharded file holds one chunk, got {len(chunks)}")
        return list(chunks[0])
    if not 0 < len(chunks) <= windows_per_shard:
        raise ValueError(f"a shard of {windows_per_shard} windows cannot hold {len(chunks)} chunks")
    index = np.full((windows_per_shard, 2), _EMPTY, dtype="<u8")
    sizes = np.array([len(frame) + len(crc) for frame, crc in chunks], dtype=np.uint64)
    index[:len(chunks), 1] = sizes
    index[:len(chunks), 0] = np.cumsum(sizes) - sizes
    index_bytes = index.tobytes()
    return [buffer for chunk in chunks for buffer in chunk] + [index_bytes + _crc32c(index_bytes)]


def write_file(path: Path, buffers: Sequence[bytes]) -> int:
    """Create ``path`` (and its folders) holding ``buffers`` one after the other; returns
    the bytes written. Not synced: the store syncs every file before its completion marker."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    total = 0
    try:
        pending = [memoryview(b).cast("B") for b in buffers if len(b)]
        first = 0
        while first < len(pending):
            written = os.writev(fd, pending[first:first + _IOV_MAX])
            total += written
            while first < len(pending) and written >= len(pending[first]):
                written -= len(pending[first])
                first += 1
            if written:  # a short write inside a buffer: the rest of it goes next
                pending[first] = pending[first][written:]
    finally:
        os.close(fd)
    return total
