"""validate_dataset: manifest, report, and one clear problem for each kind of bad file."""
from __future__ import annotations

import json
import re
import shutil

import pandas as pd
import pyarrow.parquet as pq
import pytest

from hms_core.config import from_mapping
from hms_core.data import io
from hms_core.data.validate import ValidationConfig, validate_dataset
from hms_core.errors import ConfigError, DataError


@pytest.fixture
def data(tiny_dataset, tmp_path):
    """A private copy of the tiny data set that a test may break."""
    return shutil.copytree(tiny_dataset, tmp_path / "raw")


def _validate(data, tmp_path, **kwargs):
    return validate_dataset(data, manifest_out=tmp_path / "out" / "manifest.sha256",
                            report_out=tmp_path / "out" / "validation.json", **kwargs)


def _first_eeg(data, split="train"):
    if split == "train":
        train = io.read_train_csv(data / "train.csv")
        return int(train["eeg_id"].iloc[0]), io.eeg_path(data, train["eeg_id"].iloc[0])
    test = io.read_test_csv(data / "test.csv")
    return int(test["eeg_id"].iloc[0]), io.eeg_path(data, test["eeg_id"].iloc[0], "test")


def test_clean_set_report_and_manifest(data, tmp_path):
    report = _validate(data, tmp_path)
    assert report["ok"] and report["bad_recordings"] == []
    train = io.read_train_csv(data / "train.csv")
    assert report["counts"]["train_rows"] == len(train)
    assert report["counts"]["patients"] == train["patient_id"].nunique()
    assert report["votes"]["total_max"] <= 28 and len(report["checks"]) >= 5
    assert json.loads((tmp_path / "out" / "validation.json").read_text()) == report
    lines = (tmp_path / "out" / "manifest.sha256").read_text().splitlines()
    files = sorted(p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file())
    assert [line.split("  ", 1)[1] for line in lines] == files
    assert all(re.fullmatch(r"[0-9a-f]{64}  \S+", line) for line in lines)
    import hashlib
    digest, name = lines[0].split("  ")
    assert hashlib.sha256((data / name).read_bytes()).hexdigest() == digest


def _drop_column(path):
    table = pq.read_table(path)
    pq.write_table(table.drop_columns(["O2"]), path)


def _swap_columns(path):
    table = pq.read_table(path)
    names = table.column_names
    pq.write_table(table.select([names[1], names[0], *names[2:]]), path)


def _truncate_rows(path):
    table = pq.read_table(path)
    pq.write_table(table.slice(0, table.num_rows - 300), path)


def _truncate_bytes(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


BREAKERS = {
    "missing": (lambda p: p.unlink(), "file not found"),
    "missing channel": (_drop_column, r"missing \['O2'\]"),
    "wrong order": (_swap_columns, "wrong order"),
    "too short": (_truncate_rows, "too short"),
    "corrupt": (_truncate_bytes, "not a readable parquet"),
}


@pytest.mark.parametrize("kind", list(BREAKERS))
def test_bad_train_eeg_raises_or_is_reported(data, tmp_path, kind):
    breaker, problem = BREAKERS[kind]
    eeg_id, path = _first_eeg(data)
    breaker(path)
    with pytest.raises(DataError, match=problem) as err:
        _validate(data, tmp_path)
    assert err.value.eeg_id == eeg_id and str(path) in str(err.value)
    report = _validate(data, tmp_path, on_bad="skip")
    assert not report["ok"]
    assert [(b["eeg_id"], b["path"]) for b in report["bad_recordings"]] == [(eeg_id, str(path))]
    assert re.search(problem, report["bad_recordings"][0]["problem"])


def test_bad_spectrogram_lists_every_recording_it_serves(data, tmp_path):
    train = io.read_train_csv(data / "train.csv")
    spec_id = train["spectrogram_id"].iloc[0]
    path = io.spectrogram_path(data, spec_id)
    _swap_columns(path)
    report = _validate(data, tmp_path, on_bad="skip")
    expected = sorted(train.loc[train["spectrogram_id"] == spec_id, "eeg_id"].unique())
    assert [b["eeg_id"] for b in report["bad_recordings"]] == expected
    assert "wrong order" in report["bad_recordings"][0]["problem"]


def test_test_eeg_must_be_exactly_50_s(data, tmp_path):
    eeg_id, path = _first_eeg(data, "test")
    table = pq.read_table(path)
    pq.write_table(table.slice(0, 9_999), path)
    with pytest.raises(DataError, match="expected exactly 10000") as err:
        _validate(data, tmp_path)
    assert err.value.eeg_id == eeg_id


def test_deep_check_decodes_every_file(data, tmp_path):
    _, path = _first_eeg(data)
    blob = bytearray(path.read_bytes())
    middle = len(blob) // 3
    blob[middle:middle + 4000] = b"\xff" * 4000  # damage data pages, keep the footer
    path.write_bytes(bytes(blob))
    assert _validate(data, tmp_path)["ok"]  # the footer is intact
    with pytest.raises(DataError, match="not a readable parquet"):
        _validate(data, tmp_path, deep=True)


def test_bad_csv_always_raises(data, tmp_path):
    train = pd.read_csv(data / "train.csv")
    train.rename(columns={"lpd_vote": "lpd_votes"}).to_csv(data / "train.csv", index=False)
    with pytest.raises(DataError, match=r"train.csv.*missing \['lpd_vote'\]"):
        _validate(data, tmp_path, on_bad="skip")
    train.assign(gpd_vote=train["gpd_vote"] + 0.5).to_csv(data / "train.csv", index=False)
    with pytest.raises(DataError, match="gpd_vote has dtype float64, expected int64"):
        _validate(data, tmp_path, on_bad="skip")
    train.to_csv(data / "train.csv", index=False)
    (data / "test.csv").unlink()
    with pytest.raises(DataError, match=r"test.csv: file not found"):
        _validate(data, tmp_path, on_bad="skip")


def test_config_rejects_unknown_keys_and_values(caplog):
    assert from_mapping(ValidationConfig, {"on_bad": "skip"}, "data.validation").on_bad == "skip"
    # the old word of the same option is still read, as "skip", with a deprecation warning
    assert from_mapping(ValidationConfig, {"on_bad": "report"}, "data.validation").on_bad == "skip"
    assert "data.validation.on_bad: 'report' is deprecated; use 'skip'" in caplog.text
    with pytest.raises(ConfigError, match="'strict'"):
        from_mapping(ValidationConfig, {"strict": True}, "data.validation")
    with pytest.raises(ConfigError, match="on_bad.*'ignore'"):
        from_mapping(ValidationConfig, {"on_bad": "ignore"}, "data.validation")
