"""fetch_kaggle against a stand-in ``kaggle`` executable that 'downloads' a local zip."""
from __future__ import annotations

import fcntl
import os
import shutil
import sys
import threading
import time
import zipfile

import pytest

from hms_core.config import from_mapping
from hms_core.data import kaggle
from hms_core.data.kaggle import COMPLETE_MARKER, KaggleConfig, fetch_kaggle
from hms_core.errors import ConfigError, DataError

STAND_IN = '''#!{python}
"""Stand-in for the Kaggle CLI: log the call, copy the prepared zip into -p, or fail."""
import os, shutil, sys
args = sys.argv[1:]
with open(os.environ["FAKE_KAGGLE_LOG"], "a") as log:
    log.write(" ".join(args) + "\\n")
if os.environ.get("FAKE_KAGGLE_FAIL"):
    print("403 Client Error: Forbidden", file=sys.stderr)
    sys.exit(1)
assert args[:3] == ["competitions", "download", "-c"], args
competition, dest = args[3], args[args.index("-p") + 1]
shutil.copy(os.environ["FAKE_KAGGLE_ZIP"], os.path.join(dest, competition + ".zip"))
print("Downloading " + competition + ".zip")
'''


def _zip_dataset(src, out, *, wrap=""):
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
        for path in sorted(src.rglob("*")):
            rel = path.relative_to(src).as_posix()
            if path.is_file() and not rel.startswith("answer_key"):
                zf.write(path, wrap + rel)
    return out


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "kaggle"
    exe.write_text(STAND_IN.format(python=sys.executable))
    exe.chmod(0o755)
    log = tmp_path / "calls.log"
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_KAGGLE_LOG", str(log))
    monkeypatch.setenv("KAGGLE_USERNAME", "tester")  # a made-up account: the stand-in ignores it
    monkeypatch.setenv("KAGGLE_KEY", "made-up")
    monkeypatch.delenv("FAKE_KAGGLE_FAIL", raising=False)
    return log


@pytest.mark.parametrize("wrap", ["", "hms-data/"])
def test_fetch_unpacks_the_layout_once(tiny_dataset, tmp_path, stand_in, monkeypatch, wrap):
    monkeypatch.setenv("FAKE_KAGGLE_ZIP", str(_zip_dataset(tiny_dataset, tmp_path / "hms.zip", wrap=wrap)))
    dest = tmp_path / "data" / "raw"
    assert fetch_kaggle(dest, free_gb=0) == dest
    expected = sorted(p.relative_to(tiny_dataset).as_posix() for p in tiny_dataset.rglob("*")
                      if p.is_file() and "answer_key" not in p.parts)
    found = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert found == sorted(expected + [COMPLETE_MARKER])
    assert (dest / "train.csv").read_bytes() == (tiny_dataset / "train.csv").read_bytes()
    assert sorted(os.listdir(dest.parent)) == [".raw.lock", "raw"]  # no download or temporary folder left
    calls = stand_in.read_text().splitlines()
    assert calls == [f"competitions download -c hms-harmful-brain-activity-classification "
                     f"-p {dest.parent / '.raw.download'}"]
    fetch_kaggle(dest, free_gb=0)  # complete: the stand-in is not called again
    assert stand_in.read_text().splitlines() == calls


def test_failed_download_is_a_clear_error(tmp_path, stand_in, monkeypatch):
    monkeypatch.setenv("FAKE_KAGGLE_FAIL", "1")
    with pytest.raises(DataError, match=r"download of 'hms-harmful-brain-activity-classification' "
                                        r"failed \(exit code 1\): 403 Client Error"):
        fetch_kaggle(tmp_path / "raw", free_gb=0)
    assert not (tmp_path / "raw").exists()


def test_archive_without_the_layout_is_rejected(tmp_path, stand_in, monkeypatch):
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("readme.txt", "not the HMS data")
    monkeypatch.setenv("FAKE_KAGGLE_ZIP", str(tmp_path / "other.zip"))
    with pytest.raises(DataError, match=r"lacks the Kaggle layout: missing \['train.csv'"):
        fetch_kaggle(tmp_path / "raw", free_gb=0)
    assert not (tmp_path / "raw").exists()


def test_missing_credentials_are_reported_before_any_download(tmp_path, stand_in, monkeypatch):
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "empty_home"))
    with pytest.raises(DataError, match=r"no Kaggle credentials.*~/.kaggle/kaggle.json.*KAGGLE_USERNAME"):
        fetch_kaggle(tmp_path / "raw", free_gb=0)
    assert stand_in.read_text() == ""


