"""The one training loop: every model, the foundation pretraining and the meta-learner use it.

It is model-agnostic: the caller supplies the model, a map-style dataset, a loss function
and (optionally) an evaluation function. The engine owns the data order, the optimiser,
the learning-rate schedule, mixed precision, EMA, checkpoints and status reporting.

:func:`fit` reads top to bottom: :func:`start_or_resume` gives the
:class:`~hms_core.train.state.RunState` (fresh, or from ``last.pt``); per epoch the data
order is drawn and per batch :func:`train_step` makes one optimiser step, after which the
``on_step_end`` hooks run, a stop signal or ``checkpoint_every_steps`` writes ``last.pt``
and the status file is updated; :func:`end_epoch` evaluates, records the epoch, keeps the
best weights in ``best.pt`` and writes ``last.pt``.

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
>>> from hms_core.config import from_mapping
>>> from hms_core.train.engine import fit
>>> from hms_core.train.engine_config import EngineConfig
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
...              cfg=from_mapping(EngineConfig, {"epochs": 5, "lr": 1e-3}, "training"),
...              checkpoint_dir="models/checkpoints/my_job", run_key=make_run_key(inputs, cfg))
>>> result.model, result.history, result.best_metric

Datasets: ``train_data[i]`` returns a dict of tensors (default-collated), or the dataset
implements ``__getitems__(list[int]) -> dict of batched tensors`` plus a ``collate_fn``
attribute (e.g. identity) for batched reads. ``epoch_indices(epoch)`` (optional) returns
the dataset indices eligible in that epoch (two-stage training); default: all.

Signals: SIGTERM/SIGINT finish the current step, write an emergency checkpoint and raise
:class:`TrainingInterrupted` (a ``SystemExit`` with code 128 + signal number).

Damage and contention: each ``last.pt`` save keeps the one it replaces as ``last.prev.pt``;
an unreadable ``last.pt`` is moved aside and the previous one resumed, and with none usable
``fit`` fails rather than start over (:func:`hms_core.train.checkpoint.resume_checkpoint`).
An unreadable or missing ``best.pt`` is an error. Rank 0 holds ``job.lock`` in
``checkpoint_dir`` for the whole call, so a second copy of the job fails at once.

Non-finite losses (bf16/fp16 overflow, divergence, bad inputs): the step is skipped with a
warning (no weight, optimiser or EMA update; it still counts, so data order and learning
rate stay those of a clean run) and ``cfg.max_nonfinite_steps`` in a row raise
:class:`NonFiniteLossError` naming the run, epoch and step.

Micro-batches and GPU memory: with ``cfg.micro_batch_size`` each batch runs through
``loss_fn`` in slices whose gradients are accumulated before the one optimiser step
(:mod:`hms_core.train.micro`). On CUDA out-of-memory a single-process run frees the step,
halves the micro-batch, logs it and runs the step again with the same random draws, so the
recipe (batch, learning rate, EMA, steps) is unchanged and the run equals one configured
with that micro-batch from the start (BatchNorm sees smaller batches: see
:class:`~hms_core.train.engine_config.EngineConfig`). ``last.pt`` remembers the micro-batch,
so a resume does not run out of memory again; at one row
:class:`~hms_core.train.micro.TrainingOutOfMemory` names the run, step and batch size.

Several processes (torchrun, see :mod:`hms_core.train.distributed`): the loop talks to
the other ranks only through a communicator, whose single-process version does nothing.
When the process group is up (or torchrun's ``WORLD_SIZE`` > 1), it is the DDP one and
``fit`` wraps the model in DistributedDataParallel. Every rank draws the same epoch order and the same global
batches of ``batch_size``; rank ``r`` trains on its contiguous part of each batch and its
loss is scaled by ``W * n_local / n_global``, so the all-reduced gradient is that of the
single-process batch mean. Per-rank randomness (augmentation, dropout) is seeded with
``seed + rank``, so it differs from a single process; without it results match up to float
reduction order. Only rank 0 writes checkpoints and status; the checkpoint holds every
rank's RNG state, every rank resumes from the same file, and a signal on any rank stops
all ranks after the same step. ``eval_fn`` runs on every rank (it may shard and gather,
see :func:`hms_core.train.fold.train_fold`); rank 0's metrics are used everywhere.
"""
from __future__ import annotations

