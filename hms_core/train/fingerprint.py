"""What identifies a window source's contents in a run key, cheaply.

Every stage that resumes from a checkpoint (train_fold, foundation pretraining, the
transfer study, tuning) puts :func:`source_fingerprint` of its windows into its run key, so
stores rebuilt with other preprocessing (a filter, ICA, a code change, other raw data)
never resume a checkpoint trained on the old windows.
"""
from __future__ import annotations

import hashlib
import weakref
from typing import Any

import numpy as np
import pandas as pd

from hms_core.hashing import directory_fingerprint

# Store fingerprints per opened source object: tuning trains one RowSubset of the same
# WindowStore many times, and the full data set's stores take seconds to fingerprint.
# Stores are written atomically and never change under an open WindowStore.
_STORE_FINGERPRINTS: "weakref.WeakKeyDictionary[Any, list[str]]" = weakref.WeakKeyDictionary()


def frame_digest(frame: pd.DataFrame) -> str:
    """Hex SHA-256 of a data frame's values and column names (not its row labels)."""
    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return hashlib.sha256(repr(list(frame.columns)).encode() + hashed.tobytes()).hexdigest()


def source_fingerprint(source: Any) -> dict[str, Any]:
    """The run-key part that identifies the windows of ``source``.

    Parameters
    ----------
    source : window source
        A ``WindowStore`` (its stores, by :func:`hms_core.hashing.directory_fingerprint`:
        metadata and attributes whole, data files by size and shard index), an
        ``InMemorySource`` (its arrays, hashed), or a view of another source (``RowSubset``
        or any wrapper with a ``source`` attribute: that source plus ``rows``).

    Returns
    -------
    dict
        ``n_windows``, ``index_sha256`` (every column of the index) and the contents' part.

    Raises
    ------
    TypeError
        A source whose contents cannot be identified: resuming on it could hand back a
        model trained on other windows.
    """
    index = source.index
    fingerprint: dict[str, Any] = {"n_windows": len(index), "index_sha256": frame_digest(index)}
    if hasattr(source, "paths"):
        if source not in _STORE_FINGERPRINTS:
            _STORE_FINGERPRINTS[source] = [directory_fingerprint(p) for p in source.paths]
        fingerprint["stores"] = _STORE_FINGERPRINTS[source]
    elif isinstance(getattr(source, "fields", None), dict):
        digest = hashlib.sha256()
        for name in sorted(source.fields):
            array = np.ascontiguousarray(source.fields[name])
            digest.update(f"{name}{array.dtype}{array.shape}".encode())
            digest.update(array.tobytes())
        fingerprint["arrays_sha256"] = digest.hexdigest()
    elif hasattr(source, "source"):
        fingerprint["of"] = source_fingerprint(source.source)
        if hasattr(source, "rows"):
            fingerprint["rows_sha256"] = hashlib.sha256(
                np.asarray(source.rows, dtype=np.int64).tobytes()).hexdigest()
    else:
        raise TypeError(f"cannot fingerprint a window source of type {type(source).__name__}: "
                        "give it store paths (paths), in-memory arrays (fields) or wrap "
                        "another source (source)")
    return fingerprint
