"""Folds are grouped by patient and cover every row once."""
import numpy as np
import pandas as pd
import pytest

from hms_core.config import from_mapping
from hms_core import contract
from hms_core.errors import ConfigError
from hms_core.data.folds import FoldsConfig, make_folds


def _train_df(n_rows=300, n_patients=40, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"label_id": np.arange(n_rows) + 1000,
                       "eeg_id": rng.integers(0, 90, n_rows),
                       "patient_id": rng.integers(0, n_patients, n_rows)})
    votes = rng.multinomial(8, np.ones(6) / 6, size=n_rows)
    for j, col in enumerate(contract.VOTE_COLUMNS):
        df[col] = votes[:, j]
    return df


def test_no_patient_in_two_folds_and_all_rows_assigned():
    df = _train_df()
    folds = make_folds(df, n_folds=4, seed=3)
    assert list(folds.columns) == ["label_id", "eeg_id", "patient_id", "fold"]
    assert (folds["label_id"].to_numpy() == df["label_id"].to_numpy()).all()
    assert set(folds["fold"]) == {0, 1, 2, 3}
    assert (folds.groupby("patient_id")["fold"].nunique() == 1).all()
    sizes = folds["fold"].value_counts()
    assert sizes.min() > 0.5 * sizes.max()


def test_seed_changes_assignment_and_is_reproducible():
    df = _train_df()
    a, b = make_folds(df, 3, 1), make_folds(df, 3, 1)
    assert a.equals(b)
    assert not a["fold"].equals(make_folds(df, 3, 2)["fold"])


def test_too_few_patients_and_unknown_keys_are_config_errors():
    with pytest.raises(ConfigError, match="at least 5 patients"):
        make_folds(_train_df(n_patients=3), n_folds=5, seed=0)
    with pytest.raises(ConfigError, match="folds: unknown key .k."):
        from_mapping(FoldsConfig, {"k": 3}, "folds")


def test_write_folds_from_train_csv(tiny_dataset, tmp_path):
    from hms_core.data.folds import write_folds

    folds = write_folds(tiny_dataset / "train.csv", tmp_path / "folds.csv", {"n_folds": 3, "seed": 0})
    again = pd.read_csv(tmp_path / "folds.csv")
    assert again.equals(folds) and set(again["fold"]) == {0, 1, 2}
    assert (again.groupby("patient_id")["fold"].nunique() == 1).all()


def test_inner_validation_holds_out_whole_patients():
    from hms_core.data.folds import inner_validation_mask

    patients = np.repeat(np.arange(20), np.arange(1, 21))  # 210 windows, uneven patients
    inner = inner_validation_mask(patients, 0.15, seed=1)
    assert set(patients[inner]).isdisjoint(patients[~inner])
    assert 0 < inner.sum() <= 0.15 * len(patients)
    assert np.array_equal(inner, inner_validation_mask(patients, 0.15, seed=1))
    assert not np.array_equal(inner, inner_validation_mask(patients, 0.15, seed=2))
    two = inner_validation_mask(np.array([5, 5, 7]), 0.01, seed=0)  # always one patient each side
    assert two.any() and not two.all()
    with pytest.raises(ConfigError, match="at least 2 training patients"):
        inner_validation_mask(np.array([3, 3, 3]), 0.15, seed=0)


def test_read_folds_names_the_file_and_the_problem(tmp_path):
    from hms_core.data.folds import read_folds
    from hms_core.errors import DataError

    path = tmp_path / "folds.csv"
    with pytest.raises(DataError, match="folds.csv: folds file not found"):
        read_folds(path)
    path.write_text("label_id,patient_id\n1,7\n")
    with pytest.raises(DataError, match=r"folds.csv: missing column\(s\) \['fold'\]"):
        read_folds(path)
    path.write_text("label_id,patient_id,fold\n1,7,0\n")
    assert read_folds(path, ("patient_id", "fold"))["fold"].tolist() == [0]
