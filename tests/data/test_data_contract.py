"""The synthetic data set honours the Kaggle data contract (shared/hms-format.md)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from hms_core.contract import (
    CLASSES, RAW_CHANNELS, SAMPLING_RATE_HZ, SPEC_COLUMNS, SPEC_TIME_COLUMN, SPEC_WINDOW_ROWS,
    SPEC_WINDOW_S, SUBMISSION_COLUMNS, TEST_COLUMNS, TRAIN_COLUMNS, TRAIN_DTYPES, VOTE_COLUMNS,
    WINDOW_S, WINDOW_SAMPLES,
)
from hms_core.data import io
from hms_core.data.synthetic import LATENT_COLUMNS, best_achievable_kl


def test_train_csv_columns_dtypes_and_values(tiny_dataset):
    raw = pd.read_csv(tiny_dataset / "train.csv")
    assert tuple(raw.columns) == TRAIN_COLUMNS
    for name, dtype in TRAIN_DTYPES.items():
        if name != "expert_consensus":
            assert str(raw[name].dtype) == dtype, name
    train = io.read_train_csv(tiny_dataset / "train.csv")
    assert set(train["expert_consensus"]) <= set(CLASSES)
    totals = train[list(VOTE_COLUMNS)].sum(axis=1)
    assert totals.min() >= 1 and totals.max() <= 28
    votes = train[list(VOTE_COLUMNS)].to_numpy()
    consensus_votes = votes[np.arange(len(votes)), [CLASSES.index(c) for c in train["expert_consensus"]]]
    assert (consensus_votes == votes.max(axis=1)).all()
    for offset in ("eeg_label_offset_seconds", "spectrogram_label_offset_seconds"):
        assert ((train[offset] * 2) % 1 == 0).all(), "offsets are whole or half seconds"
    assert train["label_id"].is_unique


def test_sub_windows_overlap_and_share_spectrograms(tiny_dataset):
    train = io.read_train_csv(tiny_dataset / "train.csv")
    for eeg_id, rows in train.groupby("eeg_id"):
        assert list(rows["eeg_sub_id"]) == list(range(len(rows)))
        offsets = rows["eeg_label_offset_seconds"].to_numpy()
        assert offsets[0] == 0 and (np.diff(offsets) > 0).all() and (np.diff(offsets) < WINDOW_S).all()
        # The spectrogram window's centre is the EEG window's centre: a constant shift per recording.
        shift = rows["spectrogram_label_offset_seconds"] - rows["eeg_label_offset_seconds"]
        assert shift.nunique() == 1 and rows["spectrogram_id"].nunique() == 1
        assert rows["patient_id"].nunique() == 1


def test_train_parquets_match_contract_and_hold_every_window(tiny_dataset):
    train = io.read_train_csv(tiny_dataset / "train.csv")
    for eeg_id, rows in train.groupby("eeg_id"):
        schema = pq.read_schema(io.eeg_path(tiny_dataset, eeg_id))
        assert tuple(schema.names) == RAW_CHANNELS
        assert all(str(t) == "float" for t in schema.types)  # float32
        n = pq.ParquetFile(io.eeg_path(tiny_dataset, eeg_id)).metadata.num_rows
        assert n >= (rows["eeg_label_offset_seconds"].max() + WINDOW_S) * SAMPLING_RATE_HZ
    for spec_id, rows in train.groupby("spectrogram_id"):
        time_s, power = io.read_spectrogram(io.spectrogram_path(tiny_dataset, spec_id))
        assert tuple(pq.read_schema(io.spectrogram_path(tiny_dataset, spec_id)).names) == \
            (SPEC_TIME_COLUMN, *SPEC_COLUMNS)
        assert power.dtype == np.float32 and power.shape[1] == 400
        assert np.array_equal(time_s, 1 + 2 * np.arange(len(time_s)))
        assert time_s[-1] + 1 >= SPEC_WINDOW_S
        first = io.spectrogram_first_row(rows["spectrogram_label_offset_seconds"].max())
        assert first + SPEC_WINDOW_ROWS <= len(time_s)


def test_a_spectrogram_may_serve_two_recordings(tiny_dataset):
    train = io.read_train_csv(tiny_dataset / "train.csv")
    per_spec = train.groupby("spectrogram_id")["eeg_id"].nunique()
    assert per_spec.max() == 2
    for spec_id in per_spec.index[per_spec == 2]:
        rows = train[train["spectrogram_id"] == spec_id]
        assert list(rows.sort_values("spectrogram_label_offset_seconds")["spectrogram_sub_id"]) == \
            list(range(len(rows)))
        first, second = (r for _, r in rows.groupby("eeg_id"))
        # Two EEG files cut from one session do not overlap in session time.
        ends = [r["spectrogram_label_offset_seconds"].max() for r in (first, second)]
        starts = [r["spectrogram_label_offset_seconds"].min() for r in (first, second)]
        assert min(ends) < max(starts)


def test_test_files_submission_and_answer_key(tiny_dataset):
    test = io.read_test_csv(tiny_dataset / "test.csv")
    assert tuple(test.columns) == TEST_COLUMNS and len(test) == 2
    for row in test.itertuples():
        assert pq.ParquetFile(io.eeg_path(tiny_dataset, row.eeg_id, "test")).metadata.num_rows == WINDOW_SAMPLES
        path = io.spectrogram_path(tiny_dataset, row.spectrogram_id, "test")
        assert pq.ParquetFile(path).metadata.num_rows == SPEC_WINDOW_ROWS
    submission = pd.read_csv(tiny_dataset / "sample_submission.csv")
    assert tuple(submission.columns) == SUBMISSION_COLUMNS
    assert np.allclose(submission[list(VOTE_COLUMNS)].sum(axis=1), 1)
    assert set(submission["eeg_id"]) == set(test["eeg_id"])
    test_latent = pd.read_parquet(tiny_dataset / "answer_key" / "test_latent.parquet")
    assert list(test_latent.columns) == ["eeg_id", *LATENT_COLUMNS]
    assert set(test_latent["eeg_id"]) == set(test["eeg_id"])
    latent = pd.read_parquet(tiny_dataset / "answer_key" / "latent.parquet")
    train = io.read_train_csv(tiny_dataset / "train.csv")
    assert list(latent.columns) == ["label_id", *LATENT_COLUMNS]
    assert set(latent["label_id"]) == set(train["label_id"])
    assert np.allclose(latent[list(LATENT_COLUMNS)].sum(axis=1), 1)


def test_best_achievable_kl_beats_other_predictions(tiny_dataset):
    from hms_core.metrics import kaggle_kl

    best = best_achievable_kl(tiny_dataset)
    train = io.read_train_csv(tiny_dataset / "train.csv")
    latent = pd.read_parquet(tiny_dataset / "answer_key" / "latent.parquet").set_index("label_id")
    targets = train[list(VOTE_COLUMNS)].to_numpy(float)
    targets /= targets.sum(axis=1, keepdims=True)
    p = latent.loc[train["label_id"], list(LATENT_COLUMNS)].to_numpy()
    assert best == kaggle_kl(targets, p)
    assert 0 < best < kaggle_kl(targets, np.full_like(p, 1 / 6))
    assert best < kaggle_kl(targets, 0.5 * p + 0.5 / 6)
