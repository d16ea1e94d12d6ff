"""The ``full`` synthetic preset: real counts and shape, stratified fractions, lazy plan, valid files."""
from __future__ import annotations

import inspect
import tracemalloc

import numpy as np
import pandas as pd
import pytest

from hms_core.cli import main as hms_main
from hms_core.contract import TRAIN_EEG_DIR, TRAIN_SPEC_DIR, VOTE_COLUMNS
from hms_core.data import io
from hms_core.data.synthetic.plan import Ids
from hms_core.data.synthetic.preset import (
    FULL,
    full_layout,
    generate_preset,
    iter_sessions,
    planned_counts,
    sample_patients,
)
from hms_core.data.validate import validate_dataset
from hms_core.errors import ConfigError

FULL_RATIOS = {"rows_per_recording": FULL.rows / FULL.recordings,                  # 6.25
               "recordings_per_spectrogram": FULL.recordings / FULL.spectrograms,  # 1.53
               "spectrograms_per_patient": FULL.spectrograms / FULL.patients}      # 5.71


def _ratios(c: dict) -> dict:
    return {"rows_per_recording": c["rows"] / c["recordings"],
            "recordings_per_spectrogram": c["recordings"] / c["spectrograms"],
            "spectrograms_per_patient": c["spectrograms"] / c["patients"]}


@pytest.fixture(scope="module")
def layout():
    return full_layout(seed=0)


def test_full_layout_has_the_real_counts_and_a_long_tail(layout):
    assert planned_counts(layout, np.arange(FULL.patients)) == {
        "patients": 1_950, "spectrograms": 11_138, "recordings": 17_089, "rows": 106_800}
    rows = layout.rows_per_eeg
    assert rows.min() >= 1 and layout.eegs_per_session.min() >= 1 and layout.sessions_per_patient.min() >= 1
    assert np.median(rows) <= 4 < rows.mean()          # most recordings have a few rows ...
    assert rows.max() >= 200 and (rows >= 50).sum() >= 50  # ... and a long tail has hundreds
    assert (layout.eegs_per_session > 1).mean() > 0.2    # spectrograms shared by several EEGs


@pytest.mark.parametrize("fraction", [0.05, 0.2])
def test_a_fraction_keeps_the_ratios(layout, fraction):
    patients = sample_patients(layout, fraction, seed=0)
    assert patients.size == round(fraction * FULL.patients) and np.unique(patients).size == patients.size
    counts = planned_counts(layout, patients)
    assert counts["rows"] == pytest.approx(fraction * FULL.rows, rel=0.25)
    for key, value in _ratios(counts).items():
        assert value == pytest.approx(FULL_RATIOS[key], rel=0.15), key


def test_bad_fraction_is_refused(layout):
    with pytest.raises(ConfigError, match="fraction: 0 is not in"):
        sample_patients(layout, 0, seed=0)
    with pytest.raises(ConfigError, match="preset: invalid value 'half'"):
        generate_preset("/nonexistent", preset="half")


def test_the_plan_is_lazy_and_small(layout):
    ids = Ids(np.random.default_rng(1))
    sessions = iter_sessions(layout, np.arange(FULL.patients), np.random.default_rng(0), ids)
    assert inspect.isgenerator(sessions)
    first = next(sessions)
    assert len(ids._used["spectrogram"]) == 1 and len(first.eegs) == layout.eegs_per_session[0]
    tracemalloc.start()
    n_sessions, n_rows = 1, sum(e.offsets_s.size for e in first.eegs)
    for session in sessions:  # the full-size plan, one session at a time
        n_sessions += 1
        n_rows += sum(e.offsets_s.size for e in session.eegs)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert (n_sessions, n_rows) == (FULL.spectrograms, FULL.rows)
    assert peak < 8 * 2**20, f"planning held {peak / 2**20:.1f} MiB"  # the ids sets, not the sessions


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """A 0.1% sample with signals (2 patients) and the same sample as metadata only."""
    root = tmp_path_factory.mktemp("preset")
    full = generate_preset(root / "signals", fraction=0.001, seed=3, n_test=2)
    meta = generate_preset(root / "meta", fraction=0.001, seed=3, n_test=2, metadata_only=True)
    return root, full, meta


def test_sample_passes_validation_with_the_planned_counts(sample, tmp_path):
    root, summary, _ = sample
    report = validate_dataset(root / "signals", manifest_out=tmp_path / "m.sha256",
                              report_out=tmp_path / "v.json", deep=True)
    assert report["ok"]
    planned = summary["planned"]
    assert report["counts"]["train_rows"] == planned["rows"]
    assert report["counts"]["train_recordings"] == planned["recordings"]
    assert report["counts"]["train_spectrograms"] == planned["spectrograms"]
    assert report["counts"]["patients"] == planned["patients"] == 2
    assert len(list((root / "signals" / TRAIN_EEG_DIR).iterdir())) == planned["recordings"]
    assert len(list((root / "signals" / TRAIN_SPEC_DIR).iterdir())) == planned["spectrograms"]
    # each EEG file is as long as its last sub-window needs, plus at most 2 s
    train = io.read_train_csv(root / "signals" / "train.csv")
    last = train.groupby("eeg_id")["eeg_label_offset_seconds"].max()
    for eeg_id, offset_s in last.items():
        n = len(pd.read_parquet(io.eeg_path(root / "signals", eeg_id), columns=["Fp1"]))
        assert io.eeg_samples_needed(offset_s) <= n <= io.eeg_samples_needed(offset_s) + 2 * 200


def test_metadata_only_writes_the_same_plan_without_signals(sample):
    root, _, meta = sample
    assert meta["metadata_only"] and not any((root / "meta" / TRAIN_EEG_DIR).iterdir())
    a = io.read_train_csv(root / "signals" / "train.csv")
    b = io.read_train_csv(root / "meta" / "train.csv")
    same = [c for c in a.columns if c not in (*VOTE_COLUMNS, "expert_consensus")]
    pd.testing.assert_frame_equal(a[same], b[same])  # ids, offsets, patients; the votes are redrawn


def test_metadata_only_vote_mix(tmp_path):
    summary = generate_preset(tmp_path / "m", fraction=0.1, seed=0, metadata_only=True, n_test=1)
    assert summary["n_rows"] == summary["planned"]["rows"]
    assert summary["votes_min"] >= 1 and summary["votes_max"] <= 28
    assert 0.35 <= summary["fraction_below_10_votes"] <= 0.65  # "roughly half the rows"


def test_cli_needs_the_preset_for_fraction(tmp_path, capsys):
    assert hms_main(["synth", str(tmp_path / "x"), "--fraction", "0.1"]) == 2
    assert "need --preset full" in capsys.readouterr().err and not (tmp_path / "x").exists()