import contextlib
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

from hms_core.errors import ConfigError, HMSError
from hms_core.status import flush_status, update_status
from hms_core.tracking import Tracker
from hms_core.train import checkpoint as ckpt
from hms_core.train import distributed as dist_utils
from hms_core.train import micro
from hms_core.train.device import autocast_context, move_to_device, select_device
from hms_core.train.engine_config import EngineConfig, epochs_for_steps, n_batches
from hms_core.train.optim import LrSchedule, ModelEma, build_optimizer
from hms_core.train.state import RunState, restore_rank_rng

logger = logging.getLogger(__name__)

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


class NonFiniteLossError(HMSError, FloatingPointError):
    """Too many consecutive optimiser steps had a NaN or infinite loss."""


class TrainingInterrupted(SystemExit):
    """Raised after the emergency checkpoint when SIGTERM/SIGINT arrived."""

    def __init__(self, signum: int, checkpoint_path: Path):
        super().__init__(128 + signum)
        self.signum = signum
        self.checkpoint_path = checkpoint_path


def _epoch_batches(indices: np.ndarray, order_state: torch.Tensor, cfg: EngineConfig
                   ) -> tuple[list[list[int]], torch.Tensor]:
    """Shuffle ``indices`` with the data-order generator at ``order_state``; cut into batches.

    Returns the global batches of the epoch and the generator's state after the shuffle
    (the next epoch's ``order_state``).
    """
    order_gen = torch.Generator()
    order_gen.set_state(order_state)
    perm = torch.randperm(len(indices), generator=order_gen).numpy()
    order = indices[perm]
    bs = cfg.batch_size
    n_full = len(order) // bs
    n_batches = n_full if (cfg.drop_last and n_full > 0) else math.ceil(len(order) / bs)
    return [order[i * bs:(i + 1) * bs].tolist() for i in range(n_batches)], order_gen.get_state()


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


@dataclasses.dataclass
class TrainingSetup:
    """What one :func:`fit` call trains with; fixed for the whole call.

    Attributes
    ----------
    cfg : EngineConfig
    device : torch.device
    comm : Communicator
        The other ranks (:func:`hms_core.train.distributed.communicator`).
    model : nn.Module
        The bare model on ``device`` (never DDP-wrapped or compiled).
    optimizer, scaler :
        Optimiser and (fp16) grad scaler of ``model``.
    ema : ModelEma or None
    run_key : str
        The caller's key with the result-relevant engine settings mixed in.
    last_path, best_path : Path
        ``last.pt`` (resume state) and ``best.pt`` (best epoch's weights).
    epoch_indices : callable or None
        The caller's ``epoch_indices`` (None: every row in every epoch).
    n_items : int
        Rows of the training dataset.
    schedule : LrSchedule
        The learning rate as a function of the global step (restarts included).
    total_steps : int
        Optimiser steps of the whole run.
    label : str
        The run in words for messages: status job and fields, e.g.
        ``train_resnet1d_gru_fold0 (model=resnet1d_gru, fold=0)``.
    """

    cfg: EngineConfig
    device: torch.device
    comm: dist_utils.Communicator
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: ModelEma | None
    run_key: str
    last_path: Path
    best_path: Path
    epoch_indices: Callable[[int], Sequence[int]] | None
    n_items: int
    schedule: LrSchedule
    total_steps: int
    label: str = "train"

    def indices(self, epoch: int) -> np.ndarray:
        """Dataset indices trained on in ``epoch``."""
        return _epoch_rows(epoch, self.n_items, self.epoch_indices)

    @property
    def ema_model(self) -> nn.Module | None:
        return self.ema.module if self.ema is not None else None


def _epoch_rows(epoch: int, n_items: int,
                epoch_indices: Callable[[int], Sequence[int]] | None) -> np.ndarray:
    idx = np.arange(n_items) if epoch_indices is None else np.asarray(epoch_indices(epoch))
    if len(idx) == 0:
        raise ConfigError(f"no training rows in epoch {epoch} (check two_stage.min_votes)")
    return idx.astype(np.int64)


