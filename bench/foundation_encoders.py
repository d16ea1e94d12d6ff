"""CPU cost of each registered foundation encoder at its published size. One JSON line each.

For every ``pretrain.encoder`` (``hms`` at config/config.yaml's size, the braindecode ones at
their published sizes, 10 patches), random windows in uV go through one pretraining step with
all three objectives (forward + backward) and through ``forward_features`` without gradients.
Times are CPU seconds of this process (``time.process_time``), so other jobs on the machine
inflate them less than wall time; compare encoders within one run.

Usage: ``python bench/foundation_encoders.py [--batch 8] [--steps 2] [--threads 1]``
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from hms_core import contract
from hms_core.foundation.head import PretrainModel
from hms_core.foundation.objectives import ObjectivesConfig
from hms_core.models.encoder_registry import ENCODER_NAMES, build_encoder

PUBLISHED_SIZES = {
    "hms": {"dim": 256, "depth": 8, "heads": 8, "mlp_ratio": 4.0},  # config/config.yaml
    "cbramod": {"dim": 200, "depth": 12, "heads": 8, "mlp_ratio": 4.0},
    "biot": {"dim": 256, "depth": 4, "heads": 8, "mlp_ratio": 4.0},
    "labram": {"dim": 200, "depth": 12, "heads": 10, "mlp_ratio": 4.0},
}


def _cpu_seconds(step, repeats: int) -> float:
    step()  # warm-up
    start = time.process_time()
    for _ in range(repeats):
        step()
    return (time.process_time() - start) / repeats


def measure(name: str, *, batch: int, steps: int) -> dict:
    torch.manual_seed(0)
    encoder = build_encoder(name, **PUBLISHED_SIZES[name], max_patches=10)
    model = PretrainModel(encoder, ObjectivesConfig(), random_crop=True)
    x = torch.randn(batch, len(encoder.channel_names), contract.WINDOW_SAMPLES) * 50

    def train_step():
        model.zero_grad(set_to_none=True)
        model(x)[0].backward()

    def features():
        with torch.no_grad():
            encoder.forward_features(x)

    model.train()
    train_s = _cpu_seconds(train_step, steps)
    encoder.eval()
    infer_s = _cpu_seconds(features, steps)
    return {"encoder": name, "params_m": round(sum(p.numel() for p in encoder.parameters()) / 1e6, 2),
            "tokens": encoder.n_tokens, "batch": batch, "pretrain_step_cpu_s": round(train_s, 2),
            "features_cpu_ms_per_window": round(1000 * infer_s / batch, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in ENCODER_NAMES:
        print(json.dumps(measure(name, batch=args.batch, steps=args.steps)), flush=True)


if __name__ == "__main__":
    main()
