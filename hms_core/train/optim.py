"""Optimiser, learning-rate schedule and weight EMA of the training loop.

The learning rate is a pure function of the global optimiser step (exact resume depends on
it): :class:`LrSchedule` cuts the run into segments, each with its own linear warm-up to its
own peak and its own decay (``training.scheduler``) to ``min_lr_frac`` of that peak. A plain
run is one segment; a restart (e.g. the second stage of two-stage training,
``training.two_stage.lr_scale``) starts a new segment at an epoch boundary.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Mapping, Sequence

import torch
from torch import nn

from hms_core.errors import ConfigError
from hms_core.train.engine_config import EngineConfig


def lr_at(step: int, total_steps: int, cfg: EngineConfig, peak: float | None = None) -> float:
    """Learning rate at optimiser step ``step`` (0-based) of a segment of ``total_steps``.

    Parameters
    ----------
    step : int
        Step within the segment (0-based).
    total_steps : int
        Steps of the segment.
    cfg : EngineConfig
        ``scheduler``, ``warmup_frac``, ``min_lr_frac`` and (without ``peak``) ``lr``.
    peak : float, optional
        Peak learning rate of the segment; default ``cfg.lr``.

    Returns
    -------
    float
        The learning rate: linear warm-up over ``warmup_frac * total_steps`` steps, then
        constant, linear or cosine decay to ``min_lr_frac * peak`` at the segment's end.
    """
    peak = cfg.lr if peak is None else peak
    warmup = int(cfg.warmup_frac * total_steps)
    if step < warmup:
        return peak * (step + 1) / warmup
    if cfg.scheduler == "constant":
        return peak
    progress = (step - warmup) / max(1, total_steps - warmup)
    progress = min(max(progress, 0.0), 1.0)
    floor = peak * cfg.min_lr_frac
    if cfg.scheduler == "linear":
        return floor + (peak - floor) * (1.0 - progress)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclasses.dataclass(frozen=True)
class LrSchedule:
    """The learning rate of a whole run, as a pure function of the global step.

    Attributes
    ----------
    cfg : EngineConfig
        Peak ``lr``, ``scheduler``, ``warmup_frac`` and ``min_lr_frac`` of every segment.
    segments : tuple of (int, int, float)
        ``(first_global_step, n_steps, peak_scale)`` per segment, in order and contiguous;
        a segment's peak learning rate is ``peak_scale * cfg.lr``.
    """

    cfg: EngineConfig
    segments: tuple[tuple[int, int, float], ...]

    @classmethod
    def from_epochs(cls, cfg: EngineConfig, steps_per_epoch: Sequence[int],
                    restarts: Mapping[int, float] | None = None) -> "LrSchedule":
        """The schedule of a run whose epoch ``e`` has ``steps_per_epoch[e]`` steps.

        ``restarts`` maps an epoch (0-based, > 0) to the peak scale of the segment that
        starts with it; the first segment's scale is 1.
        """
        restarts = dict(restarts or {})
        bad = {e: s for e, s in restarts.items()
               if not 0 < int(e) < len(steps_per_epoch) or not float(s) > 0}
        if bad:
            raise ConfigError(f"learning-rate restarts {bad}: epochs must lie in 1.."
                              f"{len(steps_per_epoch) - 1} and peak scales be > 0")
        starts = [0, *sorted(int(e) for e in restarts)]
        ends = [*starts[1:], len(steps_per_epoch)]
        first_step = [0]
        for n in steps_per_epoch:
            first_step.append(first_step[-1] + int(n))
        segments = tuple((first_step[a], first_step[b] - first_step[a],
                          1.0 if a == 0 else float(restarts[a])) for a, b in zip(starts, ends))
        return cls(cfg=cfg, segments=segments)

    @property
    def total_steps(self) -> int:
        """Optimiser steps of the whole run."""
        return sum(n for _, n, _ in self.segments)

    def __call__(self, step: int) -> float:
        """Learning rate at global step ``step`` (0-based); past the end, the last one's."""
        first, n, scale = next(seg for seg in reversed(self.segments)
                               if step >= seg[0] or seg is self.segments[0])
        return lr_at(step - first, n, self.cfg, peak=self.cfg.lr * scale)

    def describe(self) -> list[dict[str, float]]:
        """The segments as plain dicts (for the checkpoint and the logs)."""
        return [{"first_step": a, "steps": n, "peak_lr": self.cfg.lr * s}
                for a, n, s in self.segments]


class ModelEma:
    """Exponential moving average of a model's floating-point parameters and buffers."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for ema_v, v in zip(self.module.state_dict().values(), model.state_dict().values()):
            if ema_v.is_floating_point():
                ema_v.mul_(self.decay).add_(v.detach(), alpha=1.0 - self.decay)
            else:
                ema_v.copy_(v)


def build_optimizer(model: nn.Module, cfg: EngineConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
