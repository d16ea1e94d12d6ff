"""Benchmark ``hms annotate`` on a long synthetic EDF recording. Prints one JSON line.

A recording of ``--minutes`` (default 60; the class mix drifts every ~40 s as in the synthetic
data set) is written as EDF with ``mne.export.export_raw``; the ensemble is bench/predict.py's
(default resnet1d_gru + efficientnet_b0 members, ``--folds`` folds, random weights: speed does
not depend on them) exported to ONNX, or ``--model`` an existing ensemble.onnx. The annotate
call runs in its own process, so its peak RSS (VmHWM) is its own: it reads the EDF with
``preload=False`` in pieces, so the peak should not grow with the recording's length beyond
the spectrogram (0.8 MB per 10 min) and the output table.

Usage: ``python bench/annotate.py [--minutes 60] [--threads 2] [--folds 2] [--step-s 10] [--ica]``
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict import MEMBERS, _build_graph, _peak_rss_mb  # noqa: E402  (bench/predict.py)


def _write_recording(path: Path, minutes: float, seed: int = 0) -> None:
    import mne

    from hms_core.contract import RAW_CHANNELS
    from hms_core.data.synthetic import synthesize_recording
    from hms_core.data.synthetic.plan import session_anchors

    rng = np.random.default_rng(seed)
    n = int(minutes * 60 * 200)
    probs, times = session_anchors(rng, 0, n / 200)
    rec = synthesize_recording(n, probs, rng, anchor_times_s=times, nan_stretches=False)
    info = mne.create_info(list(RAW_CHANNELS), 200.0, ["eeg"] * 19 + ["ecg"])
    raw = mne.io.RawArray(rec.raw_uv.T.astype(np.float64) * 1e-6, info, verbose=False)
    mne.export.export_raw(path, raw, verbose=False)


def _child(recording: str, model: str, out: str, threads: int, step_s: float, queue) -> None:
    import torch

    torch.set_num_threads(threads)
    from hms_core.inference.annotate import annotate

    t0 = time.perf_counter()
    result = annotate(recording, out, model_path=model, step_s=step_s, provider="cpu", threads=threads,
                      progress=False)
    seconds = time.perf_counter() - t0
    queue.put({"seconds": seconds, "n_windows": len(result["table"]), "peak_rss_mb": _peak_rss_mb(),
               "duration_s": result["facts"]["duration_s"]})


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="recording length (default 60)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--folds", type=int, default=2, help="fold networks per member (default 2)")
    parser.add_argument("--step-s", type=float, default=10.0, help="annotate --step-s (default 10)")
    parser.add_argument("--ica", action="store_true", help="ICA on (fit_on recording) in the model's metadata")
    parser.add_argument("--model", default=None, help="an existing ensemble.onnx instead of the bench ensemble")
    args = parser.parse_args(argv)

    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="hms_bench_annotate_") as tmp:
        work = Path(tmp)
        recording = work / "long.edf"
        _write_recording(recording, args.minutes)
        model = Path(args.model) if args.model else work / "ensemble.onnx"
        if args.model is None:
            from hms_core.export.onnx import export_ensemble_graph

            graph = _build_graph(args.folds)
            rng = np.random.default_rng(0)
            raw = rng.normal(0, 50, (2, 20, 10000)).astype(np.float32)
            spec = rng.gamma(1.0, 5.0, (2, 300, 400)).astype(np.float32)
            export_ensemble_graph(graph, model, members=list(MEMBERS), raw_windows=raw, spec_windows=spec,
                                  preprocessing={"ica": {"enabled": bool(args.ica)}}, cfg={"provider": "cpu"})
            del graph
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(str(recording), str(model), str(work / "out"), args.threads,
                                                args.step_s, queue))
        proc.start()
        run = queue.get()
        proc.join()
        edf_mb = recording.stat().st_size / 2**20
    result = {
        "bench": "annotate", "device": "cpu", "threads": args.threads, "minutes": args.minutes,
        "step_s": args.step_s, "ica": bool(args.ica),
        "model": str(args.model) if args.model else {m: args.folds for m in MEMBERS},
        "n_windows": run["n_windows"], "seconds": round(run["seconds"], 2),
        "windows_per_s": round(run["n_windows"] / run["seconds"], 3),
        "recording_s_per_s": round(run["duration_s"] / run["seconds"], 1),
        "peak_rss_mb": round(run["peak_rss_mb"], 1), "edf_mb": round(edf_mb, 1),
        "loadavg_1min_at_end": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
