import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from hms_core.config import from_mapping
from hms_core.data.io import eeg_path, eeg_window_slice, read_eeg, read_spectrogram, read_train_csv, spectrogram_path
from hms_core.errors import ConfigError, DataError
from hms_core.preprocess import PreprocessConfig, assign_batches, preprocess_batch
from hms_core.signal.frontend import WindowFrontend, kaggle_spec_image
from hms_core.signal.ica import clean_recording
from hms_core.store import WindowStore, verify_store

torch.set_num_threads(1)
FAST = {"ica": {"enabled": False}, "windows_per_shard": 4}


@pytest.fixture(scope="module")
def train_df(tiny_dataset):
    return read_train_csv(tiny_dataset / "train.csv")


def test_assign_batches_is_deterministic_complete_and_balanced(train_df):
    batches = assign_batches(train_df, 3)
    assert batches == assign_batches(train_df.sample(frac=1, random_state=0), 3)
    ids = [e for b in batches.values() for e in b]
    assert sorted(ids) == sorted(train_df["eeg_id"].unique())
    counts = train_df.groupby("eeg_id").size()
    loads = [counts[b].sum() for b in batches.values()]
    assert max(loads) - min(loads) <= counts.max()
    assert set(assign_batches(train_df, 50)) == set(range(50))
    with pytest.raises(ConfigError, match="n_batches"):
        assign_batches(train_df, 0)


def test_config_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="colour"):
        from_mapping(PreprocessConfig, {"colour": 1}, "preprocessing")
    with pytest.raises(ConfigError, match="on_bad_recording"):
        from_mapping(PreprocessConfig, {"on_bad_recording": "ignore"}, "preprocessing")
    with pytest.raises(ConfigError, match="method"):
        from_mapping(PreprocessConfig, {"ica": {"method": "jade"}}, "preprocessing")
    with pytest.raises(ConfigError, match=r"preprocessing\.compressor: invalid value 'gzip'"):
        from_mapping(PreprocessConfig, {"compressor": "gzip"}, "preprocessing")


@pytest.fixture(scope="module")
def two_stores(tiny_dataset, train_df, tmp_path_factory):
    out = tmp_path_factory.mktemp("stores")
    batches = assign_batches(train_df, 2)
    cfg = from_mapping(PreprocessConfig, {"windows_per_shard": 4, "ica": {"max_fit_samples": 6000}}, "preprocessing")
    status = out / "status" / "run.json"
    preprocess_batch(tiny_dataset, train_df, batches[0], out / "batch_0000.zarr", cfg, status_path=status,
                     quarantine_out=out / "q0.json")
    preprocess_batch(tiny_dataset, train_df, batches[1], out / "batch_0001.zarr",
                     {**FAST, "compressor": "zstd", "compression_level": 1})
    return out, batches, cfg


def test_store_codec_follows_the_config_and_both_verify(two_stores):
    out, _, _ = two_stores
    for batch, (cname, level) in {"batch_0000.zarr": ("lz4", 9), "batch_0001.zarr": ("zstd", 1)}.items():
        meta = json.loads((out / batch / "chains" / "zarr.json").read_text())
        blosc = meta["codecs"][0]["configuration"]["codecs"][1]["configuration"]
        assert (blosc["cname"], blosc["clevel"]) == (cname, level)
        assert verify_store(out / batch) == []


