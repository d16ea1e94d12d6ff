"""fetch_kaggle against a stand-in ``kaggle`` executable that 'downloads' a local zip."""
from __future__ import annotations

import os
import sys
import zipfile

import pytest

from hms_core.config import from_mapping
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
    assert fetch_kaggle(dest) == dest
    expected = sorted(p.relative_to(tiny_dataset).as_posix() for p in tiny_dataset.rglob("*")
                      if p.is_file() and "answer_key" not in p.parts)
    found = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert found == sorted(expected + [COMPLETE_MARKER])
    assert (dest / "train.csv").read_bytes() == (tiny_dataset / "train.csv").read_bytes()
    assert sorted(os.listdir(dest.parent)) == ["raw"]  # no download or temporary folder left
    calls = stand_in.read_text().splitlines()
    assert calls == [f"competitions download -c hms-harmful-brain-activity-classification "
                     f"-p {dest.parent / '.raw.download'}"]
    fetch_kaggle(dest)  # complete: the stand-in is not called again
    assert stand_in.read_text().splitlines() == calls


def test_failed_download_is_a_clear_error(tmp_path, stand_in, monkeypatch):
    monkeypatch.setenv("FAKE_KAGGLE_FAIL", "1")
    with pytest.raises(DataError, match=r"download of 'hms-harmful-brain-activity-classification' "
                                        r"failed \(exit code 1\): 403 Client Error"):
        fetch_kaggle(tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_archive_without_the_layout_is_rejected(tmp_path, stand_in, monkeypatch):
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("readme.txt", "not the HMS data")
    monkeypatch.setenv("FAKE_KAGGLE_ZIP", str(tmp_path / "other.zip"))
    with pytest.raises(DataError, match=r"lacks the Kaggle layout: missing \['train.csv'"):
        fetch_kaggle(tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_missing_credentials_are_reported_before_any_download(tmp_path, stand_in, monkeypatch):
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "empty_home"))
    with pytest.raises(DataError, match=r"no Kaggle credentials.*~/.kaggle/kaggle.json.*KAGGLE_USERNAME"):
        fetch_kaggle(tmp_path / "raw")
    assert stand_in.read_text() == ""


def test_config_checks_the_competition_slug():
    assert from_mapping(KaggleConfig, None, "data.kaggle").competition == "hms-harmful-brain-activity-classification"
    with pytest.raises(ConfigError, match="'Not A Slug'"):
        from_mapping(KaggleConfig, {"competition": "Not A Slug"}, "data.kaggle")
    with pytest.raises(ConfigError, match="'dataset'"):
        from_mapping(KaggleConfig, {"dataset": "x"}, "data.kaggle")
