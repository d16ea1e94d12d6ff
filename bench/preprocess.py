"""Benchmark: windows per second per core of preprocessing against a naive baseline.

Both run on the same synthetic recordings, single-threaded, in fresh child processes
(so each peak RSS is that run's own):

- pipeline: ``preprocess_batch`` (each parquet read once, NaN/DC/ICA once per recording,
  the torch front end batched over all windows of a recording, one Zarr store);
- baseline: per train.csv row, read the EEG and spectrogram parquets, MNE band-pass and
  notch filter the window, fit MNE ICA (picard, defaults) on the window, and compute a
  scipy spectrogram per chain.

Rates are windows per CPU-second of the single-threaded child (windows per second per
core, unaffected by other load on a shared machine); wall-clock rates are printed too.
The pipeline runs at two data-set sizes to show that its memory peak does not grow with
the number of recordings. Prints one JSON line.

    .venv/bin/python bench/preprocess.py [--patients 4] [--large-factor 3] [--baseline-rows 6]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


def run_pipeline(data_dir: str, out_store: str) -> dict:
    import mne  # noqa: F401  (imported lazily by the pipeline; the baseline imports it before timing too)

    from hms_core.data.io import read_train_csv
    from hms_core.preprocess import preprocess_batch

    df = read_train_csv(Path(data_dir) / "train.csv")
    start, cpu = time.perf_counter(), time.process_time()
    result = preprocess_batch(data_dir, df, sorted(df["eeg_id"].unique()), out_store, {}, threads=1)
    return {"seconds": time.perf_counter() - start, "cpu_s": time.process_time() - cpu, **result}


def run_baseline(data_dir: str, max_rows: int) -> dict:
    import mne
    import numpy as np
    import pandas as pd
    from scipy import signal as sp_signal

    from hms_core.contract import EEG_CHANNELS, SAMPLING_RATE_HZ, SPEC_COLUMNS
    from hms_core.data.io import eeg_path, eeg_window_slice, read_train_csv, spectrogram_first_row, spectrogram_path
    from hms_core.signal.montage import bipolar_montage

    mne.set_log_level("ERROR")
    df = read_train_csv(Path(data_dir) / "train.csv").iloc[:max_rows]
    info = mne.create_info(list(EEG_CHANNELS), SAMPLING_RATE_HZ, "eeg")
    start, cpu = time.perf_counter(), time.process_time()
    for _, row in df.iterrows():
        eeg = pd.read_parquet(eeg_path(data_dir, row["eeg_id"]))
        window = eeg.iloc[eeg_window_slice(row["eeg_label_offset_seconds"])]
        x = np.nan_to_num(window[list(EEG_CHANNELS)].to_numpy(dtype=np.float64).T) * 1e-6
        raw = mne.io.RawArray(x, info, verbose=False)
        raw.filter(0.5, 20.0, verbose=False).notch_filter(60.0, verbose=False)
        ica = mne.preprocessing.ICA(n_components=len(EEG_CHANNELS), method="picard", random_state=0, verbose=False)
        ica.fit(raw.copy().filter(1.0, None, verbose=False), verbose=False)
        cleaned = ica.apply(raw, exclude=[0], verbose=False).get_data() * 1e6
        chains = bipolar_montage(np.vstack([cleaned, np.zeros((1, cleaned.shape[1]))]))
        sp_signal.spectrogram(np.clip(chains, -1024, 1024), fs=SAMPLING_RATE_HZ, nperseg=512, noverlap=472, axis=-1)
        spec = pd.read_parquet(spectrogram_path(data_dir, row["spectrogram_id"]))
        first = spectrogram_first_row(row["spectrogram_label_offset_seconds"])
        np.log(np.clip(spec[list(SPEC_COLUMNS)].to_numpy()[first:first + 300], np.exp(-4), np.exp(8)))
    return {"seconds": time.perf_counter() - start, "cpu_s": time.process_time() - cpu, "n_windows": len(df)}


def _child(*args: str) -> tuple[dict, float]:
    """Run this file in a child process; return its JSON result and its peak RSS in MB."""
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args[0]} failed with exit code {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1]), usage.ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=4, help="patients of the small data set (default 4)")
    parser.add_argument("--large-factor", type=int, default=3, help="the large data set has this many times more")
    parser.add_argument("--baseline-rows", type=int, default=6, help="train.csv rows the baseline processes (default 6)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=("pipeline", "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "pipeline":
        print(json.dumps(run_pipeline(args.data, args.out)))
        return
    if args.worker == "baseline":
        print(json.dumps(run_baseline(args.data, args.baseline_rows)))
        return

    import logging

    logging.disable(logging.WARNING)
    from hms_core.data.synthetic import generate_dataset

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        small, large = Path(tmp) / "small", Path(tmp) / "large"
        generate_dataset(small, n_patients=args.patients, seed=args.seed, n_test=1, save_answer_key=False)
        generate_dataset(large, n_patients=args.patients * args.large_factor, seed=args.seed + 1, n_test=1,
                         save_answer_key=False)
        pipe, rss_small = _child("--worker", "pipeline", "--data", str(small), "--out", str(Path(tmp) / "s.zarr"))
        pipe_large, rss_large = _child("--worker", "pipeline", "--data", str(large), "--out", str(Path(tmp) / "l.zarr"))
        base, rss_base = _child("--worker", "baseline", "--data", str(small), "--baseline-rows", str(args.baseline_rows))
    # Rates per CPU-second of the single-threaded worker (= per core), robust to a shared
    # machine; the wall-clock rates are reported beside them.
    rate = pipe["n_windows"] / pipe["cpu_s"]
    base_rate = base["n_windows"] / base["cpu_s"]
    print(json.dumps({
        "windows_per_s": round(rate, 3), "baseline_windows_per_s": round(base_rate, 3),
        "speedup": round(rate / base_rate, 2), "peak_rss_mb": round(rss_small, 1),
        "peak_rss_mb_large": round(rss_large, 1), "baseline_peak_rss_mb": round(rss_base, 1),
        "wall_windows_per_s": round(pipe["n_windows"] / pipe["seconds"], 3),
        "wall_baseline_windows_per_s": round(base["n_windows"] / base["seconds"], 3),
        "n_windows": pipe["n_windows"], "n_recordings": pipe["n_recordings"],
        "windows_per_recording": round(pipe["n_windows"] / max(pipe["n_recordings"], 1), 2),
        "n_windows_large": pipe_large["n_windows"], "n_recordings_large": pipe_large["n_recordings"],
        "windows_per_s_large": round(pipe_large["n_windows"] / pipe_large["cpu_s"], 3),
        "baseline_rows": base["n_windows"], "threads": 1, "total_s": round(time.perf_counter() - t0, 1),
    }))


if __name__ == "__main__":
    main()
