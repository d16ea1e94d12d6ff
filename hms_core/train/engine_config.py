"""Settings of the one training loop: :class:`EngineConfig`.

The config sections ``training``, ``pretrain`` and ``transfer`` each hold one (their keys sit
flat in the section; see :data:`hms_core.config.FLATTEN`).
"""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Literal

from hms_core.config import check_option
from hms_core.errors import ConfigError

Precision = Literal["fp32", "bf16", "fp16"]
Device = Literal["auto", "cpu", "cuda"]
# Settings that change how fast a run goes but not what it computes; left out of the run key.
_NON_RESULT_KEYS = frozenset({"num_workers", "pin_memory", "checkpoint_every_steps",
                              "status_every_s", "progress", "device", "cuda_expandable_segments",
                              "max_nonfinite_steps", "micro_batch_size"})


@dataclasses.dataclass
class EngineConfig:
    """Settings of the training loop (config section ``training``, engine keys).

    Parameters
    ----------
    epochs : int, default 10
        Number of passes over the (per-epoch) training indices; ignored when ``steps`` > 0.
    steps : int, default 0
        Training length in optimiser steps, so that one recipe means the same amount of
        training whatever the data set's size; > 0 replaces ``epochs`` by the fewest whole
        epochs whose steps reach it (:func:`epochs_for_steps`; at most one epoch's steps
        more). 0: ``epochs`` sets the length.
    batch_size : int, default 32
        Windows per optimiser step (the global batch with several processes).
    micro_batch_size : int, default 0
        Rows per forward/backward pass: each (per-process) batch is run in slices of this
        many rows whose gradients add up to the batch mean's before the one optimiser step
        (gradient accumulation; learning rate, clipping and EMA stay per batch). 0: the
        whole batch in one pass. On CUDA out-of-memory a single-process run halves it and
        retries the step, and its checkpoint remembers the micro-batch that fits
        (:mod:`hms_core.train.micro`). Equal to the whole batch up to float rounding,
        except with BatchNorm, which normalises each slice with that slice's statistics.
        Not part of the run key.
    lr : float, default 1e-3
        Peak learning rate.
    weight_decay : float, default 1e-2
        Decoupled (AdamW) or L2 (adam, sgd) weight decay.
    optimizer : {"adamw", "adam", "sgd"}, default "adamw"
        The optimiser (sgd with momentum 0.9).
    scheduler : {"cosine", "linear", "constant"}, default "cosine"
        Decay after warm-up, over all steps of the run, down to ``min_lr_frac * lr``.
    warmup_frac : float, default 0.05
        Fraction of all steps with linear warm-up from 0.
    min_lr_frac : float, default 0.01
        Final learning rate as a fraction of ``lr``.
    grad_clip : float, default 1.0
        Max global gradient norm; 0 disables clipping.
    max_nonfinite_steps : int, default 3
        An optimiser step whose loss is NaN or infinite (any precision; bf16/fp16 overflow,
        divergence, bad inputs) is skipped with a warning: no weight, optimiser or EMA
        update. This many such steps in a row stop training with an error naming the run,
        epoch and step; 0 or 1: stop at the first.
    precision : {"fp32", "bf16", "fp16"}, default "fp32"
        bf16 autocast (CPU or CUDA) or fp16 autocast with a GradScaler (CUDA only).
    tf32 : bool, default True
        Allow TF32 matmul/cuDNN on CUDA (no effect on CPU).
    channels_last : bool, default False
        Put the model (and 4-D inputs) in channels-last memory format.
    compile : bool, default False
        ``torch.compile`` the model for training.
    compile_backend : str, default "inductor"
        ``torch.compile`` backend ("aot_eager" skips code generation, for quick checks).
    compile_mode : str or None, default None
        ``torch.compile`` mode, e.g. "max-autotune".
    grad_checkpointing : bool, default False
        Call ``model.set_grad_checkpointing(True)`` (activation recomputation).
    ema_decay : float, default 0.0
        Exponential moving average of the weights per step; 0 disables. The EMA weights
        are the ones evaluated and returned.
    num_workers : int, default 0
        DataLoader worker processes (reading only; see module notes).
    pin_memory : bool, default True
        Pinned host memory for batches (used only on CUDA).
    checkpoint_every_steps : int, default 0
        Extra checkpoint every N optimiser steps; 0 = only at epoch ends.
    seed : int, default 0
        Seeds torch/NumPy/Python at the start of a fresh run and the data order.
    device : {"auto", "cpu", "cuda"}, default "auto"
        "auto": CUDA when available, else the CPU.
    drop_last : bool, default True
        Drop the last incomplete batch of an epoch (kept if it would be the only one).
    select_metric : str, default "val_kl"
        Key of ``eval_fn``'s dict used to pick the best epoch.
    select_mode : {"min", "max"}, default "min"
        Whether the lowest or the highest ``select_metric`` is best.
    select_best : bool, default True
        Return (and keep) the best epoch's weights instead of the last epoch's.
    status_every_s : float, default 5.0
        Seconds between status-file updates.
    progress : bool, default True
        Show a tqdm progress bar on stderr.
    cuda_expandable_segments : bool, default True
        Set ``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`` before CUDA starts.
    """

    epochs: int = 10
    steps: int = 0
    batch_size: int = 32
    micro_batch_size: int = 0
    lr: float = 1e-3
    weight_decay: float = 1e-2
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_frac: float = 0.05
    min_lr_frac: float = 0.01
    grad_clip: float = 1.0
    max_nonfinite_steps: int = 3
    precision: Precision = "fp32"
    tf32: bool = True
    channels_last: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    compile_mode: str | None = None
    grad_checkpointing: bool = False
    ema_decay: float = 0.0
    num_workers: int = 0
    pin_memory: bool = True
    checkpoint_every_steps: int = 0
    seed: int = 0
    device: Device = "auto"
    drop_last: bool = True
    select_metric: str = "val_kl"
    select_mode: Literal["min", "max"] = "min"
    select_best: bool = True
    status_every_s: float = 5.0
    progress: bool = True
    cuda_expandable_segments: bool = True

    def validate(self, path: str = "training") -> None:
        """Raise ConfigError naming ``<path>.<key>`` for an option or range out of bounds."""
        hints = typing.get_type_hints(type(self))
        for key in ("precision", "scheduler", "optimizer", "device", "select_mode"):
            check_option(f"{path}.{key}", getattr(self, key), typing.get_args(hints[key]))
        for key in ("epochs", "batch_size"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"{path}.{key}: must be >= 1, got {getattr(self, key)!r}")
        if int(self.max_nonfinite_steps) < 0:
            raise ConfigError(f"{path}.max_nonfinite_steps: must be >= 0, got "
                              f"{self.max_nonfinite_steps!r}")
        if int(self.micro_batch_size) < 0:
            raise ConfigError(f"{path}.micro_batch_size: must be >= 0 (0: the whole batch), "
                              f"got {self.micro_batch_size!r}")
        if int(self.steps) < 0:
            raise ConfigError(f"{path}.steps: must be >= 0 (0: use epochs), got {self.steps!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"{path}.ema_decay: must be in [0, 1), got {self.ema_decay!r}")
        if not 0.0 <= self.warmup_frac < 1.0:
            raise ConfigError(f"{path}.warmup_frac: must be in [0, 1), got {self.warmup_frac!r}")

    def result_dict(self) -> dict[str, Any]:
        """The settings that determine the result (what goes into the run key)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in _NON_RESULT_KEYS}


def n_batches(n_rows: int, cfg: EngineConfig) -> int:
    """Optimiser steps of an epoch over ``n_rows`` rows (``batch_size``, ``drop_last``)."""
    n_full = n_rows // cfg.batch_size
    return n_full if (cfg.drop_last and n_full > 0) else math.ceil(n_rows / cfg.batch_size)


def epochs_for_steps(steps: int, steps_per_epoch: typing.Callable[[int], int]) -> int:
    """The fewest whole epochs whose optimiser steps add up to at least ``steps``.

    Parameters
    ----------
    steps : int
        Wanted training length in optimiser steps (>= 1).
    steps_per_epoch : callable
        ``steps_per_epoch(epoch) -> int`` (> 0), the steps of epoch ``epoch`` (0-based).

    Returns
    -------
    int
        Number of epochs (>= 1).
    """
    if int(steps) < 1:
        raise ConfigError(f"training.steps: must be >= 1 to set the length, got {steps!r}")
    epochs, done = 0, 0
    while done < steps:
        n = int(steps_per_epoch(epochs))
        if n < 1:
            raise ConfigError(f"training.steps: epoch {epochs} has no optimiser step")
        done += n
        epochs += 1
    return epochs
