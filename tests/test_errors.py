import pickle

from hms_core.errors import DataError, DiskFullError


def test_errors_survive_a_process_boundary_with_their_fields():
    """multiprocessing pickles exceptions: the file, recording and sizes must come back."""
    err = pickle.loads(pickle.dumps(DataError("/d/1.parquet", "column C3 holds text", eeg_id=7)))
    assert (err.path, err.problem, err.eeg_id) == ("/d/1.parquet", "column C3 holds text", 7)
    assert str(err) == "/d/1.parquet (eeg_id 7): column C3 holds text"
    full = pickle.loads(pickle.dumps(DiskFullError("/run/store.zarr", 5_000_000, 1_000_000)))
    assert (full.needed_bytes, full.free_bytes) == (5_000_000, 1_000_000) and "5.0 MB" in str(full)
