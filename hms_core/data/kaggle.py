"""Download the HMS competition data with the Kaggle CLI and unpack it into the Kaggle layout.

The archive goes to a sibling ``.<dest>.download/`` folder (the CLI skips a download
that is already complete there), is unpacked member by member into the sibling
``.<dest>.unpack.tmp/``, and that folder is renamed to ``dest`` with a completion marker
inside. A call that finds the marker does nothing. The whole download and unpack hold an
exclusive lock (``.<dest>.lock``), so a second run waits and then finds the data complete;
a temporary folder left by a killed unpack is removed at the next start, under the lock.
``dest`` is never replaced unless it is absent or an empty folder.
"""
from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from hms_core.contract import TEST_EEG_DIR, TEST_SPEC_DIR, TRAIN_EEG_DIR, TRAIN_SPEC_DIR
from hms_core.atomic import fsync_dir
from hms_core.config import from_mapping
from hms_core.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

DEFAULT_COMPETITION = "hms-harmful-brain-activity-classification"
COMPLETE_MARKER = ".hms_download_complete.json"
REQUIRED_FILES = ("train.csv", "test.csv")
REQUIRED_DIRS = (TRAIN_EEG_DIR, TRAIN_SPEC_DIR, TEST_EEG_DIR, TEST_SPEC_DIR)
DEFAULT_FREE_GB = 60.0
_COPY_CHUNK = 1 << 20
_GB = 1e9
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]*$")


@dataclass
class KaggleConfig:
    """Options of the Kaggle download (the ``data.kaggle`` config section).

    Parameters
    ----------
    competition : str
        Competition slug (default ``"hms-harmful-brain-activity-classification"``).
    free_gb : float
        Free disk space (GB) beside ``data.dir`` required before the download starts: the
        archive and its unpacked files, with headroom (default 60.0, enough for the HMS
        competition); 0 skips this check. The exact need is checked again before unpacking.
    """

    competition: str = DEFAULT_COMPETITION
    free_gb: float = DEFAULT_FREE_GB

    def validate(self, path: str = "data.kaggle") -> None:
        """The competition must be a Kaggle slug; ``free_gb`` must be >= 0."""
        if not isinstance(self.competition, str) or not _SLUG.match(self.competition):
            raise ConfigError(f"{path}.competition: {self.competition!r} is not a competition slug "
                              f"like {DEFAULT_COMPETITION!r}")
        if not isinstance(self.free_gb, (int, float)) or not self.free_gb >= 0:
            raise ConfigError(f"{path}.free_gb: must be a number >= 0, got {self.free_gb!r}")


def fetch_kaggle(dest_dir: str | os.PathLike, *, competition: str = DEFAULT_COMPETITION,
                 free_gb: float = DEFAULT_FREE_GB) -> Path:
    """Download and unpack the competition data into ``dest_dir`` unless already complete.

    Parameters
    ----------
    dest_dir : path-like
        Folder to hold the Kaggle layout (``train.csv``, ``train_eegs/``, ...); ``~`` is
        expanded. It must be absent, empty, or a finished download: hms never deletes or
        overwrites a folder it did not create.
    competition : str
        Kaggle competition slug.
    free_gb : float
        Free space (GB) required beside ``dest_dir`` before the download; 0 skips the check.

    Returns
    -------
    pathlib.Path
        ``dest_dir`` (``~`` expanded).

    Raises
    ------
    DataError
        ``dest_dir`` is a foreign folder, too little free space, no Kaggle credentials, no
        ``kaggle`` executable, a failed download, a bad archive, or an archive without the
        Kaggle layout.
    """
    cfg = from_mapping(KaggleConfig, {"competition": competition, "free_gb": free_gb}, "data.kaggle")
    dest = Path(dest_dir).expanduser()
    if is_complete(dest):
        logger.info("%s is complete (%s present): nothing to download", dest, COMPLETE_MARKER)
        return dest
    _check_replaceable(dest)
    _check_credentials(dest)
    with _exclusive_lock(dest):
        if is_complete(dest):
            logger.info("%s was completed by another run meanwhile", dest)
            return dest
        _check_replaceable(dest)
        _remove_stale_temporaries(dest)
        download_dir = dest.parent / f".{dest.name}.download"
        downloaded = sum(p.stat().st_size for p in download_dir.glob("*") if p.is_file()) \
            if download_dir.is_dir() else 0
        _check_free_space(dest.parent, cfg.free_gb * _GB - downloaded, "the download",
                          "or lower data.kaggle.free_gb if you know the data set needs less")
        archive = _download(cfg.competition, download_dir)
        _unpack(archive, dest, cfg.competition)
        shutil.rmtree(download_dir, ignore_errors=True)
    logger.info("unpacked %s into %s", cfg.competition, dest)
    return dest