def test_config_checks_the_competition_slug():
    assert from_mapping(KaggleConfig, None, "data.kaggle").competition == "hms-harmful-brain-activity-classification"
    with pytest.raises(ConfigError, match="'Not A Slug'"):
        from_mapping(KaggleConfig, {"competition": "Not A Slug"}, "data.kaggle")
    with pytest.raises(ConfigError, match="'dataset'"):
        from_mapping(KaggleConfig, {"dataset": "x"}, "data.kaggle")


@pytest.fixture
def hms_zip(tiny_dataset, tmp_path, monkeypatch):
    archive = _zip_dataset(tiny_dataset, tmp_path / "hms.zip")
    monkeypatch.setenv("FAKE_KAGGLE_ZIP", str(archive))
    return archive


def test_a_foreign_folder_is_never_replaced(tmp_path, stand_in, hms_zip):
    dest = tmp_path / "raw"
    dest.mkdir()
    (dest / "notes.txt").write_text("my notes")
    with pytest.raises(DataError, match=r"raw: exists, is not empty and holds no finished download "
                                        r"\(no \.hms_download_complete\.json\).*never deletes"):
        fetch_kaggle(dest, free_gb=0)
    assert (dest / "notes.txt").read_text() == "my notes" and os.listdir(dest) == ["notes.txt"]
    assert stand_in.read_text() == ""  # refused before any download


def test_an_empty_folder_and_a_home_relative_path_are_used(tmp_path, stand_in, hms_zip, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "home" / "hms" / "raw").mkdir(parents=True)
    assert fetch_kaggle("~/hms/raw", free_gb=0) == tmp_path / "home" / "hms" / "raw"
    assert kaggle.is_complete(tmp_path / "home" / "hms" / "raw")
    assert not (tmp_path / "~").exists()


def test_stale_temporaries_of_a_killed_unpack_are_removed(tmp_path, stand_in, hms_zip):
    dest = tmp_path / "raw"
    stale = [tmp_path / ".raw.unpack.tmp", tmp_path / ".raw.k2j4_x9a.tmp"]  # ours, and the old naming
    for folder in stale:
        (folder / "train_eegs").mkdir(parents=True)
        (folder / "train_eegs" / "1.parquet").write_bytes(b"half written")
    (tmp_path / ".raw.notes.txt").write_text("not ours")
    fetch_kaggle(dest, free_gb=0)
    assert not any(folder.exists() for folder in stale)
    assert (tmp_path / ".raw.notes.txt").read_text() == "not ours"


def test_download_and_unpack_hold_an_exclusive_lock(tmp_path, stand_in, hms_zip):
    dest = tmp_path / "raw"
    with open(kaggle.lock_path(dest), "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        worker = threading.Thread(target=fetch_kaggle, args=(dest,), kwargs={"free_gb": 0})
        worker.start()
        time.sleep(1.5)
        assert not dest.exists() and stand_in.read_text() == ""  # waits for the lock
    worker.join(60)
    assert kaggle.is_complete(dest)
    # two runs at once: one downloads, the other waits and finds the data complete
    shutil.rmtree(dest)
    stand_in.write_text("")
    runs = [threading.Thread(target=fetch_kaggle, args=(dest,), kwargs={"free_gb": 0}) for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(60)
    assert kaggle.is_complete(dest) and len(stand_in.read_text().splitlines()) == 1


def test_free_space_is_checked_before_download_and_before_unpack(tmp_path, stand_in, hms_zip, monkeypatch):
    dest = tmp_path / "raw"
    with pytest.raises(DataError, match=r"the download needs 1000000\.0 GB free .*only [0-9.]+ GB are free"):
        fetch_kaggle(dest, free_gb=1e6)
    assert stand_in.read_text() == ""
    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda path: real_usage(path)._replace(free=1000))  # a nearly full disk
    with pytest.raises(DataError, match=r"unpacking needs [0-9.]+ GB free .*only 0\.0 GB are free.*kept"):
        fetch_kaggle(dest, free_gb=0)
    assert not dest.exists() and (tmp_path / ".raw.download" / hms_zip.name.replace("hms", kaggle.DEFAULT_COMPETITION)).is_file()


def test_resolve_data_expands_a_home_relative_dir(tmp_path, stand_in, hms_zip, monkeypatch):
    from hms_core.data.source import resolve_data

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    record = resolve_data({"source": "kaggle", "dir": "~/hms_data", "kaggle": {"competition": kaggle.DEFAULT_COMPETITION, "free_gb": 0}},
                          source_out=tmp_path / "source.json")
    assert record["dir"] == str(tmp_path / "home" / "hms_data")
    assert kaggle.is_complete(tmp_path / "home" / "hms_data") and not (tmp_path / "~").exists()
