"""Atomic, durable file writes: write to a temporary sibling, fsync it, rename it into place.

A reader (or a re-run after a crash) sees either the old file or the complete new one,
never a truncated file. The new data are fsynced before the rename and the folder after
it, so a write that returned survives a power cut too. A full disk raises
:class:`~hms_core.errors.DiskFullError` naming the file, the bytes attempted and the bytes
free; the partial temporary is removed and the old file stays in place.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from hms_core.errors import DiskFullError

WRITE_CHUNK_BYTES = 1 << 24  # largest single os.write; the file does not depend on it


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, previous: str | os.PathLike | None = None,
                keep_name_last: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds.

    Works for files and directories. On error the temporary path is removed and an
    existing ``path`` is left untouched.

    Parameters
    ----------
    path : path-like
        The file or directory to (re)place.
    previous : path-like, optional
        Keep the file being replaced under this name: just before the new file takes its
        place, the old one is hard-linked (copied where links are not supported) to
        ``previous``, so at every moment both names hold a complete file.
    keep_name_last : bool
        The temporary name ends with ``path``'s name (``.<random>.<name>``), for writers
        that check the file name's ending (``mne.Annotations.save``).

    Raises
    ------
    DiskFullError
        The filesystem filled up while writing (ENOSPC anywhere in the block or the sync).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if keep_name_last:
        tmp = Path(tempfile.mkdtemp(prefix=".", suffix=f".{target.name}", dir=target.parent))
    else:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.rmdir()  # the caller creates a file or a directory of that name
    try:
        try:
            yield tmp
            _fsync_tree(tmp)
            if previous is not None and target.is_file():
                _keep_previous(target, Path(previous))
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            attempted = max(_tree_bytes(tmp), getattr(exc, "attempted_bytes", 0))
            _remove(tmp)
            raise DiskFullError(target, attempted, shutil.disk_usage(target.parent).free) from exc
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        _remove(tmp)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the entries of folder ``path`` (renames, new and removed files) durable."""
    fsync_path(path, directory=True)


def fsync_path(path: str | os.PathLike, *, directory: bool = False) -> None:
    """fsync the file or folder ``path`` (``directory``: refuse anything but a folder)."""
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` atomically and durably to ``path``."""
    with atomic_path(path) as tmp, _new_file(tmp) as out:
        out.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def torch_save(obj: Any, path: str | os.PathLike, *, previous: str | os.PathLike | None = None
               ) -> None:
    """``torch.save(obj)`` atomically and durably to ``path`` (see :func:`atomic_path`)."""
    import torch

    with atomic_path(path, previous=previous) as tmp, _new_file(tmp) as out:
        try:
            torch.save(obj, out)
        except Exception:
            if out.error is not None:  # torch's writer masks it with its own error on the way out
                raise out.error
            raise


def write_parquet(df, path: str | os.PathLike) -> None:
    buffer = io.BytesIO()
    df.to_parquet(buffer, index=False)
    write_bytes(path, buffer.getvalue())


class _FileWriter:
    """A write-only binary file on a raw descriptor, written with ``os.write``.

    Counts the bytes it was asked to write, so a full disk can report them; after a failed
    write it keeps the error (``error``) and refuses further writes.
    """

    def __init__(self, fd: int):
        self.fd = fd
        self.attempted_bytes = 0
        self.error: OSError | None = None

    def write(self, data) -> int:
        if self.error is not None:
            raise self.error
        view = memoryview(data).cast("B")
        self.attempted_bytes += len(view)
        try:
            while view:
                view = view[os.write(self.fd, view[:WRITE_CHUNK_BYTES]):]
        except OSError as exc:
            exc.attempted_bytes = self.attempted_bytes
            self.error = exc
            raise
        return len(memoryview(data).cast("B"))

    def flush(self) -> None:
        pass


@contextlib.contextmanager
def _new_file(path: Path) -> Iterator[_FileWriter]:
    """Create ``path`` (it must not exist) for writing; fsync and close it after the block."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        out = _FileWriter(fd)
        yield out
        try:
            os.fsync(fd)
        except OSError as exc:
            exc.attempted_bytes = out.attempted_bytes
            raise
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """fsync a written file, or every file and folder of a written directory (bottom up)."""
    if not path.is_dir():
        if path.exists():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return
    for root, _, files in os.walk(path, topdown=False):
        for name in files:
            _fsync_tree(Path(root) / name)
        fsync_dir(root)


def _keep_previous(target: Path, previous: Path) -> None:
    """Make ``previous`` a complete copy of ``target`` without a moment where it is partial."""
    with atomic_path(previous) as tmp:
        try:
            os.link(target, tmp)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP,
                                 errno.EOPNOTSUPP):
                raise
            shutil.copyfile(target, tmp)


def _tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum((Path(root) / f).stat().st_size for root, _, files in os.walk(path) for f in files)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")
