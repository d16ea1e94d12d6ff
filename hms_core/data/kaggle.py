"""Download the HMS competition data with the Kaggle CLI and unpack it into the Kaggle layout.

The archive goes to a sibling ``.<dest>.download/`` folder (the CLI skips a download
that is already complete there), is unpacked member by member into a temporary
sibling folder, and that folder is renamed to ``dest`` with a completion marker
inside. A call that finds the marker does nothing.
"""
from __future__ import annotations

import collections
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

from hms_core import atomic
from hms_core.contract import TEST_EEG_DIR, TEST_SPEC_DIR, TRAIN_EEG_DIR, TRAIN_SPEC_DIR
from hms_core.config import from_mapping
from hms_core.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

DEFAULT_COMPETITION = "hms-harmful-brain-activity-classification"
COMPLETE_MARKER = ".hms_download_complete.json"
REQUIRED_FILES = ("train.csv", "test.csv")
REQUIRED_DIRS = (TRAIN_EEG_DIR, TRAIN_SPEC_DIR, TEST_EEG_DIR, TEST_SPEC_DIR)
_COPY_CHUNK = 1 << 20
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]*$")


@dataclass
class KaggleConfig:
    """Options of the Kaggle download (the ``data.kaggle`` config section).

    Parameters
    ----------
    competition : str
        Competition slug (default ``"hms-harmful-brain-activity-classification"``).
    """

    competition: str = DEFAULT_COMPETITION

    def validate(self, path: str = "data.kaggle") -> None:
        """The competition must be a Kaggle slug."""
        if not isinstance(self.competition, str) or not _SLUG.match(self.competition):
            raise ConfigError(f"{path}.competition: {self.competition!r} is not a competition slug "
                              f"like {DEFAULT_COMPETITION!r}")


def fetch_kaggle(dest_dir: str | os.PathLike, *, competition: str = DEFAULT_COMPETITION) -> Path:
    """Download and unpack the competition data into ``dest_dir`` unless already complete.

    Parameters
    ----------
    dest_dir : path-like
        Folder to hold the Kaggle layout (``train.csv``, ``train_eegs/``, ...). An
        existing folder without the completion marker is replaced.
    competition : str
        Kaggle competition slug.

    Returns
    -------
    pathlib.Path
        ``dest_dir``.

    Raises
    ------
    DataError
        No Kaggle credentials, no ``kaggle`` executable, a failed download, a bad
        archive, or an archive without the Kaggle layout.
    """
    competition = from_mapping(KaggleConfig, {"competition": competition}, "data.kaggle").competition
    dest = Path(dest_dir)
    if is_complete(dest):
        logger.info("%s is complete (%s present): nothing to download", dest, COMPLETE_MARKER)
        return dest
    _check_credentials(dest)
    download_dir = dest.parent / f".{dest.name}.download"
    archive = _download(competition, download_dir)
    _unpack(archive, dest, competition)
    shutil.rmtree(download_dir, ignore_errors=True)
    logger.info("unpacked %s into %s", competition, dest)
    return dest


def is_complete(dest_dir: str | os.PathLike) -> bool:
    """Whether ``dest_dir`` holds a finished download (marker and the required files)."""
    dest = Path(dest_dir)
    return ((dest / COMPLETE_MARKER).is_file() and all((dest / f).is_file() for f in REQUIRED_FILES)
            and all((dest / d).is_dir() for d in REQUIRED_DIRS))


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
    from tqdm import tqdm

    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(archive, f"not a readable zip archive ({err}); "
                                 "delete it and download again") from None
    with zf, atomic.atomic_path(dest) as tmp:
        tmp.mkdir()
        root = tmp.resolve()
        members = [m for m in zf.infolist() if not m.is_dir()]
        total = sum(m.file_size for m in members)
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
                except (zipfile.BadZipFile, EOFError, OSError) as err:
                    raise DataError(archive, f"member {member.filename!r} cannot be unpacked ({err}); "
                                             "delete the archive and download again") from None
        _lift_single_folder(tmp)
        missing = [f for f in REQUIRED_FILES if not (tmp / f).is_file()]
        missing += [d + "/" for d in REQUIRED_DIRS if not (tmp / d).is_dir()]
        if missing:
            raise DataError(archive, f"the archive lacks the Kaggle layout: missing {missing}")
        marker = {"competition": competition, "archive": archive.name, "n_files": len(members),
                  "bytes": total}
        (tmp / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def _lift_single_folder(tmp: Path) -> None:
    """Move the contents of a lone top-level folder (a wrapped archive) up into ``tmp``."""
    entries = list(tmp.iterdir())
    if len(entries) != 1 or not entries[0].is_dir() or (tmp / REQUIRED_FILES[0]).exists():
        return
    inner = entries[0]
    for child in inner.iterdir():
        os.replace(child, tmp / child.name)
    inner.rmdir()
