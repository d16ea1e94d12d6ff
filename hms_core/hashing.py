"""SHA-256 of files (the one digest written into manifests, results and run keys) and cheap
content fingerprints of written directories (window stores) for run keys."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

CHUNK_BYTES = 1 << 20  # read size; the digest does not depend on it


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 (64 lowercase characters) of the bytes of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


# Files of a store that describe it (array metadata, attributes, the window index): hashed
# whole. Every other file (compressed chunks, shards) is represented by its size and the
# hash of its last TAIL_BYTES: in a sharded Zarr v3 array that tail is the shard index, the
# offset and length of every chunk, so any re-encoded window changes it.
METADATA_SUFFIXES = (".json", ".parquet", ".zarray", ".zattrs", ".zgroup", ".zmetadata")
TAIL_BYTES = 4096


def directory_fingerprint(path: str | os.PathLike) -> str:
    """A cheap content fingerprint (hex SHA-256) of a written directory such as a Zarr store.

    Over every file, in sorted order of relative path (names starting with "." are skipped:
    temporaries, Snakemake's timestamp): the relative path, the size in bytes, and the
    SHA-256 of the whole file for metadata (``METADATA_SUFFIXES``) or of its last
    ``TAIL_BYTES`` bytes otherwise. The cost is one small read per file (about 33,000 for
    the full competition in 16-window shards), never the gigabytes of window data.

    Raises
    ------
    FileNotFoundError
        ``path`` is not a directory.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    digest = hashlib.sha256()
    for file in sorted(_visible_files(root)):
        rel = file.relative_to(root).as_posix()
        size = file.stat().st_size
        if file.name.endswith(METADATA_SUFFIXES):
            content = sha256_file(file)
        else:
            with open(file, "rb") as f:
                f.seek(max(size - TAIL_BYTES, 0))
                content = hashlib.sha256(f.read()).hexdigest()
        digest.update(f"{rel}\0{size}\0{content}\n".encode())
    return digest.hexdigest()


def _visible_files(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith("."):
                yield Path(dirpath) / name