def lock_path(dest_dir: str | os.PathLike) -> Path:
    """The lock file held while ``dest_dir`` is downloaded and unpacked."""
    dest = Path(dest_dir).expanduser()
    return dest.parent / f".{dest.name}.lock"


def unpack_temp_path(dest_dir: str | os.PathLike) -> Path:
    """The folder ``dest_dir`` is unpacked into before it is renamed into place."""
    dest = Path(dest_dir).expanduser()
    return dest.parent / f".{dest.name}.unpack.tmp"


def is_complete(dest_dir: str | os.PathLike) -> bool:
    """Whether ``dest_dir`` holds a finished download (marker and the required files)."""
    dest = Path(dest_dir)
    return ((dest / COMPLETE_MARKER).is_file() and all((dest / f).is_file() for f in REQUIRED_FILES)
            and all((dest / d).is_dir() for d in REQUIRED_DIRS))


def _check_replaceable(dest: Path) -> None:
    """Refuse a ``dest`` that is not absent or an empty folder (and is not a finished download)."""
    if dest.is_symlink():
        raise DataError(dest, f"is a link to {os.readlink(dest)} without a finished download; hms never "
                              "replaces it: remove the link, or use data.source: local with data.dir "
                              "pointing at the data")
    if not dest.exists():
        return
    if not dest.is_dir():
        raise DataError(dest, "exists and is not a folder; move it away or set data.dir to another path")
    try:
        empty = next(dest.iterdir(), None) is None
    except OSError as err:
        raise DataError(dest, f"exists but cannot be read ({err.strerror})") from None
    if not empty:
        raise DataError(dest, f"exists, is not empty and holds no finished download (no {COMPLETE_MARKER}); "
                              "hms never deletes a folder it did not create: move it away or empty it, set "
                              "data.dir to another path, or, if it holds the Kaggle data already, use "
                              "data.source: local with data.dir pointing at it")


@contextlib.contextmanager
def _exclusive_lock(dest: Path) -> Iterator[None]:
    """Hold ``.<dest>.lock`` exclusively (waiting for another download of ``dest`` to end)."""
    path = lock_path(dest)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("another run is downloading into %s (%s is locked): waiting for it", dest, path)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _remove_stale_temporaries(dest: Path) -> None:
    """Delete the unpack folders that a killed run left beside ``dest`` (the caller holds the lock).

    Ours are ``.<dest>.unpack.tmp`` and, from older versions, ``.<dest>.XXXXXXXX.tmp`` folders.
    """
    legacy = re.compile(rf"^\.{re.escape(dest.name)}\.[A-Za-z0-9_]{{8}}\.tmp$")
    for path in dest.parent.iterdir():
        if path.is_dir() and not path.is_symlink() and (path == unpack_temp_path(dest) or legacy.match(path.name)):
            logger.warning("removing %s, left by an unpack that was killed", path)
            shutil.rmtree(path)


def _check_free_space(folder: Path, needed_bytes: float, what: str, advice: str) -> None:
    free = shutil.disk_usage(folder).free
    if needed_bytes > free:
        raise DataError(folder, f"{what} needs {needed_bytes / _GB:.1f} GB free here but only "
                                f"{free / _GB:.1f} GB are free: free some space, set data.dir to a "
                                f"bigger disk, {advice}")