def test_store_holds_every_window_and_equals_the_frontend(tiny_dataset, train_df, two_stores):
    out, batches, cfg = two_stores
    store = WindowStore([out / "batch_0000.zarr", out / "batch_0001.zarr"])
    assert sorted(store.index["label_id"]) == sorted(train_df["label_id"])
    status = json.loads((out / "status" / "run.json").read_text())["jobs"]["preprocess_batch_0000"]
    assert status["stage"] == "preprocessing" and status["done"] == status["total"] == len(batches[0])
    assert json.loads((out / "q0.json").read_text())["bad_recordings"] == []
    # recompute one window of batch 0 by hand: whole-recording cleaning, then the torch front end
    row = store.index[store.index["store"] == 0].iloc[-1]
    raw = read_eeg(eeg_path(tiny_dataset, row["eeg_id"]))
    cleaned, _ = clean_recording(raw, cfg, eeg_id=row["eeg_id"])
    window = cleaned[eeg_window_slice(row["eeg_label_offset_seconds"])].T[None]
    with torch.no_grad():
        chains, spec, mel = WindowFrontend(cfg.frontend)(torch.from_numpy(np.ascontiguousarray(window)))
    got = store.read(np.array([row.name]), ["chains", "referential", "eeg_spec", "eeg_mel", "kaggle_spec"])
    # the referential field: the same cleaned window (ICA included), DC-removed, filtered,
    # clipped, in EEG_CHANNELS order, without the EKG channel
    from scipy.ndimage import convolve1d

    from hms_core.signal.filters import design_kernel

    eeg = window[0, :19].astype(np.float64)
    referential = np.clip(convolve1d(eeg - eeg.mean(axis=-1, keepdims=True), design_kernel(cfg.filter),
                                     axis=-1, mode="mirror"), -cfg.clip_uv, cfg.clip_uv)[None]
    assert got["referential"].shape == (1, 19, 10000)
    for name, want in (("chains", chains), ("referential", torch.from_numpy(referential)),
                       ("eeg_spec", spec), ("eeg_mel", mel)):
        want = want.numpy()
        assert np.abs(got[name] - want).max() <= 1e-3 * np.abs(want).max() + 1e-2  # float16 storage
    time_s, power = read_spectrogram(spectrogram_path(tiny_dataset, row["spectrogram_id"]))
    first = int(np.searchsorted(time_s, row["spectrogram_label_offset_seconds"]))
    want = kaggle_spec_image(torch.from_numpy(power[first:first + 300][None])).numpy()
    assert np.abs(got["kaggle_spec"] - want).max() < 1e-2
    json.loads(row["ica_removed"])  # valid JSON per window
    assert 0 <= row["nan_fraction"] <= 1


def test_killed_batch_leaves_no_store_and_is_redone(tiny_dataset, train_df, two_stores, tmp_path):
    out, batches, _ = two_stores
    finished = out / "batch_0001.zarr"
    before = {p: p.stat().st_mtime_ns for p in finished.rglob("*")}
    target = out / "batch_killed.zarr"
    status = tmp_path / "run.json"
    script = (
        "import sys, pandas as pd; from hms_core.preprocess import preprocess_batch; "
        "from hms_core.data.io import read_train_csv; "
        f"df = read_train_csv(r'{tiny_dataset / 'train.csv'}'); "
        f"preprocess_batch(r'{tiny_dataset}', df, sorted(df.eeg_id.unique()), r'{target}', {{}}, "
        f"status_path=r'{status}')"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if status.exists() and json.loads(status.read_text())["jobs"]["preprocess_batch_killed"]["done"] >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the batch finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not target.exists()
    assert list(out.glob(".batch_killed.zarr.*.tmp"))  # the half-written temporary
    preprocess_batch(tiny_dataset, train_df, batches[1], target, FAST)
    assert len(WindowStore([target])) == (train_df["eeg_id"].isin(batches[1])).sum()
    assert not list(out.glob(".batch_killed.zarr.*.tmp"))
    assert before == {p: p.stat().st_mtime_ns for p in finished.rglob("*")}


# ------------------------------------------------------------------------------- bad input
def _write_table(path, df):
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path)


def _break(kind, path):
    if kind == "corrupt":
        path.write_bytes(b"this is not a parquet file")
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "missing":
        path.unlink()
    elif kind == "short":
        _write_table(path, pd.read_parquet(path).iloc[:1000])
    elif kind == "no_channel":
        _write_table(path, pd.read_parquet(path).drop(columns=["C3"]))
    elif kind == "all_nan":
        df = pd.read_parquet(path)
        _write_table(path, pd.DataFrame(np.nan, index=df.index, columns=df.columns, dtype="float32"))


BAD_KINDS = ("corrupt", "truncated", "missing", "short", "no_channel", "all_nan")
PROBLEM = {"corrupt": "not a readable parquet", "truncated": "not a readable parquet", "missing": "file not found",
           "short": "samples", "no_channel": "missing columns", "all_nan": "all EEG values are NaN"}


@pytest.fixture(scope="module")
def broken_dataset(tiny_dataset, train_df, tmp_path_factory):
    data = tmp_path_factory.mktemp("broken") / "raw"
    shutil.copytree(tiny_dataset, data)
    ids = sorted(train_df["eeg_id"].unique())
    assert len(ids) > len(BAD_KINDS)
    broken = dict(zip(BAD_KINDS, ids))
    for kind, eeg_id in broken.items():
        _break(kind, eeg_path(data, eeg_id))
    return data, broken, ids


