"""Where training runs: device choice, autocast for a precision, moving batches."""
from __future__ import annotations

import os
from typing import Any, Mapping

import torch

from hms_core.errors import ConfigError


def select_device(name: str = "auto", *, expandable_segments: bool = True) -> torch.device:
    """Pick the device; sets the CUDA allocator config before CUDA is initialised."""
    if expandable_segments and not torch.cuda.is_initialized():
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("training.device: 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def autocast_context(precision: str, device: torch.device):
    """The autocast context for ``precision`` on ``device`` (a no-op for fp32)."""
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("training.precision: 'fp16' needs CUDA (GradScaler); use 'bf16' on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def move_to_device(batch: Any, device: torch.device, *, channels_last: bool = False) -> Any:
    """Move a (nested) batch of tensors to ``device``; 4-D float tensors optionally channels-last."""
    if isinstance(batch, torch.Tensor):
        out = batch.to(device, non_blocking=True)
        if channels_last and out.ndim == 4 and out.is_floating_point():
            out = out.contiguous(memory_format=torch.channels_last)
        return out
    if isinstance(batch, Mapping):
        return {k: move_to_device(v, device, channels_last=channels_last) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device, channels_last=channels_last) for v in batch)
    return batch
