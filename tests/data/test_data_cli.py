"""``hms synth OUT --patients N --seed S`` writes a valid data set and prints a summary."""
from __future__ import annotations

import pytest

from hms_core.config import from_mapping
from hms_core.cli import main
from hms_core.data import io
from hms_core.data.synthetic import SyntheticConfig, best_achievable_kl
from hms_core.errors import ConfigError


def test_hms_synth_writes_a_data_set(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["synth", str(out), "--patients", "1", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: 1 patients" in printed and "best achievable KL" in printed
    train = io.read_train_csv(out / "train.csv")
    assert train["patient_id"].nunique() == 1
    assert len(io.read_test_csv(out / "test.csv")) == SyntheticConfig().n_test
    assert f"{best_achievable_kl(out):.3f}" in printed


def test_hms_synth_refuses_a_folder_that_is_not_a_data_set(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    assert main(["synth", str(tmp_path), "--patients", "1"]) == 2
    assert "refusing to replace" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_synthetic_config_rejects_bad_keys_and_values():
    cfg = from_mapping(SyntheticConfig, {"patients": 3, "recordings_per_patient": [1, 2]}, "data.synthetic")
    assert cfg.recordings_per_patient == (1, 2)
    with pytest.raises(ConfigError, match="'n_patients'"):
        from_mapping(SyntheticConfig, {"n_patients": 3}, "data.synthetic")
    with pytest.raises(ConfigError, match="sub_windows"):
        from_mapping(SyntheticConfig, {"sub_windows": [4, 2]}, "data.synthetic")
    with pytest.raises(ConfigError, match="patients: 0"):
        from_mapping(SyntheticConfig, {"patients": 0}, "data.synthetic")