def test_skip_mode_quarantines_bad_recordings_and_keeps_the_rest(broken_dataset, train_df, tmp_path):
    data, broken, ids = broken_dataset
    report = tmp_path / "quarantine.json"
    result = preprocess_batch(data, train_df, ids, tmp_path / "b.zarr", {**FAST, "on_bad_recording": "skip"},
                              quarantine_out=report)
    bad = {b["eeg_id"]: b for b in json.loads(report.read_text())["bad_recordings"]}
    assert set(bad) == set(broken.values())
    for kind, eeg_id in broken.items():
        assert PROBLEM[kind] in bad[eeg_id]["problem"] and str(eeg_id) in bad[eeg_id]["path"]
    good = [e for e in ids if e not in broken.values()]
    store = WindowStore([tmp_path / "b.zarr"])
    assert sorted(store.index["label_id"]) == sorted(train_df.loc[train_df["eeg_id"].isin(good), "label_id"])
    assert result == {"n_recordings": len(good), "n_windows": len(store), "n_bad": len(broken)}


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_error_mode_names_file_and_recording(kind, broken_dataset, train_df, tmp_path):
    data, broken, ids = broken_dataset
    eeg_id = broken[kind]
    good = next(e for e in ids if e not in broken.values())
    with pytest.raises(DataError, match=PROBLEM[kind]) as err:
        preprocess_batch(data, train_df, [good, eeg_id], tmp_path / "b.zarr", FAST)
    assert err.value.eeg_id == eeg_id and f"{eeg_id}.parquet" in err.value.path
    assert not (tmp_path / "b.zarr").exists()
    assert not list(tmp_path.glob(".b.zarr.*"))


def test_disk_full_leaves_no_store_and_a_plain_rerun_rebuilds_it(tiny_dataset, train_df, tmp_path, monkeypatch):
    import errno

    from hms_core import shard_writer
    from hms_core.errors import DiskFullError

    real_write, writes = shard_writer.write_file, []

    def write_until_full(path, buffers):
        writes.append(path)
        if "/c/" in str(path) and len(writes) > 15:  # a few shards in, the disk fills up
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, buffers)

    monkeypatch.setattr(shard_writer, "write_file", write_until_full)
    target = tmp_path / "batch_0000.zarr"
    ids = sorted(train_df["eeg_id"].unique())
    with pytest.raises(DiskFullError, match=r"batch_0000\.zarr.*no space left.*needs about .* MB") as err:
        preprocess_batch(tiny_dataset, train_df, ids, target, FAST)
    assert err.value.needed_bytes > 0 and err.value.path.endswith("batch_0000.zarr")
    assert not target.exists() and not list(tmp_path.glob(".batch_0000.zarr.*"))
    monkeypatch.setattr(shard_writer, "write_file", real_write)
    preprocess_batch(tiny_dataset, train_df, ids, target, FAST)
    store = WindowStore([target])
    assert len(store) == len(train_df)
    assert verify_store(target) == []


@pytest.mark.parametrize("mode", ["skip", "error"])
def test_text_channel_honours_on_bad_recording(mode, tiny_dataset, train_df, tmp_path):
    data = tmp_path / "raw"
    shutil.copytree(tiny_dataset, data)
    ids = sorted(train_df["eeg_id"].unique())[:2]
    path = eeg_path(data, ids[0])
    df = pd.read_parquet(path)
    df["C3"] = [f"{v:.2f}" for v in df["C3"]]
    _write_table(path, df)
    out = tmp_path / "b.zarr"
    if mode == "error":
        with pytest.raises(DataError, match=r"column C3 holds text values") as err:
            preprocess_batch(data, train_df, ids, out, FAST)
        assert err.value.eeg_id == ids[0] and not out.exists()
        return
    report = tmp_path / "q.json"
    result = preprocess_batch(data, train_df, ids, out, {**FAST, "on_bad_recording": "skip"}, quarantine_out=report)
    (bad,) = json.loads(report.read_text())["bad_recordings"]
    assert bad["eeg_id"] == ids[0] and "column C3" in bad["problem"] and f"{ids[0]}.parquet" in bad["path"]
    assert result["n_bad"] == 1 and set(WindowStore([out]).index["eeg_id"]) == {ids[1]}


def test_infinite_samples_do_not_reach_the_store(tiny_dataset, train_df, tmp_path):
    data = tmp_path / "raw"
    shutil.copytree(tiny_dataset, data)
    eeg_id = int(train_df["eeg_id"].iloc[0])
    path = eeg_path(data, eeg_id)
    df = pd.read_parquet(path).astype("float64")
    start = eeg_window_slice(train_df.loc[train_df["eeg_id"] == eeg_id, "eeg_label_offset_seconds"].min()).start
    df.loc[start + 5000, "Fp1"] = np.inf
    df.loc[start + 6000, "O2"] = 1e39
    _write_table(path, df)
    preprocess_batch(data, train_df, [eeg_id], tmp_path / "b.zarr", FAST)
    store = WindowStore([tmp_path / "b.zarr"])
    got = store.read(np.arange(len(store)), ["chains", "referential", "eeg_spec", "eeg_mel"])
    assert all(np.isfinite(v).all() for v in got.values())
    assert (store.index["nan_fraction"] > 0).any()


