"""The one training loop: every model, the foundation pretraining and the meta-learner use it.

It is model-agnostic: the caller supplies the model, a map-style dataset, a loss function
and (optionally) an evaluation function. The engine owns the data order, the optimiser,
the learning-rate schedule, mixed precision, EMA, checkpoints and status reporting.

Resume is exact: a run killed at any step (even ``kill -9``) and started again with the
same ``run_key`` continues from its last checkpoint, mid-epoch if need be, and on CPU ends
with bit-identical weights and optimiser state. This holds because

- the data order comes from a dedicated ``torch.Generator`` whose state at the start of
  the epoch is checkpointed together with the position inside the epoch;
- every RNG (Python, NumPy, torch, CUDA) is checkpointed after each step that is saved;
- the learning rate is a pure function of the global step;
- batch-level randomness (augmentation, dropout) must run in the main process on the
  global torch RNG, i.e. inside ``loss_fn``; DataLoader workers only read data (their
  seeds come from a per-epoch generator, so they do not touch the global RNG).

Usage
-----
>>> from hms_core.train.engine import EngineConfig, fit
>>> from hms_core.train.checkpoint import make_run_key
>>> from hms_core.train.data import ArrayDataset
>>> from hms_core.train.losses import kl_loss
>>> data = ArrayDataset(x=x_array, target=target_array)     # any map-style dataset
>>> def loss_fn(model, batch):                               # batch: dict of tensors on device
...     loss = kl_loss(model(batch["x"]), batch["target"])   # augment here (global RNG)
...     return loss, {}
>>> def eval_fn(model):                                      # no_grad, eval mode, EMA if on
...     return {"val_kl": float(kl_loss(model(x_val), t_val))}
>>> result = fit(model, loss_fn=loss_fn, train_data=data, eval_fn=eval_fn,
...              cfg=EngineConfig.from_dict({"epochs": 5, "lr": 1e-3}),
...              checkpoint_dir="models/checkpoints/my_job", run_key=make_run_key(inputs, cfg))
>>> result.model, result.history, result.best_metric

Datasets: ``train_data[i]`` returns a dict of tensors (default-collated), or the dataset
implements ``__getitems__(list[int]) -> dict of batched tensors`` plus a ``collate_fn``
attribute (e.g. identity) for batched reads. ``epoch_indices(epoch)`` (optional) returns
the dataset indices eligible in that epoch (two-stage training); default: all.

Signals: SIGTERM/SIGINT finish the current step, write an emergency checkpoint and raise
:class:`TrainingInterrupted` (a ``SystemExit`` with code 128 + signal number).

Several processes (torchrun, see :mod:`hms_core.train.distributed`): when the process
group is up (or torchrun's ``WORLD_SIZE`` > 1), ``fit`` wraps the model in
DistributedDataParallel. Every rank draws the same epoch order and the same global
batches of ``batch_size``; rank ``r`` trains on its contiguous part of each batch and its
loss is scaled by ``W * n_local / n_global``, so the all-reduced gradient is that of the
single-process batch mean. Per-rank randomness (augmentation, dropout) is seeded with
``seed + rank``, so it differs from a single process; without it results match up to float
reduction order. Only rank 0 writes checkpoints and status; the checkpoint holds every
rank's RNG state, every rank resumes from the same file, and a signal on any rank stops
all ranks after the same step. ``eval_fn`` runs on every rank (it may shard and gather,
see ``run.train_fold``); rank 0's metrics are used everywhere.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, default_collate

from hms_core.errors import ConfigError
from hms_core.status import flush_status, update_status
from hms_core.train import checkpoint as ckpt
from hms_core.train import distributed as dist_utils

logger = logging.getLogger(__name__)

KILL_AT_STEP_ENV = "HMS_TEST_KILL_AT_STEP"  # test-only: SIGKILL self after this global step

_PRECISIONS = ("fp32", "bf16", "fp16")
_SCHEDULERS = ("cosine", "linear", "constant")
_OPTIMIZERS = ("adamw", "adam", "sgd")
_DEVICES = ("auto", "cpu", "cuda")
_SELECT_MODES = ("min", "max")
# Settings that change how fast a run goes but not what it computes; left out of the run key.
_NON_RESULT_KEYS = frozenset({"num_workers", "pin_memory", "checkpoint_every_steps",
                              "status_every_s", "progress", "device", "cuda_expandable_segments"})


@dataclasses.dataclass
class EngineConfig:
    """Settings of the training loop (config section ``training``, engine keys).

    Parameters
    ----------
    epochs : int, default 10
        Number of passes over the (per-epoch) training indices.
    batch_size : int, default 32
    lr : float, default 1e-3
        Peak learning rate.
    weight_decay : float, default 1e-2
    optimizer : {"adamw", "adam", "sgd"}, default "adamw"
    scheduler : {"cosine", "linear", "constant"}, default "cosine"
        Decay after warm-up, over all steps of the run, down to ``min_lr_frac * lr``.
    warmup_frac : float, default 0.05
        Fraction of all steps with linear warm-up from 0.
    min_lr_frac : float, default 0.01
    grad_clip : float, default 1.0
        Max global gradient norm; 0 disables clipping.
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
    drop_last : bool, default True
        Drop the last incomplete batch of an epoch (kept if it would be the only one).
    select_metric : str, default "val_kl"
        Key of ``eval_fn``'s dict used to pick the best epoch.
    select_mode : {"min", "max"}, default "min"
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
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-2
    optimizer: str = "adamw"
    scheduler: str = "cosine"
    warmup_frac: float = 0.05
    min_lr_frac: float = 0.01
    grad_clip: float = 1.0
    precision: str = "fp32"
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
    device: str = "auto"
    drop_last: bool = True
    select_metric: str = "val_kl"
    select_mode: str = "min"
    select_best: bool = True
    status_every_s: float = 5.0
    progress: bool = True
    cuda_expandable_segments: bool = True

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "EngineConfig":
        """Build from a config mapping; unknown keys or bad values raise ConfigError."""
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        for key in d:
            if key not in known:
                raise ConfigError(f"training.{key}: unknown engine setting; allowed: "
                                  f"{', '.join(sorted(known))}")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for key, value, allowed in (("precision", self.precision, _PRECISIONS),
                                    ("scheduler", self.scheduler, _SCHEDULERS),
                                    ("optimizer", self.optimizer, _OPTIMIZERS),
                                    ("device", self.device, _DEVICES),
                                    ("select_mode", self.select_mode, _SELECT_MODES)):
            if value not in allowed:
                raise ConfigError(f"training.{key}: {value!r} is not one of {', '.join(allowed)}")
        for key in ("epochs", "batch_size"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"training.{key}: must be >= 1, got {getattr(self, key)!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"training.ema_decay: must be in [0, 1), got {self.ema_decay!r}")
        if not 0.0 <= self.warmup_frac < 1.0:
            raise ConfigError(f"training.warmup_frac: must be in [0, 1), got {self.warmup_frac!r}")

    def result_dict(self) -> dict[str, Any]:
        """The settings that determine the result (what goes into the run key)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in _NON_RESULT_KEYS}


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes
    ----------
    model : nn.Module
        The trained model (best epoch if ``select_best`` and an ``eval_fn``, else last;
        EMA weights when EMA is on), in eval mode.
    history : list of dict
        One dict per epoch: ``epoch, train_loss, lr, seconds``, mean ``loss_fn`` logs
        (prefixed ``train_``) and every ``eval_fn`` metric.
    best_metric : float | None
    best_epoch : int | None
    global_step : int
    resumed_from_step : int | None
        Global step of the checkpoint this call resumed from (None: fresh start).
    """

    model: nn.Module
    history: list[dict[str, Any]]
    best_metric: float | None
    best_epoch: int | None
    global_step: int
    resumed_from_step: int | None


class TrainingInterrupted(SystemExit):
    """Raised after the emergency checkpoint when SIGTERM/SIGINT arrived."""

    def __init__(self, signum: int, checkpoint_path: Path):
        super().__init__(128 + signum)
        self.signum = signum
        self.checkpoint_path = checkpoint_path


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


def lr_at(step: int, total_steps: int, cfg: EngineConfig) -> float:
    """Learning rate at optimiser step ``step`` (0-based) of ``total_steps``."""
    warmup = int(cfg.warmup_frac * total_steps)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.scheduler == "constant":
        return cfg.lr
    progress = (step - warmup) / max(1, total_steps - warmup)
    progress = min(max(progress, 0.0), 1.0)
    floor = cfg.lr * cfg.min_lr_frac
    if cfg.scheduler == "linear":
        return floor + (cfg.lr - floor) * (1.0 - progress)
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


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


def _build_optimizer(model: nn.Module, cfg: EngineConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)


def _epoch_batches(indices: np.ndarray, order_gen: torch.Generator, cfg: EngineConfig
                   ) -> list[list[int]]:
    """Shuffle ``indices`` with ``order_gen`` and cut them into batches."""
    perm = torch.randperm(len(indices), generator=order_gen).numpy()
    order = indices[perm]
    bs = cfg.batch_size
    n_full = len(order) // bs
    n_batches = n_full if (cfg.drop_last and n_full > 0) else math.ceil(len(order) / bs)
    return [order[i * bs:(i + 1) * bs].tolist() for i in range(n_batches)]


def _n_batches(n: int, cfg: EngineConfig) -> int:
    n_full = n // cfg.batch_size
    return n_full if (cfg.drop_last and n_full > 0) else math.ceil(n / cfg.batch_size)


class _SignalGuard:
    """Record SIGTERM/SIGINT instead of dying, so the loop can checkpoint first."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        logger.warning("received signal %d: checkpointing after the current step", signum)
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def _is_better(value: float, best: float | None, mode: str) -> bool:
    if best is None or not math.isfinite(best):
        return math.isfinite(value) or best is None
    return value < best if mode == "min" else value > best


def fit(model: nn.Module, *, loss_fn: Callable[[nn.Module, Any], tuple[torch.Tensor, Mapping]],
        train_data: Any, cfg: EngineConfig, checkpoint_dir: str | os.PathLike, run_key: str,
        eval_fn: Callable[[nn.Module], Mapping[str, float]] | None = None,
        epoch_indices: Callable[[int], Sequence[int]] | None = None,
        on_epoch_start: Callable[[int, nn.Module], None] | None = None,
        status_path: str | os.PathLike | None = None, status_job: str | None = None,
        status_fields: Mapping[str, Any] | None = None) -> FitResult:
    """Train ``model``, resuming from ``checkpoint_dir`` when it holds this run's checkpoint.

    Parameters
    ----------
    model : nn.Module
        Trained in place (moved to the device).
    loss_fn : callable
        ``loss_fn(model, batch) -> (loss, logs)``: scalar loss tensor and a dict of
        floats/0-d tensors averaged per epoch into the history. Runs under autocast.
    train_data : Dataset
        Map-style dataset (see module docstring).
    cfg : EngineConfig
    checkpoint_dir : path
        Where ``last.pt`` (resume state) and ``best.pt`` (best weights) live.
    run_key : str
        Identifies the run's inputs and parameters (see ``checkpoint.make_run_key``); the
        engine mixes in ``cfg.result_dict()``. A checkpoint with another key is ignored.
    eval_fn : callable, optional
        ``eval_fn(model) -> dict`` after each epoch, model in eval mode; must contain
        ``cfg.select_metric`` for best-epoch selection.
    epoch_indices : callable, optional
        ``epoch_indices(epoch) -> indices`` of ``train_data`` used in that epoch.
    on_epoch_start : callable, optional
        ``on_epoch_start(epoch, model)`` before each epoch (e.g. progressive resizing);
        must be deterministic in ``epoch``.
    status_path, status_job : optional
        Status file and job name for :func:`hms_core.status.update_status`.
    status_fields : mapping, optional
        Extra fixed fields for the status entry (e.g. ``model``, ``fold``).

    Returns
    -------
    FitResult
    """
    cfg.validate()
    dinfo = dist_utils.init_from_env(cfg.device)
    device = select_device(cfg.device, expandable_segments=cfg.cuda_expandable_segments)
    key = ckpt.make_run_key(run_key, cfg.result_dict())
    checkpoint_dir = Path(checkpoint_dir)
    last_path, best_path = checkpoint_dir / ckpt.LAST_NAME, checkpoint_dir / ckpt.BEST_NAME
    n_items = len(train_data)

    def indices_for(epoch: int) -> np.ndarray:
        idx = np.arange(n_items) if epoch_indices is None else np.asarray(epoch_indices(epoch))
        if len(idx) == 0:
            raise ConfigError(f"no training rows in epoch {epoch} (check two_stage.min_votes)")
        return idx.astype(np.int64)

    steps_per_epoch = [_n_batches(len(indices_for(e)), cfg) for e in range(cfg.epochs)]
    total_steps = sum(steps_per_epoch)

    # -- model, optimiser, precision ------------------------------------------------------
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
        torch.backends.cudnn.benchmark = True
    autocast_context(cfg.precision, device)  # fails early on fp16 without CUDA
    if cfg.grad_checkpointing:
        if not hasattr(model, "set_grad_checkpointing"):
            raise ConfigError(f"training.grad_checkpointing: {type(model).__name__} does not "
                              "support gradient checkpointing")
        model.set_grad_checkpointing(True)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = _build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    ema = ModelEma(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    order_gen = torch.Generator()

    # -- resume or fresh start ------------------------------------------------------------
    state = ckpt.load_checkpoint(last_path, run_key=key)
    if dinfo.distributed:  # every rank must resume from the same checkpoint (or none)
        seen = dist_utils.all_gather_object(None if state is None else int(state["global_step"]))
        if len(set(seen)) != 1:
            raise RuntimeError(f"ranks read different checkpoints from {last_path}: global "
                               f"steps {seen}")
    if state is None:
        rank_seed = cfg.seed + dinfo.rank  # per-rank augmentation/dropout; rank 0 = 1 process
        torch.manual_seed(rank_seed)
        np.random.seed(rank_seed % 2**32)
        import random
        random.seed(rank_seed)
        order_gen.manual_seed(cfg.seed)
        epoch, step_in_epoch, global_step = 0, 0, 0
        history: list[dict[str, Any]] = []
        best_metric, best_epoch = None, None
        accum = _new_accum()
        epoch_order_state = order_gen.get_state()
        resumed_from = None
    else:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.module.load_state_dict(state["ema"])
        _restore_rank_rng(state, dinfo, cfg)
        epoch, step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        global_step = int(state["global_step"])
        history = list(state["history"])
        best_metric, best_epoch = state["best_metric"], state["best_epoch"]
        accum = dict(state["accum"])
        epoch_order_state = state["order_gen_state"]
        resumed_from = global_step
        logger.info("resuming %s at epoch %d step %d (global step %d)",
                    last_path, epoch, step_in_epoch, global_step)
        if state.get("finished"):
            return _finish(model, ema, cfg, best_path, key, history, best_metric, best_epoch,
                           global_step, resumed_from, device)

    train_model = model
    if dinfo.distributed:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(
            model, device_ids=[torch.cuda.current_device()] if device.type == "cuda" else None)
        comm_device = device if dinfo.backend == "nccl" else torch.device("cpu")
    if cfg.compile:
        train_model = torch.compile(train_model, backend=cfg.compile_backend, mode=cfg.compile_mode)
    collate = getattr(train_data, "collate_fn", default_collate)
    kill_at = int(os.environ.get(KILL_AT_STEP_ENV, "0") or 0)
    status_fields = dict(status_fields or {})
    t_start, last_status = time.time(), 0.0
    samples_done_here = 0

    def save_last(finished: bool = False, epoch_started: float | None = None) -> None:
        """Write ``last.pt`` (rank 0; every rank must call it at the same step)."""
        if not dinfo.distributed:
            ckpt.save_checkpoint(last_path, make_state(finished, epoch_started))
            return
        rng_per_rank = dist_utils.all_gather_object(ckpt.capture_rng_state())
        if dinfo.is_rank0:
            ckpt.save_checkpoint(last_path, {**make_state(finished, epoch_started),
                                             "rng_per_rank": rng_per_rank,
                                             "world_size": dinfo.world_size})
        dist_utils.barrier()

    def make_state(finished: bool = False, epoch_started: float | None = None) -> dict[str, Any]:
        saved_accum = dict(accum)
        if epoch_started is not None:  # mid-epoch: keep the epoch's time so far
            saved_accum["seconds"] += time.time() - epoch_started
        return {
            "run_key": key, "epoch": epoch, "step_in_epoch": step_in_epoch,
            "global_step": global_step, "finished": finished,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": {"name": cfg.scheduler, "global_step": global_step,
                          "total_steps": total_steps},
            "scaler": scaler.state_dict(), "ema": ema.module.state_dict() if ema else None,
            "rng": ckpt.capture_rng_state(), "order_gen_state": epoch_order_state,
            "accum": saved_accum, "best_metric": best_metric, "best_epoch": best_epoch,
            "history": history, "engine_config": dataclasses.asdict(cfg),
        }

    progress = _progress_bar(cfg, total_steps, global_step, status_fields,
                             enabled=dinfo.is_rank0)
    if not dinfo.is_rank0:
        status_path = None
    with _SignalGuard() as guard:
        while epoch < cfg.epochs:
            if on_epoch_start is not None:
                on_epoch_start(epoch, model)
                if ema is not None:
                    on_epoch_start(epoch, ema.module)
            order_gen.set_state(epoch_order_state)
            batches = _epoch_batches(indices_for(epoch), order_gen, cfg)
            next_epoch_order_state = order_gen.get_state()
            global_sizes = [len(b) for b in batches][step_in_epoch:]
            if dinfo.distributed:
                batches = _shard_batches(batches, dinfo, epoch)
            loader = DataLoader(
                train_data, batch_sampler=batches[step_in_epoch:], collate_fn=collate,
                num_workers=cfg.num_workers, pin_memory=cfg.pin_memory and device.type == "cuda",
                generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch),
                persistent_workers=False)
            model.train()
            t_epoch = time.time()
            for batch, n_global in zip(loader, global_sizes):
                # -- learning rate
                lr = lr_at(global_step, total_steps, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                # -- forward / backward
                batch = move_to_device(batch, device, channels_last=cfg.channels_last)
                with autocast_context(cfg.precision, device):
                    loss, logs = loss_fn(train_model, batch)
                n_batch = _batch_size(batch)
                optimizer.zero_grad(set_to_none=True)
                if dinfo.distributed:  # DDP averages over ranks; weight by this shard's rows
                    scaler.scale(loss * (dinfo.world_size * n_batch / n_global)).backward()
                else:
                    scaler.scale(loss).backward()
                # -- clip, step, EMA
                if cfg.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                if ema is not None:
                    ema.update(model)
                # -- bookkeeping
                if dinfo.distributed:
                    loss_value, logs, signum = _reduce_step(loss, logs, n_batch, guard.signum,
                                                            comm_device)
                    guard.signum = signum
                    n_batch = n_global
                else:
                    loss_value = float(loss.detach())
                _accumulate(accum, loss_value, logs, n_batch)
                global_step += 1
                step_in_epoch += 1
                samples_done_here += n_batch
                progress.update(1)
                if kill_at and global_step == kill_at:
                    in_torchrun = bool(os.environ.get("TORCHELASTIC_RUN_ID"))
                    if dinfo.distributed and dinfo.is_rank0 and in_torchrun:
                        os.kill(os.getppid(), signal.SIGKILL)  # the torchrun agent: whole job
                    os.kill(os.getpid(), signal.SIGKILL)
                # -- checkpoint, stop
                if guard.signum is not None:
                    save_last(epoch_started=t_epoch)
                    if dinfo.is_rank0:
                        logger.warning("emergency checkpoint written to %s at global step %d",
                                       last_path, global_step)
                    progress.close()
                    flush_status()
                    raise TrainingInterrupted(guard.signum, last_path)
                if cfg.checkpoint_every_steps and global_step % cfg.checkpoint_every_steps == 0:
                    save_last(epoch_started=t_epoch)
                # -- status
                now = time.time()
                if status_path is not None and now - last_status >= cfg.status_every_s:
                    last_status = now
                    elapsed = now - t_start
                    rate = samples_done_here / max(elapsed, 1e-9)
                    steps_left = total_steps - global_step
                    update_status(status_path, status_job or "train", **{"stage": "training", **status_fields},
                                  epoch=epoch + 1, epochs=cfg.epochs,
                                  step=global_step, steps=total_steps,
                                  loss=accum["loss_sum"] / max(accum["n"], 1),
                                  samples_per_s=rate, elapsed_s=elapsed,
                                  eta_s=steps_left * cfg.batch_size / max(rate, 1e-9))

            # -- end of epoch: evaluate, select, checkpoint
            eval_model = ema.module if ema is not None else model
            metrics = {}
            if eval_fn is not None:
                eval_model.eval()
                with torch.no_grad(), autocast_context(cfg.precision, device):
                    metrics = {k: float(v) for k, v in eval_fn(eval_model).items()}
                model.train()
                metrics = dist_utils.broadcast_object(metrics)
            record = {"epoch": epoch, "train_loss": accum["loss_sum"] / max(accum["n"], 1),
                      "lr": lr_at(max(global_step - 1, 0), total_steps, cfg),
                      "seconds": accum["seconds"] + time.time() - t_epoch,
                      **{f"train_{k}": v / max(accum["n"], 1) for k, v in accum["logs"].items()},
                      **metrics}
            record = dist_utils.broadcast_object(record)  # the same history on every rank
            history.append(record)
            logger.info("epoch %d/%d: %s", epoch + 1, cfg.epochs,
                        ", ".join(f"{k}={v:.4g}" for k, v in record.items()
                                  if isinstance(v, float)))
            if eval_fn is not None and cfg.select_metric in metrics:
                value = metrics[cfg.select_metric]
                if _is_better(value, best_metric, cfg.select_mode):
                    best_metric, best_epoch = value, epoch
                    if dinfo.is_rank0:
                        ckpt.save_checkpoint(best_path, {"run_key": key, "epoch": epoch,
                                                         "metric": value,
                                                         "state_dict": eval_model.state_dict()})
            elif eval_fn is not None and cfg.select_best:
                raise ConfigError(f"training.select_metric: eval_fn returned no "
                                  f"{cfg.select_metric!r} (got {', '.join(metrics) or 'nothing'})")
            epoch += 1
            step_in_epoch = 0
            epoch_order_state = next_epoch_order_state
            accum = _new_accum()
            finished = epoch >= cfg.epochs
            save_last(finished=finished)
            if dinfo.distributed:  # a signal during evaluation may have reached one rank only
                guard.signum = _agree_signal(guard.signum, comm_device)
            if guard.signum is not None and not finished:
                progress.close()
                raise TrainingInterrupted(guard.signum, last_path)
    progress.close()
    if status_path is not None:
        update_status(status_path, status_job or "train", **{"stage": "training", **status_fields},
                      epoch=cfg.epochs, epochs=cfg.epochs, step=global_step, steps=total_steps,
                      elapsed_s=time.time() - t_start, eta_s=0.0)
        flush_status()
    return _finish(model, ema, cfg, best_path, key, history, best_metric, best_epoch,
                   global_step, resumed_from, device)


def _finish(model, ema, cfg, best_path, key, history, best_metric, best_epoch, global_step,
            resumed_from, device) -> FitResult:
    if ema is not None:
        model.load_state_dict(ema.module.state_dict())
    if cfg.select_best and best_epoch is not None:
        best = ckpt.load_checkpoint(best_path, run_key=key, map_location=device)
        if best is None:
            logger.warning("best checkpoint %s missing; keeping the last epoch's weights",
                           best_path)
        else:
            model.load_state_dict(best["state_dict"])
    model.eval()
    return FitResult(model=model, history=history, best_metric=best_metric,
                     best_epoch=best_epoch, global_step=global_step,
                     resumed_from_step=resumed_from)


def _restore_rank_rng(state: Mapping[str, Any], dinfo: "dist_utils.DistInfo",
                      cfg: EngineConfig) -> None:
    """Restore this rank's RNG state from a checkpoint (exact when the world size matches)."""
    per_rank = state.get("rng_per_rank")
    if not dinfo.distributed:
        ckpt.restore_rng_state(state["rng"])  # of a multi-process checkpoint: rank 0's stream
        if per_rank is not None:
            logger.warning("checkpoint written by %d processes, resumed by one: the data order "
                           "is kept, per-rank randomness is not (resume not bit-exact)",
                           len(per_rank))
        return
    if per_rank is not None and len(per_rank) == dinfo.world_size:
        ckpt.restore_rng_state(per_rank[dinfo.rank])
        return
    ckpt.restore_rng_state(state["rng"])
    if dinfo.rank > 0:
        seed = cfg.seed + dinfo.rank + 7919 * int(state["global_step"])
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
    logger.warning("checkpoint written by %s process(es), resumed by %d: the data order is "
                   "kept but per-rank randomness is reseeded (resume not bit-exact)",
                   len(per_rank) if per_rank is not None else 1, dinfo.world_size)


def _shard_batches(batches: list[list[int]], dinfo: "dist_utils.DistInfo", epoch: int
                   ) -> list[list[int]]:
    """Rank ``dinfo.rank``'s contiguous part of every global batch."""
    out = []
    for b in batches:
        if len(b) < dinfo.world_size:
            raise ConfigError(f"training.batch_size: a batch of epoch {epoch} has {len(b)} rows, "
                              f"fewer than the {dinfo.world_size} processes; use drop_last or "
                              "a larger batch_size")
        start, stop = dist_utils.shard_bounds(len(b), dinfo.rank, dinfo.world_size)
        out.append(b[start:stop])
    return out


def _reduce_step(loss: torch.Tensor, logs: Mapping[str, Any], n_local: int,
                 signum: int | None, comm_device: torch.device
                 ) -> tuple[float, dict[str, float], int | None]:
    """Global batch mean of the loss and logs, and whether any rank got a stop signal."""
    import torch.distributed as dist

    names = sorted(logs)
    values = [float(loss.detach()) * n_local, float(n_local),
              *(float(logs[k]) * n_local for k in names)]
    sums = torch.tensor(values, dtype=torch.float64, device=comm_device)
    dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    sums = sums.cpu().tolist()
    n = sums[1]
    return (sums[0] / n, {k: v / n for k, v in zip(names, sums[2:])},
            _agree_signal(signum, comm_device))


def _agree_signal(signum: int | None, comm_device: torch.device) -> int | None:
    """The stop signal if any rank received one (all ranks get the same answer)."""
    import torch.distributed as dist

    flag = torch.tensor([signum or 0], dtype=torch.int64, device=comm_device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) or None


def _new_accum() -> dict[str, Any]:
    return {"loss_sum": 0.0, "n": 0, "logs": {}, "seconds": 0.0}


def _accumulate(accum: dict[str, Any], loss: float, logs: Mapping[str, Any], n: int) -> None:
    accum["loss_sum"] += loss * n
    accum["n"] += n
    for k, v in logs.items():
        accum["logs"][k] = accum["logs"].get(k, 0.0) + float(v) * n


def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        return _batch_size(next(iter(batch.values())))
    if isinstance(batch, (list, tuple)):
        return _batch_size(batch[0])
    raise TypeError(f"cannot tell the batch size of {type(batch).__name__}")


def _progress_bar(cfg: EngineConfig, total: int, done: int, fields: Mapping[str, Any], *,
                  enabled: bool = True):
    from tqdm.auto import tqdm

    desc = " ".join(f"{k}={v}" for k, v in fields.items()) or "train"
    return tqdm(total=total, initial=done, desc=desc, disable=not (cfg.progress and enabled),
                mininterval=2.0, leave=False)