def resolve_length(cfg: EngineConfig, n_items: int,
                   epoch_indices: Callable[[int], Sequence[int]] | None = None) -> EngineConfig:
    """``cfg`` with ``epochs`` set from ``steps`` when ``steps`` > 0 (else ``cfg`` itself).

    The epochs are the fewest whose optimiser steps over the per-epoch training indices
    (``epoch_indices``, default all ``n_items`` rows) reach ``steps``.
    """
    if cfg.steps <= 0:
        return cfg
    epochs = epochs_for_steps(
        cfg.steps, lambda e: n_batches(len(_epoch_rows(e, n_items, epoch_indices)), cfg))
    logger.info("training.steps=%d: %d epochs of %d rows", cfg.steps, epochs, n_items)
    return dataclasses.replace(cfg, epochs=epochs)


def _prepare(model: nn.Module, *, cfg: EngineConfig, device: torch.device,
             comm: dist_utils.Communicator, n_items: int, checkpoint_dir: str | os.PathLike,
             run_key: str, epoch_indices: Callable[[int], Sequence[int]] | None,
             lr_restarts: Mapping[int, float] | None = None, label: str = "train"
             ) -> TrainingSetup:
    """Count the steps, put the model on the device, build optimiser, scaler and EMA."""
    checkpoint_dir = Path(checkpoint_dir)
    paths = dict(last_path=checkpoint_dir / ckpt.LAST_NAME,
                 best_path=checkpoint_dir / ckpt.BEST_NAME)
    restarts = sorted((int(e), float(s)) for e, s in (lr_restarts or {}).items())
    key = ckpt.make_run_key(run_key, cfg.result_dict(), *([restarts] if restarts else []))
    schedule = LrSchedule.from_epochs(
        cfg, [n_batches(len(_epoch_rows(e, n_items, epoch_indices)), cfg)
              for e in range(cfg.epochs)], dict(restarts))
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
    optimizer = build_optimizer(model, cfg)
    return TrainingSetup(
        cfg=cfg, device=device, comm=comm, model=model, optimizer=optimizer,
        scaler=torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16"),
        ema=ModelEma(model, cfg.ema_decay) if cfg.ema_decay > 0 else None,
        run_key=key, epoch_indices=epoch_indices, n_items=n_items, schedule=schedule,
        total_steps=schedule.total_steps, label=label, **paths)


def start_or_resume(setup: TrainingSetup) -> RunState:
    """The run's state: from this run's ``last.pt`` if there is one, else a seeded fresh start.

    A damaged ``last.pt`` is moved aside and the previous checkpoint used; with none usable
    this raises (:func:`hms_core.train.checkpoint.resume_checkpoint`).

    Resuming loads the weights, optimiser, scaler and EMA from the checkpoint and restores
    this rank's random generators; a fresh start seeds them with ``seed + rank``. The
    micro-batch is ``cfg.micro_batch_size`` or, when smaller, the one the checkpoint
    remembers (the size a run fell back to after running out of GPU memory).
    """
    cfg, comm = setup.cfg, setup.comm
    checkpoint = None
    if comm.is_rank0:  # moves a damaged last.pt aside, so the other ranks find the same file
        checkpoint = ckpt.resume_checkpoint(setup.last_path, run_key=setup.run_key)
    comm.barrier()
    if not comm.is_rank0:
        checkpoint = ckpt.resume_checkpoint(setup.last_path, run_key=setup.run_key)
    seen = comm.gather(None if checkpoint is None else int(checkpoint["global_step"]))
    if len(set(seen)) != 1:  # every rank must resume from the same checkpoint (or none)
        raise RuntimeError(f"ranks read different checkpoints from {setup.last_path}: global "
                           f"steps {seen}")
    if checkpoint is None:
        ckpt.seed_rngs(cfg.seed + comm.rank)  # per-rank augmentation/dropout; rank 0 = 1 process
        state = RunState.fresh(cfg.seed)
        state.micro_batch = cfg.micro_batch_size
        return state
    state = RunState.from_checkpoint(checkpoint, model=setup.model, optimizer=setup.optimizer,
                                     scaler=setup.scaler, ema_model=setup.ema_model)
    remembered = state.micro_batch
    state.micro_batch = micro.smaller(cfg.micro_batch_size, remembered)
    if remembered and state.micro_batch == remembered != cfg.micro_batch_size:
        logger.warning("%s: resuming with micro-batches of %d rows, the size that fitted in GPU "
                       "memory before (training.micro_batch_size %d)", setup.label,
                       remembered, cfg.micro_batch_size)
    restore_rank_rng(checkpoint, rank=comm.rank, world_size=comm.world_size, seed=cfg.seed)
    logger.info("resuming %s at epoch %d step %d (global step %d)",
                setup.last_path, state.epoch, state.step_in_epoch, state.global_step)
    return state


