"""Benchmark: windows per second per core of preprocessing against a naive baseline.

Both run on the same synthetic recordings, single-threaded, in fresh child processes
(so each peak RSS is that run's own):

- pipeline: ``preprocess_batch`` (each parquet read once, NaN/DC/ICA once per recording,
  the torch front end batched over all windows of a recording, one Zarr store);
- baseline: per train.csv row, read the EEG and spectrogram parquets, MNE band-pass and
  notch filter the window, fit MNE ICA (picard, defaults) on the window, and compute a
  scipy spectrogram per chain. It runs on ``--baseline-rows`` rows drawn at random (seeded)
  from the whole data set, so they have the data set's mix of recording lengths.

Recording lengths (``--lengths``): "realistic" (default) is a patient-stratified
``--fraction`` of ``hms synth --preset full`` (the real HMS shape: about 6.8 rows per
recording with a long tail of long recordings with hundreds of overlapping windows);
"demo" is the small demo generator (``--patients``), whose recordings are all short.

Both import their libraries before the clock starts (a one-time cost per process).
Rates are windows per CPU-second of the single-threaded child (windows per second per
core, unaffected by other load on a shared machine); the headline rates are medians over
``--repeats`` runs, each run's rate is listed too, and wall-clock rates are printed beside
them. The pipeline also runs once on a ``--large-factor`` times larger data set to show
that its memory peak does not grow with the number of recordings. Prints one JSON line.

    .venv/bin/python bench/preprocess.py [--lengths realistic] [--fraction 0.003] [--repeats 5]
        [--large-factor 3] [--baseline-rows 12] [--lengths demo --patients 4]
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


def _import_libraries() -> None:
    """Import what either side may import lazily (MNE, the baseline's ICA solver and its
    scikit-learn, zarr) before the clock starts: a one-time cost per process (about 0.5-0.9 s
    of CPU) that a real batch of thousands of windows never notices, but that would weigh on
    a run of a few hundred windows or a dozen baseline rows."""
    import mne.preprocessing  # noqa: F401
    import picard  # noqa: F401
    import zarr  # noqa: F401


def run_pipeline(data_dir: str, out_store: str) -> dict:
    _import_libraries()
    from hms_core.data.io import read_train_csv
    from hms_core.preprocess import preprocess_batch

    df = read_train_csv(Path(data_dir) / "train.csv")
    start, cpu = time.perf_counter(), time.process_time()
    result = preprocess_batch(data_dir, df, sorted(df["eeg_id"].unique()), out_store, {}, threads=1)
    return {"seconds": time.perf_counter() - start, "cpu_s": time.process_time() - cpu, **result}


def run_baseline(data_dir: str, max_rows: int, seed: int) -> dict:
    import mne
    import numpy as np
    import pandas as pd
    from scipy import signal as sp_signal

    from hms_core.contract import EEG_CHANNELS, SAMPLING_RATE_HZ, SPEC_COLUMNS
    from hms_core.data.io import eeg_path, eeg_window_slice, read_train_csv, spectrogram_first_row, spectrogram_path
    from hms_core.signal.montage import bipolar_montage

    _import_libraries()
    mne.set_log_level("ERROR")
    df = read_train_csv(Path(data_dir) / "train.csv")
    df = df.sample(n=min(max_rows, len(df)), random_state=seed)
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


def _generate(out: Path, args, *, large: bool) -> None:
    if args.lengths == "realistic":
        from hms_core.data.synthetic.preset import generate_preset

        fraction = args.fraction * (args.large_factor if large else 1)
        generate_preset(out, fraction=min(fraction, 1.0), seed=args.seed + large, n_test=1, save_answer_key=False)
    else:
        from hms_core.data.synthetic import generate_dataset

        generate_dataset(out, n_patients=args.patients * (args.large_factor if large else 1), seed=args.seed + large,
                         n_test=1, save_answer_key=False)


def _recording_seconds(data_dir: Path) -> list[float]:
    import pyarrow.parquet as pq

    from hms_core.contract import SAMPLING_RATE_HZ

    return [pq.ParquetFile(f).metadata.num_rows / SAMPLING_RATE_HZ for f in (data_dir / "train_eegs").glob("*.parquet")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", choices=("realistic", "demo"), default="realistic",
                        help="recording lengths: a fraction of the full preset (default) or the demo generator")
    parser.add_argument("--fraction", type=float, default=0.003,
                        help="realistic: patient-stratified share of the full preset (default 0.003: 6 patients)")
    parser.add_argument("--patients", type=int, default=4, help="demo: patients of the small data set (default 4)")
    parser.add_argument("--large-factor", type=int, default=3, help="the large data set has this many times more")
    parser.add_argument("--repeats", type=int, default=5, help="pipeline and baseline runs on the small set (median)")
    parser.add_argument("--baseline-rows", type=int, default=12,
                        help="train.csv rows the baseline processes, drawn at random (default 12)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=("pipeline", "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "pipeline":
        print(json.dumps(run_pipeline(args.data, args.out)))
        return
    if args.worker == "baseline":
        print(json.dumps(run_baseline(args.data, args.baseline_rows, args.seed)))
        return

    import logging
    import statistics

    logging.disable(logging.WARNING)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        small, large = Path(tmp) / "small", Path(tmp) / "large"
        _generate(small, args, large=False)
        _generate(large, args, large=True)
        lengths = _recording_seconds(small)
        pipes, bases = [], []
        for i in range(args.repeats):
            pipes.append(_child("--worker", "pipeline", "--data", str(small), "--out", str(Path(tmp) / f"s{i}.zarr")))
            bases.append(_child("--worker", "baseline", "--data", str(small), "--baseline-rows",
                                str(args.baseline_rows), "--seed", str(args.seed)))
        pipe_large, rss_large = _child("--worker", "pipeline", "--data", str(large), "--out", str(Path(tmp) / "l.zarr"))
    # Rates per CPU-second of the single-threaded worker (= per core), robust to a shared
    # machine; the wall-clock rates are reported beside them.
    rates = [p["n_windows"] / p["cpu_s"] for p, _ in pipes]
    base_rates = [b["n_windows"] / b["cpu_s"] for b, _ in bases]
    rate, base_rate = statistics.median(rates), statistics.median(base_rates)
    pipe, base = pipes[0][0], bases[0][0]
    print(json.dumps({
        "windows_per_s": round(rate, 3), "baseline_windows_per_s": round(base_rate, 3),
        "speedup": round(rate / base_rate, 2), "lengths": args.lengths,
        "fraction": args.fraction if args.lengths == "realistic" else None,
        "windows_per_s_runs": [round(r, 3) for r in rates], "baseline_windows_per_s_runs": [round(r, 3) for r in base_rates],
        "peak_rss_mb": round(max(r for _, r in pipes), 1), "peak_rss_mb_large": round(rss_large, 1),
        "baseline_peak_rss_mb": round(max(r for _, r in bases), 1),
        "wall_windows_per_s": round(statistics.median(p["n_windows"] / p["seconds"] for p, _ in pipes), 3),
        "wall_baseline_windows_per_s": round(statistics.median(b["n_windows"] / b["seconds"] for b, _ in bases), 3),
        "n_windows": pipe["n_windows"], "n_recordings": pipe["n_recordings"],
        "windows_per_recording": round(pipe["n_windows"] / max(pipe["n_recordings"], 1), 2),
        "recording_s_median": round(statistics.median(lengths), 1), "recording_s_max": round(max(lengths), 1),
        "recording_s_total": round(sum(lengths), 1),
        "n_windows_large": pipe_large["n_windows"], "n_recordings_large": pipe_large["n_recordings"],
        "windows_per_s_large": round(pipe_large["n_windows"] / pipe_large["cpu_s"], 3),
        "baseline_rows": base["n_windows"], "threads": 1, "total_s": round(time.perf_counter() - t0, 1),
    }))


if __name__ == "__main__":
    main()
