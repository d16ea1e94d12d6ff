"""Benchmark ``hms predict``'s path: the ONNX ensemble vs the same ensemble in PyTorch eager.

Prints one JSON line. Both engines run the same :class:`~hms_core.export.graph.EnsembleGraph`
(window frontend, every member's fold networks with hemisphere-swap TTA, stacker,
temperature, uncertainty) on the same cleaned test windows, on the CPU with ``--threads``
threads, each in its own process (so each peak RSS is its own). The members have their
default architectures with random weights: speed does not depend on the weight values.

Also measured: ``predict_windows_per_s``, the whole ``hms predict`` call (parquet reading,
``clean_recording`` with the given ICA setting, ONNX Runtime, CSV writing).

Usage: ``python bench/predict.py [--windows 32] [--threads 2] [--folds 2] [--ica] [--provider cuda]``
(``cuda`` needs onnxruntime-gpu; it fails rather than fall back to the CPU).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MEMBERS = {"resnet1d_gru": {}, "efficientnet": {"backbone": "efficientnet_b0", "image_size": 256}}


def _build_graph(n_folds: int, seed: int = 0):
    import torch

    from hms_core.ensemble.meta_learner import MetaLearner
    from hms_core.ensemble.stacking import StackedHead
    from hms_core.export.graph import EnsembleGraph, FoldAverage
    from hms_core.models.registry import create_model
    from hms_core.signal.frontend import WindowFrontend

    torch.manual_seed(seed)
    members = [FoldAverage([create_model(name, **kw) for _ in range(n_folds)]) for name, kw in MEMBERS.items()]
    head = StackedHead([MetaLearner(len(members)) for _ in range(n_folds)], temperature=1.0)
    weights = [1.0 / len(members)] * len(members)
    return EnsembleGraph(WindowFrontend(), members, head, weights).eval()


def _latencies(run_one, raw: np.ndarray, spec: np.ndarray, repeats: int) -> dict:
    times = []
    for i in range(repeats):
        j = i % len(raw)
        t0 = time.perf_counter()
        run_one(raw[j:j + 1], spec[j:j + 1])
        times.append(time.perf_counter() - t0)
    return {"latency_ms_p50": 1e3 * float(np.percentile(times, 50)),
            "latency_ms_p99": 1e3 * float(np.percentile(times, 99))}


def _throughput(run_batch, raw: np.ndarray, spec: np.ndarray, batch_size: int) -> float:
    run_batch(raw[:batch_size], spec[:batch_size])  # warm-up
    t0 = time.perf_counter()
    for s in range(0, len(raw), batch_size):
        run_batch(raw[s:s + batch_size], spec[s:s + batch_size])
    return len(raw) / (time.perf_counter() - t0)


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM: reset at exec, unlike ru_maxrss), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(engine: str, work: str, threads: int, batch_size: int, repeats: int, queue,
           provider: str = "cpu") -> None:
    import torch

    torch.set_num_threads(threads)
    with np.load(Path(work) / "windows.npz") as npz:
        raw, spec = npz["raw"], npz["spec"]
    if engine == "onnx":
        from hms_core.export.runtime import ort_session

        session = ort_session(Path(work) / "ensemble.onnx", provider=provider, threads=threads)

        def run(r, s):
            return session.run(None, {"raw_uv": r, "spec_power": s})
    else:
        device = torch.device("cuda" if provider == "cuda" else "cpu")
        graph = _build_graph(json.loads((Path(work) / "setup.json").read_text())["folds"]).to(device)

        def run(r, s):
            with torch.inference_mode():
                out = graph(torch.from_numpy(r).to(device), torch.from_numpy(s).to(device))
                return [o.cpu() for o in out] if isinstance(out, (tuple, list)) else out.cpu()
    out = {"windows_per_s": _throughput(run, raw, spec, batch_size), **_latencies(run, raw, spec, repeats)}
    out["peak_rss_mb"] = _peak_rss_mb()
    queue.put(out)


def _measure(engine: str, work: Path, args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(engine, str(work), args.threads, args.batch_size, args.repeats, queue,
                                            args.provider))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=32, help="test windows (default 32)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--folds", type=int, default=2, help="fold networks per member (default 2)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per call (default 8)")
    parser.add_argument("--repeats", type=int, default=20, help="single-window calls for latency (default 20)")
    parser.add_argument("--ica", action="store_true", help="ICA on in the predict-path measurement")
    parser.add_argument("--provider", choices=("cpu", "cuda"), default="cpu",
                        help="ONNX Runtime provider, and torch's device for the eager run (default cpu)")
    args = parser.parse_args(argv)

    import logging

    import torch

    from hms_core.data.synthetic import generate_dataset
    from hms_core.export.onnx import export_ensemble_graph
    from hms_core.inference.predict import cleaning_config, predict, read_test_window

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    preprocessing = {"ica": {"enabled": bool(args.ica)}}
    with tempfile.TemporaryDirectory(prefix="hms_bench_predict_") as tmp:
        work = Path(tmp)
        data = work / "data"
        generate_dataset(data, n_patients=1, seed=0, recordings_per_patient=(1, 1), sub_windows=(1, 1),
                         n_test=args.windows, save_answer_key=False)
        import pandas as pd

        test = pd.read_csv(data / "test.csv")
        cleaning = cleaning_config(preprocessing)
        windows = [read_test_window(data, int(r.eeg_id), int(r.spectrogram_id), cleaning) for r in test.itertuples()]
        raw = np.stack([w[0] for w in windows]).astype(np.float32)
        spec = np.stack([w[1] for w in windows]).astype(np.float32)
        np.savez(work / "windows.npz", raw=raw, spec=spec)
        (work / "setup.json").write_text(json.dumps({"folds": args.folds}))
        graph = _build_graph(args.folds)
        parity = export_ensemble_graph(graph, work / "ensemble.onnx", members=list(MEMBERS),
                                       raw_windows=raw[:4], spec_windows=spec[:4], preprocessing=preprocessing,
                                       cfg={"provider": "cpu"})
        del graph
        onnx = _measure("onnx", work, args)
        eager = _measure("torch", work, args)
        t0 = time.perf_counter()
        predict(data, work / "submission.csv", model_path=work / "ensemble.onnx", provider=args.provider,
                threads=args.threads, batch_size=args.batch_size, progress=False)
        predict_rate = len(test) / (time.perf_counter() - t0)
    result = {
        "bench": "predict", "device": args.provider, "threads": args.threads, "n_windows": int(len(raw)),
        "batch_size": args.batch_size, "members": {m: args.folds for m in MEMBERS},
        "onnx_windows_per_s": round(onnx["windows_per_s"], 3),
        "torch_windows_per_s": round(eager["windows_per_s"], 3),
        "speedup": round(onnx["windows_per_s"] / eager["windows_per_s"], 3), "goal_speedup": 1.5,
        "onnx_latency_ms_p50": round(onnx["latency_ms_p50"], 1), "onnx_latency_ms_p99": round(onnx["latency_ms_p99"], 1),
        "torch_latency_ms_p50": round(eager["latency_ms_p50"], 1), "torch_latency_ms_p99": round(eager["latency_ms_p99"], 1),
        "onnx_peak_rss_mb": round(onnx["peak_rss_mb"], 1), "torch_peak_rss_mb": round(eager["peak_rss_mb"], 1),
        "predict_windows_per_s": round(predict_rate, 3), "predict_ica": bool(args.ica),
        "parity_max_abs_diff": parity["max_abs_diff"],
        "loadavg_1min_at_end": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
