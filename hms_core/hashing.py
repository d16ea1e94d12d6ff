"""SHA-256 of files, the one digest written into manifests, results and run keys."""
from __future__ import annotations

import hashlib
import os

CHUNK_BYTES = 1 << 20  # read size; the digest does not depend on it


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 (64 lowercase characters) of the bytes of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()
