"""Backups of a run's critical state: ``backups/<UTC timestamp>/`` with a SHA-256 manifest.

A backup holds what is expensive to recompute or needed to resume (checkpoints, final
weights, out-of-fold predictions, folds, the validated manifest, status), never the raw
data or the Zarr stores. It is written into a temporary folder and renamed into place,
so ``backups/`` only ever holds complete backups; the oldest beyond ``keep`` are deleted,
except the ``pre-restore`` safety copies, which only a person deletes. Backups, rotation
and restores hold ``backups/.lock``; the temporary folder of a killed backup is removed by
the next one. ``MANIFEST.sha256`` is in ``sha256sum`` format (``sha256sum -c`` works
inside a backup).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from hms_core import atomic
from hms_core.errors import ConfigError, DataError, HMSError
from hms_core.hashing import sha256_file

logger = logging.getLogger(__name__)

BACKUP_DIR = "backups"
MANIFEST = "MANIFEST.sha256"
INFO = "backup.json"
CRITICAL_PATHS = (
    "models/checkpoints", "models/final", "oof", "status", "data/manifest.sha256",
    "data/validation.json", "data/folds.csv", "training_results.json",
)
PRE_RESTORE = "pre-restore"  # label of the automatic backup taken before a restore
_NAME = re.compile(r"^\d{8}T\d{6}Z(?:-\d+)?(?:-(?P<label>[a-z-]+))?$")
_TEMP = re.compile(r"^\.\d{8}T\d{6}Z(?:-\d+)?(?:-[a-z-]+)?\.[A-Za-z0-9_]{8}\.tmp$")  # atomic_path's
_CHUNK = 1 << 20


def create_backup(workdir: str | os.PathLike, *, keep: int = 5, label: str | None = None) -> Path | None:
    """Copy the critical state of ``workdir`` into ``backups/<timestamp>/``, then rotate.

    Parameters
    ----------
    workdir : path-like
        The run's working directory.
    keep : int
        Backups of the same label kept (newest first); older ones are deleted. Pre-restore
        safety copies are never deleted (they may hold the newest work).
    label : str or None
        Suffix of the backup's name (``"pre-restore"`` for the safety copy before a restore);
        rotation counts each label separately.

    Returns
    -------
    Path or None
        The new backup, or None when none of :data:`CRITICAL_PATHS` exists yet.
    """
    workdir = Path(workdir)
    if keep < 1:
        raise ConfigError(f"ops.backup.keep: must be >= 1, got {keep!r}")
    with _backup_lock(workdir / BACKUP_DIR):
        return _create_locked(workdir, keep=keep, label=label)


def _create_locked(workdir: Path, *, keep: int, label: str | None) -> Path | None:
    """:func:`create_backup` for a caller that holds the backup lock."""
    sources = [rel for rel in CRITICAL_PATHS if (workdir / rel).exists()]
    if not sources:
        logger.info("nothing to back up yet in %s", workdir)
        return None
    root = workdir / BACKUP_DIR
    _remove_stale_temporaries(root)
    target = root / _new_name(root, label)
    with atomic.atomic_path(target) as tmp:
        tmp.mkdir()
        checksums, n_bytes = {}, 0
        for rel in sources:
            for src in _files_under(workdir / rel):
                rel_file = src.relative_to(workdir).as_posix()
                try:
                    checksums[rel_file] = _copy_with_hash(src, tmp / rel_file)
                except FileNotFoundError:  # e.g. a checkpoint rotated away meanwhile
                    logger.warning("backup: %s vanished while copying, skipped", src)
                    continue
                n_bytes += (tmp / rel_file).stat().st_size
        (tmp / MANIFEST).write_text("".join(f"{h}  {p}\n" for p, h in sorted(checksums.items())))
        atomic.write_json(tmp / INFO, {"created_at": time.time(), "workdir": str(workdir.resolve()),
                                       "items": sources, "files": len(checksums),
                                       "bytes": n_bytes, "label": label})
    if label != PRE_RESTORE:
        _rotate(root, keep=keep, label=label)
    logger.info("backup %s: %d files, %.1f MB", target, len(checksums), n_bytes / 1e6)
    return target


def list_backups(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """Complete backups of ``workdir``, oldest first: ``name``, ``path``, ``created_at``
    (Unix time, s), ``files``, ``bytes``, ``label``, ``items``."""
    root = Path(workdir, BACKUP_DIR)
    found = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if not (_NAME.match(path.name) and (path / INFO).is_file()):
            continue
        try:
            info = json.loads((path / INFO).read_text())
        except json.JSONDecodeError:
            info = {}
        found.append({"name": path.name, "path": path, **info})
    return sorted(found, key=lambda b: (b.get("created_at", 0), b["name"]))


def verify_backup(backup: str | os.PathLike) -> dict[str, str]:
    """Check every file of ``backup`` against its manifest.

    Returns
    -------
    dict
        ``{relative path: sha256}`` of the verified files.

    Raises
    ------
    DataError
        The manifest is missing or malformed, or a file is missing or its checksum differs
        (the error names the file).
    """
    backup = Path(backup)
    manifest = backup / MANIFEST
    if not manifest.is_file():
        raise DataError(manifest, "backup has no checksum manifest; it cannot be verified")
    checksums = {}
    for number, line in enumerate(manifest.read_text().splitlines(), start=1):
        digest, sep, rel = line.partition("  ")
        rel_path = PurePosixPath(rel)
        if not sep or len(digest) != 64 or rel_path.is_absolute() or ".." in rel_path.parts:
            raise DataError(manifest, f"line {number} is not '<sha256>  <relative path>': {line!r}")
        checksums[rel] = digest
    for rel, digest in checksums.items():
        path = backup / rel
        if not path.is_file():
            raise DataError(path, "listed in the backup manifest but missing")
        actual = sha256_file(path)
        if actual != digest:
            raise DataError(path, f"checksum mismatch (manifest {digest[:12]}..., file {actual[:12]}...): "
                                  "the backup is corrupted; nothing was restored")
    return checksums


def restore_backup(workdir: str | os.PathLike, name: str) -> Path | None:
    """Put the state saved in backup ``name`` back into ``workdir``.

    Holds the backup lock throughout. Every checksum is verified before anything is
    touched, and each file is checked again as it is copied; only the files listed in the
    manifest are restored. The current state is first saved as a ``pre-restore`` backup
    (never rotated away). Each critical item is then replaced as a whole, and items the
    backup did not have are removed, so the state is exactly the backup's. An item that
    is a symbolic link (e.g. checkpoints on another disk) keeps its link: the folder it
    points to is restored.

    Returns
    -------
    Path or None
        The pre-restore safety backup (None when there was nothing to save).

    Raises
    ------
    DataError
        The backup is corrupted (nothing restored).
    HMSError
        No such backup, or Snakemake is running in ``workdir``.
    """
    from hms_core.ops.processes import snakemake_processes

    workdir = Path(workdir)
    with _backup_lock(workdir / BACKUP_DIR):
        backup = workdir / BACKUP_DIR / name
        if not (_NAME.match(name) and (backup / INFO).is_file()):
            names = [b["name"] for b in list_backups(workdir)]
            raise HMSError(f"no backup {name!r} in {workdir / BACKUP_DIR} (have: {', '.join(names) or 'none'})")
        checksums = verify_backup(backup)
        running = snakemake_processes(workdir)
        if running:
            raise HMSError(f"Snakemake is running in {workdir} (pid {running[0]['pid']}); stop it before restoring")
        unlisted = sorted(p.relative_to(backup).as_posix() for p in _files_under(backup)
                          if p.relative_to(backup).as_posix() not in checksums and p.name not in (MANIFEST, INFO))
        if unlisted:
            logger.warning("backup %s holds files not in its manifest, not restored: %s", name, ", ".join(unlisted))
        info = json.loads((backup / INFO).read_text())
        safety = _create_locked(workdir, keep=1, label=PRE_RESTORE)
        for rel in CRITICAL_PATHS:
            dest = workdir / rel
            if dest.is_symlink():
                dest = dest.resolve()
            if rel not in info.get("items", []):
                _remove_item(dest, is_link_target=dest != workdir / rel)
                continue
            _restore_item(backup, rel, dest, checksums)
    logger.info("restored %d files from %s (previous state saved in %s)", len(checksums), backup, safety)
    return safety


def _restore_item(backup: Path, rel: str, dest: Path, checksums: dict[str, str]) -> None:
    """Replace ``dest`` by the manifest's files of item ``rel``, each checked as it is copied."""
    prefix = rel + "/"
    files = {f: digest for f, digest in checksums.items() if f == rel or f.startswith(prefix)}
    with atomic.atomic_path(dest) as tmp:
        if rel in files:  # a single file
            items = {tmp: rel}
        else:
            tmp.mkdir()
            items = {tmp / f[len(prefix):]: f for f in files}
        for target, f in items.items():
            digest = _copy_with_hash(backup / f, target)
            if digest != files[f]:
                raise DataError(backup / f, "changed while being restored (checksum differs from the "
                                            "manifest); this item was not replaced")


