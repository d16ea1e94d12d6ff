"""Training throughput of each model: one JSON line per model (and per mode on CUDA).

CPU: fp32 eager training steps -> samples/s and peak resident memory.
CUDA (when present): fp32 eager, bf16 + channels-last, and with ``--compile`` also bf16 +
channels-last + torch.compile: samples/s, the ratio to fp32 eager, peak GPU memory and the
GPU's busy percentage sampled with pynvml (None when pynvml is not installed).

    python bench/train.py --size demo --threads 1
    python bench/train.py --size full --batch-size 32 --steps 20 --compile

Inputs are random tensors of the store's shapes (``window_shapes`` of the default
front-end), so no data set is needed.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time

import torch

from hms_core.models import create_model
from hms_core.signal.frontend import FrontendConfig, window_shapes
from hms_core.train.device import autocast_context
from hms_core.train.losses import kl_loss

# Model kwargs of the CPU demo and of the full HMS run (same values as the config files).
PRESETS = {
    "demo": {
        "resnet1d_gru": dict(stem_width=16, widths=(16, 32, 48), strides=(4, 4, 4), gru_hidden=32,
                             input_downsample=4),
        "efficientnet": dict(backbone="test_efficientnet", image_size=96),
    },
    "full": {
        "resnet1d_gru": dict(widths=(64, 128, 256, 512), gru_hidden=256),
        "efficientnet": dict(backbone="efficientnet_b5", image_size=512),
    },
}


class _GpuSampler:
    """Mean GPU utilisation (%) over a block, sampled every 50 ms with pynvml."""

    def __init__(self, device_index: int):
        self._samples: list[int] = []
        self._stop = threading.Event()
        self._thread = None
        self._nvml = None  # no pynvml or no NVML: busy % stays None
        try:
            import pynvml
        except ImportError:
            return
        try:
            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        except pynvml.NVMLError:
            return
        self._nvml = pynvml

    def __enter__(self):
        if self._nvml is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self._samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
            time.sleep(0.05)

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def busy_pct(self) -> float | None:
        return sum(self._samples) / len(self._samples) if self._samples else None


def _inputs(model, batch: int, shapes, device):
    return [torch.randn(batch, *shapes[f], device=device) * (50.0 if f == "chains" else 1.0)
            for f in model.input_fields]


def bench_one(name: str, kwargs: dict, *, batch: int, steps: int, warmup: int, device: torch.device,
              precision: str = "fp32", channels_last: bool = False, compile_model: bool = False
              ) -> dict:
    """Time ``steps`` training steps of model ``name`` after ``warmup`` steps."""
    torch.manual_seed(0)
    shapes = window_shapes(FrontendConfig())
    model = create_model(name, **kwargs).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    run = torch.compile(model) if compile_model else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = _inputs(model, batch, shapes, device)
    target = torch.softmax(torch.randn(batch, 6, device=device), dim=1)

    def step():
        with autocast_context(precision, device):
            loss = kl_loss(run(*inputs), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    sampler = _GpuSampler(device.index or 0) if device.type == "cuda" else None
    t0, cpu0 = time.perf_counter(), time.process_time()
    if sampler:
        with sampler:
            for _ in range(steps):
                step()
            torch.cuda.synchronize()
    else:
        for _ in range(steps):
            step()
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - cpu0
    out = {"model": name, "device": device.type, "precision": precision,
           "channels_last": channels_last, "compile": compile_model, "batch_size": batch,
           "steps": steps, "samples_per_s": round(batch * steps / seconds, 2),
           "n_params": sum(p.numel() for p in model.parameters()),
           "threads": torch.get_num_threads()}
    if device.type == "cuda":
        out["peak_gpu_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        out["gpu_busy_pct"] = sampler.busy_pct
    else:  # CPU time shows what a free core gives when the machine is shared
        out["samples_per_cpu_s"] = round(batch * steps / cpu_seconds, 2)
        out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(PRESETS["demo"]))
    p.add_argument("--size", choices=sorted(PRESETS), default="demo")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="also torch.compile the fast CUDA mode")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    for name in args.models:
        kwargs = PRESETS[args.size][name]
        common = dict(batch=args.batch_size, steps=args.steps, warmup=args.warmup)
        if not torch.cuda.is_available():
            print(json.dumps(bench_one(name, kwargs, device=torch.device("cpu"), **common)))
            continue
        cuda = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        # each line as soon as it is measured: a time limit that cuts torch.compile short
        # (bench/gpu.sh) still leaves the eager figures
        base = bench_one(name, kwargs, device=cuda, **common)
        print(json.dumps(base), flush=True)
        for compile_model in ((False, True) if args.compile else (False,)):
            fast = bench_one(name, kwargs, device=cuda, precision="bf16", channels_last=True,
                             compile_model=compile_model, **common)
            fast["speedup_vs_fp32_eager"] = round(fast["samples_per_s"] / base["samples_per_s"], 3)
            print(json.dumps(fast), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
