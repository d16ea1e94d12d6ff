"""Training data loading per DataLoader worker, from the Zarr window stores. Prints one JSON line.

For each model of the full config (``config/config.yaml``; ``--models``), one DataLoader
worker process (one thread, as the engine's workers) reads random windows of the stores in
batches of the model's ``training.batch_size``, in two ways measured in the same run:

- ``read``: what the engine's workers do, :class:`~hms_core.train.data.WindowDataset` reads
  (decoding the Zarr chunks) -- the baseline;
- ``ready``: the read, then the model's training augmentations
  (:func:`~hms_core.train.augment.augment_batch` with its ``training.augment``) and its
  model-ready tensor on the CPU: the ResNet1D-GRU's montage signals (``montage_signals``);
  the EfficientNet's tiled grey image at the config's largest ``image_sizes``
  (``tile_image``: everything of its input that depends on the window), to which the main
  process adds the constant position channels (``image_channels``; on the device in
  training: shipping them from the worker would triple the bytes per window). The engine
  runs these in the main process on the device; here they show what a CPU worker would
  need to do it. For the EfficientNet a third way, ``full_image``, builds the whole input
  (``build_image``) in the worker.

Per model and way: samples/s of one worker (first batch excluded: worker start; the time
of the bench's own memory probe, ``/proc/self/smaps_rollup``, excluded too) in wall-clock
time and per CPU second of the worker (what one core would do, on a shared machine), the workers
needed for ``--target`` (default 600) samples/s, ``ready / read``, the worker's peak
resident and private memory (MB), and the bytes per window read from the stores
(compressed, on disk) and handed to the main process.

    python bench/loader.py                      # builds small synthetic stores first
    python bench/loader.py --stores data/processed --batches 50

Without ``--stores`` the stores are made from ``hms synth``-style data
(:func:`~hms_core.data.synthetic.generate_dataset`) with the full config's preprocessing
(ICA off: it changes the values, not the shapes or the read cost).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from hms_core.config.sections import load_config
from hms_core.models import create_model
from hms_core.models.resnet1d_gru import montage_signals
from hms_core.store import WindowStore
from hms_core.train import augment as aug
from hms_core.train.data import WindowDataset, identity_collate
from hms_core.train.fold import resolve_model_config


def _memory_mb() -> tuple[float, float, float, float]:
    """This process's peak resident memory and its private (unshared) memory now, in MB, and
    the wall and CPU seconds reading them took (the bench's overhead, not the loader's)."""
    started, cpu = time.perf_counter(), time.process_time()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    private = 0.0
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                private += int(line.split()[1]) / 1024
    return peak, private, time.perf_counter() - started, time.process_time() - cpu


class ReadyWindows:
    """Windows of a store as one model's augmented, model-ready training batches (CPU).

    Parameters
    ----------
    windows : WindowDataset
    model_name : str
        "efficientnet" or "resnet1d_gru".
    model : nn.Module
        That model (the EfficientNet's ``tile_image``, ``build_image`` and ``input_fields``).
    augment : AugmentConfig
    way : {"read", "ready", "full_image"}
        What the worker does (module docstring).
    """

    collate_fn = staticmethod(identity_collate)

    def __init__(self, windows: WindowDataset, model_name: str, model: torch.nn.Module,
                 augment: aug.AugmentConfig, way: str):
        self.windows, self.model_name, self.model = windows, model_name, model
        self.augment, self.way = augment, way

    def __len__(self) -> int:
        return len(self.windows)

    def __getitems__(self, indices):
        batch = self.windows.__getitems__(indices)
        fields = self.windows.fields
        if self.way != "read":
            batch = aug.augment_batch(batch, fields, self.augment)
            inputs = [batch[f] for f in fields]
            with torch.no_grad():
                if self.model_name != "efficientnet":
                    ready = montage_signals(self.model.montage, dict(zip(fields, inputs)))  # (B, C, T)
                elif self.way == "ready":
                    ready = self.model.tile_image(*inputs)  # (B, 1, S, 3 * (S // 3))
                else:
                    ready = self.model.build_image(*inputs)  # (B, C, S, 3 * (S // 3))
            batch = {"x": ready, "target": batch["target"]}
        peak, private, probe_s, probe_cpu_s = _memory_mb()
        return {**batch, "peak_mb": torch.tensor(peak), "private_mb": torch.tensor(private),
                "probe_s": torch.tensor(probe_s), "probe_cpu_s": torch.tensor(probe_cpu_s),
                "cpu_s": torch.tensor(time.process_time(), dtype=torch.float64)}


def _measure(dataset: ReadyWindows, batch_size: int, n_batches: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    order = [rng.integers(0, len(dataset), batch_size).tolist() for _ in range(n_batches + 1)]
    loader = DataLoader(dataset, batch_sampler=order, collate_fn=dataset.collate_fn, num_workers=1,
                        prefetch_factor=2, generator=torch.Generator().manual_seed(seed))
    peak = private = probe_s = probe_cpu_s = 0.0
    started = started_cpu = batch = None
    for i, batch in enumerate(loader):
        if i == 0:  # worker start-up and imports are not throughput
            started, started_cpu = time.perf_counter(), float(batch["cpu_s"])
        else:
            probe_s += float(batch["probe_s"])
            probe_cpu_s += float(batch["probe_cpu_s"])
        peak = max(peak, float(batch["peak_mb"]))
        private = max(private, float(batch["private_mb"]))
    seconds = time.perf_counter() - started - probe_s
    # The worker's CPU time from batch 0 to the last: the last n batches' reads and the
    # hand-over of batches 0..n-1 (into shared memory), whatever else runs on the machine.
    cpu_seconds = float(batch["cpu_s"]) - started_cpu - probe_cpu_s
    handed = {k: v for k, v in batch.items() if k not in ("peak_mb", "private_mb", "probe_s", "probe_cpu_s", "cpu_s")}
    x = handed.get("x")
    if x is not None and dataset.way == "ready" and dataset.model_name == "efficientnet":
        with torch.no_grad():
            x = dataset.model.image_channels(x)  # the model's input, as the device would finish it
    return {"samples_per_s": n_batches * batch_size / seconds,
            "samples_per_cpu_s": n_batches * batch_size / cpu_seconds, "worker_peak_rss_mb": round(peak, 1),
            "worker_private_mb": round(private, 1),
            "batch_shape": list((x if x is not None else handed[dataset.windows.fields[0]]).shape),
            "handed_bytes_per_window": sum(v.nbytes for v in handed.values()) // batch_size}


def _stored_bytes_per_window(paths: list[Path], fields: tuple[str, ...], n_windows: int) -> int:
    """Compressed bytes on disk of ``fields`` per window (shard indexes included)."""
    total = sum(f.stat().st_size for p in paths for field in fields
                for f in (p / field / "c").rglob("*") if f.is_file())
    return total // max(n_windows, 1)


def _build_stores(work: Path, config: dict, n_patients: int) -> list[Path]:
    from hms_core.data.io import read_train_csv
    from hms_core.data.synthetic import generate_dataset
    from hms_core.preprocess import assign_batches, preprocess_batch

    data = work / "data"
    generate_dataset(data, n_patients=n_patients, seed=0, recordings_per_patient=(1, 2), sub_windows=(1, 6),
                     n_test=1, save_answer_key=False)
    train = read_train_csv(data / "train.csv")
    cfg = {**config["preprocessing"], "ica": {**config["preprocessing"].get("ica", {}), "enabled": False}}
    paths = []
    for batch, eeg_ids in assign_batches(train, 2).items():
        paths.append(work / f"batch_{batch:04d}.zarr")
        preprocess_batch(data, train, eeg_ids, paths[-1], cfg)
    return paths


def _model(config: dict, name: str):
    training, kwargs, _ = resolve_model_config(config, name)  # image_size: the largest size
    kwargs = {k: v for k, v in kwargs.items() if k not in ("pretrained", "pretrained_path")}
    if name == "resnet1d_gru":
        kwargs["foundation_mode"] = None  # no encoder file needed for the inputs
    return training, create_model(name, **kwargs).eval()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", type=Path, help="folder of *.zarr window stores (default: build synthetic ones)")
    parser.add_argument("--models", nargs="+", default=["efficientnet", "resnet1d_gru"])
    parser.add_argument("--batches", type=int, default=12, help="timed batches per measurement (default 12)")
    parser.add_argument("--patients", type=int, default=6, help="synthetic patients (default 6)")
    parser.add_argument("--target", type=float, default=600.0, help="samples/s to reach (default 600)")
    args = parser.parse_args(argv)

    import logging

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    config = load_config()
    with tempfile.TemporaryDirectory(prefix="hms_bench_loader_") as tmp:
        paths = (sorted(args.stores.glob("*.zarr")) if args.stores else
                 _build_stores(Path(tmp), config, args.patients))
        store = WindowStore(paths)
        result = {"bench": "loader", "stores": len(paths), "n_windows": int(len(store.index)),
                  "synthetic": args.stores is None, "target_samples_per_s": args.target, "models": {}}
        for name in args.models:
            training, model = _model(config, name)
            windows = WindowDataset(store, np.arange(len(store.index)), tuple(model.input_fields))
            bs = training.engine.batch_size
            ways = ["read", "ready"] + (["full_image"] if name == "efficientnet" else [])
            got = {way: _measure(ReadyWindows(windows, name, model, training.augment, way), bs, args.batches, 0)
                   for way in ways}
            row = {"batch_size": bs, "fields": list(model.input_fields),
                   "image_size": getattr(model, "image_size", None), "ready_shape": got["ready"]["batch_shape"],
                   "stored_bytes_per_window": _stored_bytes_per_window(paths, windows.fields, len(store.index))}
            for way in ways:
                rate = got[way]["samples_per_s"]
                row.update({f"{way}_samples_per_s_per_worker": round(rate, 1),
                            f"{way}_samples_per_cpu_s_per_worker": round(got[way]["samples_per_cpu_s"], 1),
                            f"workers_for_target_{way}": math.ceil(args.target / rate),
                            f"worker_peak_rss_mb_{way}": got[way]["worker_peak_rss_mb"],
                            f"worker_private_mb_{way}": got[way]["worker_private_mb"],
                            f"handed_bytes_per_window_{way}": got[way]["handed_bytes_per_window"]})
            row["ready_over_read"] = round(got["ready"]["samples_per_s"] / got["read"]["samples_per_s"], 3)
            result["models"][name] = row
    result["cpu_count"] = os.cpu_count()
    result["loadavg_1min_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