def _check_credentials(dest: Path) -> None:
    """Fail early, with instructions, when the Kaggle CLI would find no credentials."""
    env = os.environ
    if env.get("KAGGLE_API_TOKEN") or (env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY")):
        return
    home = Path.home()
    folders = [Path(env["KAGGLE_CONFIG_DIR"])] if env.get("KAGGLE_CONFIG_DIR") else []
    folders += [home / ".kaggle", Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"]
    names = ("kaggle.json", "access_token", "access_token.txt")
    if any((folder / name).is_file() for folder in folders for name in names):
        return
    raise DataError(dest, "no Kaggle credentials: put your API token in ~/.kaggle/kaggle.json "
                          "(chmod 600) or set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN); "
                          "see https://www.kaggle.com/settings, 'Create New Token'")


def _kaggle_executable(dest: Path) -> str:
    found = shutil.which("kaggle")
    if found:
        return found
    beside_python = Path(sys.executable).with_name("kaggle")
    if beside_python.is_file():
        return str(beside_python)
    raise DataError(dest, "the Kaggle CLI 'kaggle' is not installed (pip install kaggle)")


def _download(competition: str, download_dir: Path) -> Path:
    download_dir.mkdir(parents=True, exist_ok=True)
    command = [_kaggle_executable(download_dir), "competitions", "download", "-c", competition,
               "-p", str(download_dir)]
    logger.info("running %s", " ".join(command))
    tail: collections.deque[str] = collections.deque(maxlen=15)
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   errors="replace")
    except OSError as err:
        raise DataError(download_dir, f"could not run the Kaggle CLI ({err})") from None
    assert process.stdout is not None
    for line in process.stdout:
        line = line.rstrip()
        if line:
            tail.append(line)
            logger.info("kaggle: %s", line)
    returncode = process.wait()
    if returncode != 0:
        detail = " | ".join(tail) or "no output"
        raise DataError(download_dir, f"the Kaggle download of {competition!r} failed (exit code "
                                      f"{returncode}): {detail}. Check your credentials and that you "
                                      f"accepted the rules at https://www.kaggle.com/competitions/"
                                      f"{competition}/rules")
    archives = sorted(download_dir.glob("*.zip"))
    if not archives:
        raise DataError(download_dir, f"the Kaggle CLI exited without error but left no .zip archive "
                                      f"for {competition!r}")
    preferred = download_dir / f"{competition}.zip"
    return preferred if preferred in archives else archives[0]


def _unpack(archive: Path, dest: Path, competition: str) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(archive, f"not a readable zip archive ({err}); "
                                 "delete it and download again") from None
    tmp = unpack_temp_path(dest)
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        total = sum(m.file_size for m in members)
        _check_free_space(dest.parent, total, "unpacking",
                          f"then run again (the archive {archive} is kept: it is not downloaded again)")
        tmp.mkdir()
        try:
            _extract(zf, members, total, tmp, archive)
            _lift_single_folder(tmp)
            missing = [f for f in REQUIRED_FILES if not (tmp / f).is_file()]
            missing += [d + "/" for d in REQUIRED_DIRS if not (tmp / d).is_dir()]
            if missing:
                raise DataError(archive, f"the archive lacks the Kaggle layout: missing {missing}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    marker = {"competition": competition, "archive": archive.name, "n_files": len(members), "bytes": total}
    _write_durably(tmp / COMPLETE_MARKER, (json.dumps(marker, indent=2) + "\n").encode())
    if dest.is_dir():
        try:
            dest.rmdir()  # checked empty under the lock; fails if a user put a file there meanwhile
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DataError(dest, f"is no longer empty ({err.strerror}): nothing was replaced; move "
                                  f"its files away and run again (the archive {archive} is kept)") from None
    os.replace(tmp, dest)
    fsync_dir(dest.parent)


def _extract(zf: zipfile.ZipFile, members: list[zipfile.ZipInfo], total: int, tmp: Path,
             archive: Path) -> None:
    """Write each member under ``tmp`` (fsynced), refusing paths that leave ``tmp``."""
    from tqdm import tqdm

    root = tmp.resolve()
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"unzip {archive.name}",
              disable=None, leave=False) as progress:
        for member in members:
            target = (tmp / member.filename).resolve()
            if root not in target.parents:
                raise DataError(archive, f"member {member.filename!r} would land outside the folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(member) as src, open(target, "wb") as dst:
                    for chunk in iter(lambda: src.read(_COPY_CHUNK), b""):
                        dst.write(chunk)
                        progress.update(len(chunk))
                    dst.flush()
                    os.fsync(dst.fileno())
            except (zipfile.BadZipFile, EOFError, OSError) as err:
                raise DataError(archive, f"member {member.filename!r} cannot be unpacked ({err}); "
                                         "delete the archive and download again") from None


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _lift_single_folder(tmp: Path) -> None:
    """Move the contents of a lone top-level folder (a wrapped archive) up into ``tmp``."""
    entries = list(tmp.iterdir())
    if len(entries) != 1 or not entries[0].is_dir() or (tmp / REQUIRED_FILES[0]).exists():
        return
    inner = entries[0]
    for child in inner.iterdir():
        os.replace(child, tmp / child.name)
    inner.rmdir()