def _remove_item(path: Path, *, is_link_target: bool) -> None:
    """Remove an item the backup did not have; a symlinked folder's target is emptied, not removed."""
    if path.is_dir():
        shutil.rmtree(path)
        if is_link_target:
            path.mkdir()
    elif path.exists():
        path.unlink()


def maybe_backup(workdir: str | os.PathLike, *, interval_min: float = 30.0, keep: int = 5) -> Path | None:
    """Back up when the newest regular backup is older than ``interval_min`` minutes (or absent)."""
    regular = [b for b in list_backups(workdir) if not b.get("label")]
    if regular and time.time() - regular[-1].get("created_at", 0) < interval_min * 60:
        return None
    return create_backup(workdir, keep=keep)


class PeriodicBackups:
    """A daemon thread calling :func:`maybe_backup` until :meth:`stop` (see :func:`start_periodic_backups`)."""

    def __init__(self, workdir: str | os.PathLike, *, interval_min: float, keep: int,
                 check_s: float | None = None):
        self.workdir, self.interval_min, self.keep = Path(workdir), interval_min, keep
        self.check_s = check_s if check_s is not None else min(60.0, interval_min * 60 / 4)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="hms-backups", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.check_s):
            try:
                maybe_backup(self.workdir, interval_min=self.interval_min, keep=self.keep)
            except Exception:  # a failed backup must never stop the run
                logger.exception("automatic backup of %s failed", self.workdir)

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop the thread (waits for a backup in progress, up to ``timeout_s`` s)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)


