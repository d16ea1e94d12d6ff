"""Readers and window helpers of hms_core.data.io."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from hms_core.contract import RAW_CHANNELS, SPEC_COLUMNS, WINDOW_SAMPLES
from hms_core.data import io
from hms_core.errors import DataError


def test_read_eeg_and_spectrogram(tiny_dataset, tmp_path):
    test = io.read_test_csv(tiny_dataset / "test.csv")
    eeg_id = int(test["eeg_id"].iloc[0])
    path = io.eeg_path(tiny_dataset, eeg_id, "test")
    assert path == tiny_dataset / "test_eegs" / f"{eeg_id}.parquet"
    eeg = io.read_eeg(path, eeg_id)
    assert eeg.shape == (WINDOW_SAMPLES, 20) and eeg.dtype == np.float32
    table = pq.read_table(path)
    np.testing.assert_array_equal(eeg[:, 3], table.column(RAW_CHANNELS[3]).to_numpy())
    # Channels are returned in contract order whatever the file's order.
    reordered = tmp_path / "reordered.parquet"
    pq.write_table(table.select(list(reversed(RAW_CHANNELS))), reordered)
    np.testing.assert_array_equal(io.read_eeg(reordered), eeg)
    time_s, power = io.read_spectrogram(io.spectrogram_path(tiny_dataset, test["spectrogram_id"].iloc[0], "test"))
    assert power.shape == (300, len(SPEC_COLUMNS)) and power.dtype == np.float32 and time_s[0] == 1


def test_read_eeg_errors_name_the_file_and_recording(tiny_dataset, tmp_path):
    path = io.eeg_path(tiny_dataset, int(io.read_test_csv(tiny_dataset / "test.csv")["eeg_id"].iloc[0]), "test")
    dropped = tmp_path / "dropped.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["EKG"]), dropped)
    with pytest.raises(DataError, match=r"dropped.parquet \(eeg_id 42\): missing columns \['EKG'\]"):
        io.read_eeg(dropped, eeg_id=42)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="broken.parquet.*not a readable parquet"):
        io.read_eeg(broken)
    with pytest.raises(DataError, match="file not found"):
        io.read_spectrogram(tmp_path / "absent.parquet", spectrogram_id=7)
    with pytest.raises(ValueError, match="split"):
        io.eeg_path(tmp_path, 1, "valid")


@pytest.mark.parametrize("offset_s, first_row", [(0, 0), (3, 1), (3.5, 2), (10, 5), (11, 5)])
def test_spectrogram_first_row_is_the_first_time_at_or_after_the_offset(offset_s, first_row):
    time_s = 1 + 2 * np.arange(1000)
    assert io.spectrogram_first_row(offset_s) == first_row == int(np.argmax(time_s >= offset_s))
    assert io.spectrogram_rows_needed(offset_s) == first_row + 300


def test_eeg_window_helpers():
    assert io.eeg_window_slice(6.5) == slice(1300, 11300)
    assert io.eeg_samples_needed(0) == WINDOW_SAMPLES


def _with_column(table, name, values):
    import pyarrow as pa

    return table.set_column(table.schema.get_field_index(name), name, pa.array(values))


def test_non_finite_values_are_read_as_missing(tiny_dataset, tmp_path):
    path = io.eeg_path(tiny_dataset, int(io.read_test_csv(tiny_dataset / "test.csv")["eeg_id"].iloc[0]), "test")
    table = pq.read_table(path)
    fp1 = table.column("Fp1").to_numpy().astype(np.float64)
    fp1[[10, 11, 500]] = [np.inf, -np.inf, 1e39]  # 1e39 uV is beyond float32: inf once cast
    widened = tmp_path / "widened.parquet"
    pq.write_table(_with_column(table, "Fp1", fp1), widened)
    eeg = io.read_eeg(widened, eeg_id=1)
    assert np.isnan(eeg[[10, 11, 500], 0]).all() and not np.isinf(eeg).any()
    finite = np.ones(len(eeg), bool)
    finite[[10, 11, 500]] = False
    np.testing.assert_array_equal(eeg[finite, 0], fp1[finite].astype(np.float32))


def test_text_channel_is_a_data_error_naming_file_and_column(tiny_dataset, tmp_path):
    path = io.eeg_path(tiny_dataset, int(io.read_test_csv(tiny_dataset / "test.csv")["eeg_id"].iloc[0]), "test")
    table = pq.read_table(path)
    text = tmp_path / "text.parquet"
    pq.write_table(_with_column(table, "C3", [f"{v:.2f}" for v in table.column("C3").to_numpy()]), text)
    with pytest.raises(DataError, match=r"text\.parquet \(eeg_id 9\): column C3 holds text values"):
        io.read_eeg(text, eeg_id=9)


def test_extra_csv_columns_are_ignored_with_a_warning(tiny_dataset, tmp_path, caplog):
    import pandas as pd

    from hms_core.contract import TEST_COLUMNS, TRAIN_COLUMNS

    train = pd.read_csv(tiny_dataset / "train.csv")
    train.insert(3, "note", "checked by me")  # a user's own columns, anywhere
    train["my_fold"] = 1
    train[list(reversed(train.columns))].to_csv(tmp_path / "train.csv", index=False)
    with caplog.at_level("WARNING", logger="hms_core.data.io"):
        got = io.read_train_csv(tmp_path / "train.csv")
    assert tuple(got.columns) == TRAIN_COLUMNS
    pd.testing.assert_frame_equal(got, io.read_train_csv(tiny_dataset / "train.csv"))
    assert "train.csv" in caplog.text and "'note'" in caplog.text and "'my_fold'" in caplog.text
    test = pd.read_csv(tiny_dataset / "test.csv")
    test["note"] = "x"
    test.to_csv(tmp_path / "test.csv", index=False)
    assert tuple(io.read_test_csv(tmp_path / "test.csv").columns) == TEST_COLUMNS


def test_missing_or_mistyped_csv_columns_are_still_errors(tiny_dataset, tmp_path):
    import pandas as pd

    train = pd.read_csv(tiny_dataset / "train.csv")
    train["note"] = "x"
    train.drop(columns=["lpd_vote"]).to_csv(tmp_path / "missing.csv", index=False)
    with pytest.raises(DataError, match=r"missing\.csv: columns differ from the contract: missing \['lpd_vote'\]"):
        io.read_train_csv(tmp_path / "missing.csv")
    train.assign(gpd_vote="many").to_csv(tmp_path / "mistyped.csv", index=False)
    with pytest.raises(DataError, match=r"mistyped\.csv: column gpd_vote has dtype"):
        io.read_train_csv(tmp_path / "mistyped.csv")