def test_store_without_ica_equals_the_exportable_frontend_within_float16(tiny_dataset, train_df, two_stores):
    """Every window of the ICA-off store against the reference path: the recording cleaning,
    then the polyphase-convolution front end (the ONNX graph's), in float32 before storage."""
    from hms_core.preprocess import clean_windows

    out, batches, _ = two_stores
    cfg = from_mapping(PreprocessConfig, FAST, "preprocessing")
    store = WindowStore([out / "batch_0001.zarr"])
    names = ["chains", "referential", "eeg_spec", "eeg_mel"]
    reference = WindowFrontend(cfg.frontend, fir_method="conv").eval()
    n_checked = 0
    for eeg_id, rows in store.index.groupby("eeg_id"):
        raw = read_eeg(eeg_path(tiny_dataset, eeg_id))
        windows, _ = clean_windows(raw, [eeg_window_slice(o) for o in rows["eeg_label_offset_seconds"]], cfg)
        with torch.no_grad():
            want = reference.fields(torch.from_numpy(windows), names)
        got = store.read(rows.index.to_numpy(), names)
        for name in names:
            expected = want[name].numpy()
            # float16 keeps 11 significant bits: half a unit in the last place is 2**-11 relative
            assert np.all(np.abs(got[name] - expected) <= 2.0 ** -10 * np.abs(expected) + 1e-3), name
        want_nan = [np.isnan(raw[eeg_window_slice(o), :19]).mean() for o in rows["eeg_label_offset_seconds"]]
        assert np.allclose(rows["nan_fraction"], want_nan, rtol=0, atol=1e-12)
        n_checked += len(rows)
    assert n_checked == len(train_df[train_df["eeg_id"].isin(batches[1])]) > 0


def test_device_option_is_checked_and_auto_resolves():
    from hms_core.preprocess import frontend_device

    assert frontend_device("cpu") == torch.device("cpu")
    assert frontend_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="preprocessing.device"):
        from_mapping(PreprocessConfig, {"device": "tpu"}, "preprocessing")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            frontend_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_frontend_equals_cpu_frontend():
    x = 80 * torch.randn(3, 20, 10000, generator=torch.Generator().manual_seed(0))
    x[0, 3, 100:900] = float("nan")
    cpu = WindowFrontend(fir_method="fft").eval()
    gpu = WindowFrontend(fir_method="fft").eval().to("cuda")
    with torch.no_grad():
        want, got = cpu.fields(x), gpu.fields(x.to("cuda"))
    for name, value in want.items():
        assert torch.allclose(got[name].cpu(), value, rtol=1e-4, atol=1e-3), name


def test_spectrogram_cache_reads_a_shared_file_once_and_is_bounded(tiny_dataset, train_df, monkeypatch):
    import hms_core.data.io as io
    from hms_core.preprocess import SpectrogramCache, kaggle_windows

    reads = []
    read = io.read_spectrogram
    monkeypatch.setattr(io, "read_spectrogram", lambda path, sid=None: reads.append(sid) or read(path, sid))

    by_spectrogram = train_df.groupby("spectrogram_id")["eeg_id"].nunique()
    shared = by_spectrogram[by_spectrogram > 1].index[:2]  # files that two recordings cut windows from
    rows = train_df[train_df["spectrogram_id"].isin([*shared, *by_spectrogram[by_spectrogram == 1].index[:1]])]
    cache = SpectrogramCache()
    for eeg_id, recording in rows.groupby("eeg_id"):
        got = kaggle_windows(tiny_dataset, recording, eeg_id, spectrograms=cache)
        assert np.array_equal(got, kaggle_windows(tiny_dataset, recording, eeg_id, spectrograms=SpectrogramCache()))
    assert len(reads) == 2 * rows["spectrogram_id"].nunique() + (rows.groupby("eeg_id")["spectrogram_id"].nunique().sum()
                                                                 - rows["spectrogram_id"].nunique())  # shared: once
    assert cache.misses == rows["spectrogram_id"].nunique()
    assert cache.hits == rows.groupby("eeg_id")["spectrogram_id"].nunique().sum() - cache.misses >= len(shared) == 2
    one = cache.power(tiny_dataset, int(rows["spectrogram_id"].iloc[0]))
    small = SpectrogramCache(max_bytes=one.nbytes)  # holds one file at a time
    for spectrogram_id in rows["spectrogram_id"].unique():
        small.power(tiny_dataset, int(spectrogram_id))
    assert len(small._arrays) == 1 and small._bytes <= max(one.nbytes, next(iter(small._arrays.values())).nbytes)