def start_periodic_backups(workdir: str | os.PathLike, *, interval_min: float = 30.0, keep: int = 5,
                           check_s: float | None = None) -> PeriodicBackups:
    """Start automatic backups every ``interval_min`` minutes in a daemon thread.

    ``check_s`` is how often the thread looks at the age of the newest backup (default:
    a quarter of the interval, at most 60 s). Returns the handle; call ``.stop()`` to end.
    """
    handle = PeriodicBackups(workdir, interval_min=interval_min, keep=keep, check_s=check_s)
    handle._thread.start()
    return handle


def main(workdir: str | os.PathLike, action: str, name: str | None, *, keep: int | None = None) -> int:
    """``hms backup list|create|restore NAME``; ``keep`` defaults to the run's ``ops.backup.keep``."""
    workdir = Path(workdir)
    if action == "list":
        backups = list_backups(workdir)
        if not backups:
            print(f"no backups in {workdir / BACKUP_DIR}")
        for b in backups:
            when = datetime.fromtimestamp(b.get("created_at", 0)).strftime("%Y-%m-%d %H:%M:%S")
            print(f"{b['name']:<34} {when}  {b.get('files', '?'):>6} files  "
                  f"{b.get('bytes', 0) / 1e6:10.1f} MB")
        return 0
    if action == "create":
        path = create_backup(workdir, keep=keep or _recorded_keep(workdir))
        print(path if path else f"nothing to back up in {workdir}")
        return 0
    if action == "restore":
        if not name:
            raise ConfigError("hms backup restore: give the backup NAME (see `hms backup list`)")
        safety = restore_backup(workdir, name)
        print(f"restored {name}" + (f"; the previous state is in {safety}" if safety else ""))
        return 0
    raise ConfigError(f"hms backup: unknown action {action!r} (allowed: list, create, restore)")


def _recorded_keep(workdir: Path) -> int:
    from hms_core.status import STATUS_FILE, read_status

    return int(read_status(workdir / STATUS_FILE).get("run", {}).get("backup_keep", 5))


@contextlib.contextmanager
def _backup_lock(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _remove_stale_temporaries(root: Path) -> None:
    """Delete the temporary folders of backups that were killed (the caller holds the lock)."""
    for path in root.iterdir():
        if _TEMP.match(path.name) and path.is_dir() and not path.is_symlink():
            logger.warning("removing %s, left by a backup that was killed", path)
            shutil.rmtree(path)


def _new_name(root: Path, label: str | None) -> str:
    """``<UTC stamp>[-n][-label]``, n above any backup of the same second, so names never repeat."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    same_second = [p.name[len(stamp):] for p in root.glob(stamp + "*")]
    taken = [int(m[1] or 1) for rest in same_second if (m := re.match(r"^(?:-(\d+))?(?:-[a-z-]+)?$", rest))]
    suffix = f"-{label}" if label else ""
    return stamp + (f"-{max(taken) + 1}" if taken else "") + suffix


def _rotate(root: Path, *, keep: int, label: str | None) -> None:
    same = [p for p in sorted(root.iterdir())
            if (m := _NAME.match(p.name)) and m["label"] == label and (p / INFO).is_file()]
    same.sort(key=lambda p: (json.loads((p / INFO).read_text()).get("created_at", 0), p.name))
    for old in same[:-keep]:
        shutil.rmtree(old)
        logger.info("backup rotation: removed %s", old)


def _files_under(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not _transient(p))


def _transient(path: Path) -> bool:
    """Lock files and the temporaries of :mod:`hms_core.atomic` (``.name.XXXX.tmp``)."""
    return path.suffix == ".lock" or (path.name.startswith(".") and path.name.endswith(".tmp"))


def _copy_with_hash(src: Path, dest: Path) -> str:
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        while chunk := fin.read(_CHUNK):
            digest.update(chunk)
            fout.write(chunk)
    shutil.copystat(src, dest)
    return digest.hexdigest()