def train_step(setup: TrainingSetup, state: RunState, train_model: nn.Module,
               loss_fn: Callable[[nn.Module, Any], tuple[torch.Tensor, Mapping]],
               batch: Any, n_global: int) -> int:
    """One optimiser step on this rank's part of a global batch of ``n_global`` rows.

    Returns the rows of the global batch, as counted into ``state.totals``.
    """
    cfg, optimizer, scaler = setup.cfg, setup.optimizer, setup.scaler
    # -- learning rate: a pure function of the global step
    lr = setup.schedule(state.global_step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    # -- forward / backward (in micro-batches, halved on CUDA out-of-memory)
    batch = move_to_device(batch, setup.device, channels_last=cfg.channels_last)
    n_local = _batch_size(batch)
    loss, logs = micro.forward_backward(setup, state, train_model, loss_fn, batch, n_local, n_global)
    # -- the global batch's mean loss and logs (the same on every rank)
    loss_value, logs, rows = setup.comm.batch_mean(loss, logs, n_local, n_global)
    state.global_step += 1
    state.step_in_epoch += 1
    if not math.isfinite(loss_value):
        _skip_nonfinite_step(setup, state, loss_value)
        return rows
    state.nonfinite_streak = 0
    # -- clip, step, EMA
    if cfg.grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(setup.model.parameters(), cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    if setup.ema is not None:
        setup.ema.update(setup.model)
    state.totals.add(loss_value, logs, rows)
    return rows


def _skip_nonfinite_step(setup: TrainingSetup, state: RunState, loss_value: float) -> None:
    """Leave weights, optimiser, scaler and EMA as they were; fail after too many in a row.

    The step still counts (data order and learning rate move on as in a clean run) but its
    loss stays out of the epoch's mean.

    Raises
    ------
    NonFiniteLossError
        ``training.max_nonfinite_steps`` consecutive steps had a non-finite loss.
    """
    state.nonfinite_streak += 1
    limit = setup.cfg.max_nonfinite_steps
    where = (f"{setup.label}, epoch {state.epoch + 1}/{setup.cfg.epochs}, "
             f"step {state.global_step}/{setup.total_steps}")
    if state.nonfinite_streak >= max(limit, 1):
        raise NonFiniteLossError(
            f"{where}: {state.nonfinite_streak} consecutive optimiser steps had a non-finite "
            f"loss ({loss_value}); training has diverged or the inputs hold NaN/inf. Lower "
            "training.lr, use precision fp32 or a smaller grad_clip, or check the data "
            "(training.max_nonfinite_steps sets how many in a row are skipped; no skipped step "
            "changed the weights or the checkpoints).")
    if setup.comm.is_rank0:
        logger.warning("%s: non-finite loss (%s); step skipped (no weight update), %d in a row "
                       "of at most %d", where, loss_value, state.nonfinite_streak, limit)


def end_epoch(setup: TrainingSetup, state: RunState,
              eval_fn: Callable[[nn.Module], Mapping[str, float]] | None,
              next_order_state: torch.Tensor, epoch_started: float) -> None:
    """Evaluate, record the epoch, keep the best weights, move on and write ``last.pt``.

    ``epoch_started`` is the ``time.time()`` at which this process started the epoch (s).
    """
    cfg = setup.cfg
    eval_model = setup.ema_model if setup.ema is not None else setup.model
    metrics = _evaluate(setup, eval_model, eval_fn)
    record = {"epoch": state.epoch, "step": state.global_step,
              "train_loss": state.totals.mean_loss(),
              "lr": setup.schedule(max(state.global_step - 1, 0)),
              "seconds": state.totals.seconds + time.time() - epoch_started,
              **{f"train_{k}": v for k, v in state.totals.mean_logs().items()},
              **metrics}
    record = setup.comm.broadcast(record)  # the same history on every rank
    state.history.append(record)
    logger.info("epoch %d/%d: %s", state.epoch + 1, cfg.epochs,
                ", ".join(f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float)))
    if eval_fn is not None:
        _keep_if_best(setup, state, metrics, eval_model)
    state.next_epoch(next_order_state, cfg.epochs)
    save_last(setup, state)


def _evaluate(setup: TrainingSetup, eval_model: nn.Module,
              eval_fn: Callable[[nn.Module], Mapping[str, float]] | None) -> dict[str, float]:
    """``eval_fn``'s metrics as floats (rank 0's on every rank); {} without an ``eval_fn``."""
    if eval_fn is None:
        return {}
    eval_model.eval()
    with torch.no_grad(), autocast_context(setup.cfg.precision, setup.device):
        metrics = {k: float(v) for k, v in eval_fn(eval_model).items()}
    setup.model.train()
    return setup.comm.broadcast(metrics)


def _keep_if_best(setup: TrainingSetup, state: RunState, metrics: Mapping[str, float],
                  eval_model: nn.Module) -> None:
    """Make the just-evaluated epoch the best one (and write ``best.pt``) if it beats it."""
    cfg = setup.cfg
    if cfg.select_metric not in metrics:
        if cfg.select_best:
            raise ConfigError(f"training.select_metric: eval_fn returned no "
                              f"{cfg.select_metric!r} (got {', '.join(metrics) or 'nothing'})")
        return
    value = metrics[cfg.select_metric]
    if not _is_better(value, state.best_metric, cfg.select_mode):
        return
    state.best_metric, state.best_epoch = value, state.epoch
    if setup.comm.is_rank0:
        ckpt.save_checkpoint(setup.best_path, {"run_key": setup.run_key, "epoch": state.epoch,
                                               "metric": value,
                                               "state_dict": eval_model.state_dict()},
                             keep_previous=True)  # see checkpoint.load_best


def save_last(setup: TrainingSetup, state: RunState, *, epoch_started: float | None = None
              ) -> None:
    """Write ``last.pt`` on rank 0 (keeping the one it replaces as ``last.prev.pt``); every
    rank must call this at the same step.

    ``epoch_started`` (``time.time()``, s) is given mid-epoch, to save the epoch's time so far.
    """
    rng_per_rank = setup.comm.gather(ckpt.capture_rng_state())
    if setup.comm.is_rank0:
        seconds = 0.0 if epoch_started is None else time.time() - epoch_started
        ckpt.save_checkpoint(setup.last_path, state.to_checkpoint(
            run_key=setup.run_key, model=setup.model, optimizer=setup.optimizer,
            scaler=setup.scaler, ema_model=setup.ema_model, cfg=setup.cfg,
            total_steps=setup.total_steps, lr_segments=setup.schedule.describe(),
            rng_per_rank=rng_per_rank, seconds_in_epoch=seconds), keep_previous=True)
    setup.comm.barrier()


def fit(model: nn.Module, *, loss_fn: Callable[[nn.Module, Any], tuple[torch.Tensor, Mapping]],
        train_data: Any, cfg: EngineConfig, checkpoint_dir: str | os.PathLike, run_key: str,
        eval_fn: Callable[[nn.Module], Mapping[str, float]] | None = None,
        epoch_indices: Callable[[int], Sequence[int]] | None = None,
        on_epoch_start: Callable[[int, nn.Module], None] | None = None,
        on_step_end: Sequence[Callable[[RunState], None]] = (),
        lr_restarts: Mapping[int, float] | None = None,
        status_path: str | os.PathLike | None = None, status_job: str | None = None,
        status_fields: Mapping[str, Any] | None = None,
        tracker: Tracker | None = None) -> FitResult:
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
    on_step_end : sequence of callable, default ()
        ``hook(state)`` after every optimiser step, before that step's checkpoint, with
        the :class:`~hms_core.train.state.RunState` (read it, do not change it). The
        resume tests use one to kill the process at a chosen step.
    lr_restarts : mapping of int to float, optional
        ``{epoch: peak_scale}``: the learning-rate schedule restarts at the start of each
        named epoch (0-based, > 0) with a new warm-up to ``peak_scale * cfg.lr`` and a new
        decay that ends where the next segment (or the run) does
        (:class:`~hms_core.train.optim.LrSchedule`). Two-stage training restarts it for
        its second stage. Part of the run key.
    status_path, status_job : optional
        Status file and job name for :func:`hms_core.status.update_status`.
    status_fields : mapping, optional
        Extra fixed fields for the status entry (e.g. ``model``, ``fold``).
    tracker : Tracker, optional
        Experiment tracking (:mod:`hms_core.tracking`): the epoch's running train loss and
        the speed whenever the status is due, and every epoch's history record, by global
        step. Give ranks other than 0 none (or a :class:`~hms_core.tracking.Tracker`).

    Returns
    -------
    FitResult
    """
    cfg.validate()
    cfg = resolve_length(cfg, len(train_data), epoch_indices)
    dinfo = dist_utils.init_from_env(cfg.device)
    device = select_device(cfg.device, expandable_segments=cfg.cuda_expandable_segments)
    comm = dist_utils.communicator(dinfo, device)
    # One copy of the job per checkpoint folder (rank 0 holds it for all ranks).
    lock = ckpt.exclusive_lock(checkpoint_dir) if comm.is_rank0 else contextlib.nullcontext()
    with lock:
        setup = _prepare(model, cfg=cfg, device=device, comm=comm, n_items=len(train_data),
                         checkpoint_dir=checkpoint_dir, run_key=run_key, epoch_indices=epoch_indices,
                         lr_restarts=lr_restarts, label=_run_label(status_job, status_fields))
        state = start_or_resume(setup)
        if state.finished:
            return _finish(setup, state)
        train_model = comm.wrap(model, device)
        if cfg.compile:
            train_model = torch.compile(train_model, backend=cfg.compile_backend, mode=cfg.compile_mode)
        collate = getattr(train_data, "collate_fn", default_collate)
        tracker = tracker if tracker is not None and comm.is_rank0 else Tracker()
        status = _StatusWriter(status_path if comm.is_rank0 else None, status_job or "train",
                               dict(status_fields or {}), cfg, setup.total_steps, tracker)
        progress = _progress_bar(cfg, setup.total_steps, state.global_step, status.fields,
                                 enabled=comm.is_rank0)
        with _SignalGuard() as guard:
            while state.epoch < cfg.epochs:
                # -- epoch start: hooks, the epoch's data order, this rank's batches
                if on_epoch_start is not None:
                    on_epoch_start(state.epoch, model)
                    if setup.ema is not None:
                        on_epoch_start(state.epoch, setup.ema.module)
                batches, next_order_state = _epoch_batches(setup.indices(state.epoch),
                                                           state.order_state, cfg)
                global_sizes = [len(b) for b in batches][state.step_in_epoch:]
                loader = DataLoader(
                    train_data, batch_sampler=comm.shard(batches, state.epoch)[state.step_in_epoch:],
                    collate_fn=collate, num_workers=cfg.num_workers,
                    pin_memory=cfg.pin_memory and device.type == "cuda",
                    generator=torch.Generator().manual_seed(cfg.seed * 1000 + state.epoch),
                    persistent_workers=False)
                model.train()
                epoch_started = time.time()
                for batch, n_global in zip(loader, global_sizes):
                    # -- one optimiser step
                    rows = train_step(setup, state, train_model, loss_fn, batch, n_global)
                    guard.signum = comm.agree_signal(guard.signum)  # one rank's signal stops all
                    progress.update(1)
                    for hook in on_step_end:
                        hook(state)
                    # -- checkpoint, stop
                    if guard.signum is not None:
                        save_last(setup, state, epoch_started=epoch_started)
                        if comm.is_rank0:
                            logger.warning("emergency checkpoint written to %s at global step %d",
                                           setup.last_path, state.global_step)
                        progress.close()
                        flush_status()
                        raise TrainingInterrupted(guard.signum, setup.last_path)
                    if cfg.checkpoint_every_steps and state.global_step % cfg.checkpoint_every_steps == 0:
                        save_last(setup, state, epoch_started=epoch_started)
                    # -- status
                    status.after_step(state, rows)
                # -- end of epoch: evaluate, keep the best, checkpoint, stop
                end_epoch(setup, state, eval_fn, next_order_state, epoch_started)
                tracker.log_metrics({k: v for k, v in state.history[-1].items() if k != "step"},
                                    step=state.global_step)
                guard.signum = comm.agree_signal(guard.signum)  # it may have reached one rank only
                if guard.signum is not None and not state.finished:
                    progress.close()
                    raise TrainingInterrupted(guard.signum, setup.last_path)
        progress.close()
        status.finish(state)
        return _finish(setup, state)


def _run_label(job: str | None, fields: Mapping[str, Any] | None) -> str:
    words = ", ".join(f"{k}={v}" for k, v in (fields or {}).items())
    return f"{job or 'train'}" + (f" ({words})" if words else "")


def _finish(setup: TrainingSetup, state: RunState) -> FitResult:
    """The result: EMA weights if on, then the best epoch's if selected; model in eval mode.

    A missing or unreadable ``best.pt`` raises: the last epoch's weights would not be the
    ones the metrics (``best_epoch``) describe.
    """
    model, cfg = setup.model, setup.cfg
    if setup.ema is not None:
        model.load_state_dict(setup.ema.module.state_dict())
    if cfg.select_best and state.best_epoch is not None:
        best = ckpt.load_best(setup.best_path, run_key=setup.run_key, epoch=state.best_epoch,
                              map_location=setup.device)
        model.load_state_dict(best["state_dict"])
    model.eval()
    return FitResult(model=model, history=state.history, best_metric=state.best_metric,
                     best_epoch=state.best_epoch, global_step=state.global_step,
                     resumed_from_step=state.resumed_from)


class _StatusWriter:
    """Training progress in the status file, at most every ``status_every_s`` seconds.

    Parameters
    ----------
    path : path or None
        Status file; None writes nothing (ranks other than 0).
    job : str
        Job name of the status entry.
    fields : dict
        Extra fixed fields of the entry (e.g. ``model``, ``fold``).
    cfg : EngineConfig
    total_steps : int
    tracker : Tracker
        Gets the epoch's running train loss and the speed at the same moments.
    """

    def __init__(self, path: str | os.PathLike | None, job: str, fields: dict[str, Any],
                 cfg: EngineConfig, total_steps: int, tracker: Tracker):
        self.path, self.job, self.fields, self.tracker = path, job, fields, tracker
        self.cfg, self.total_steps = cfg, total_steps
        self.started = time.time()
        self.last_written = 0.0
        self.rows_done = 0  # rows trained on by this call (not before a resume)

    def after_step(self, state: RunState, rows: int) -> None:
        """Count the step's ``rows``; write epoch, step, loss, speed and ETA when due."""
        self.rows_done += rows
        now = time.time()
        if ((self.path is None and not self.tracker.active)
                or now - self.last_written < self.cfg.status_every_s):
            return
        self.last_written = now
        elapsed = now - self.started
        rate = self.rows_done / max(elapsed, 1e-9)
        steps_left = self.total_steps - state.global_step
        self.tracker.log_metrics({"running_train_loss": state.totals.mean_loss(),
                                  "samples_per_s": rate}, step=state.global_step)
        update_status(self.path, self.job, **{"stage": "training", **self.fields},
                      epoch=state.epoch + 1, epochs=self.cfg.epochs,
                      step=state.global_step, steps=self.total_steps,
                      loss=state.totals.mean_loss(), samples_per_s=rate, elapsed_s=elapsed,
                      eta_s=steps_left * self.cfg.batch_size / max(rate, 1e-9))

    def finish(self, state: RunState) -> None:
        """Write the final entry (every step done, no time left) and flush the file."""
        if self.path is None:
            return
        update_status(self.path, self.job, **{"stage": "training", **self.fields},
                      epoch=self.cfg.epochs, epochs=self.cfg.epochs, step=state.global_step,
                      steps=self.total_steps, elapsed_s=time.time() - self.started, eta_s=0.0)
        flush_status()


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
