"""Micro-batches: one optimiser step's forward/backward in slices, and the CUDA OOM fall-back.

:func:`accumulate` runs this process's part of a global batch through ``loss_fn`` in
slices of ``micro`` rows. Each slice's loss is scaled by its share of the rows
(``n_slice / n_local``) before its backward, so the summed gradient is that of the batch
mean and the optimiser still steps once per batch: learning rate, clipping, EMA and the
step count do not change. The sum is not bit-identical to one pass over the whole batch
(float addition order), but a given micro-batch always gives the same result, so a run
that fell back to ``m`` rows equals one configured with ``micro_batch_size = m`` from the
start.

BatchNorm: each slice is normalised with its own batch statistics and updates the running
statistics once, so a model with BatchNorm (the EfficientNets) trains slightly differently
with micro-batches; models without it (LayerNorm, GroupNorm) differ only by rounding.

Out of memory: :func:`forward_backward` (each step's forward/backward in the engine)
catches ``torch.OutOfMemoryError``, frees the step's gradients, puts the random generators
back where they were before the step, halves the micro-batch (:func:`halve`, kept in
``RunState.micro_batch`` and so in ``last.pt``) and runs the step again. At one row, or
with several processes (a rank cannot change its slices alone), it raises
:class:`TrainingOutOfMemory` naming the run, the step and the batch size.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Mapping

import torch
from torch import nn

from hms_core.errors import HMSError
from hms_core.train import checkpoint as ckpt
from hms_core.train.device import autocast_context
from hms_core.train.state import RunState

logger = logging.getLogger(__name__)


class TrainingOutOfMemory(HMSError, torch.OutOfMemoryError):
    """The GPU ran out of memory and no smaller micro-batch is left to try."""


def effective(micro: int, n_rows: int) -> int:
    """Rows per pass for a batch of ``n_rows``: ``micro``, or all of them when 0 or larger."""
    return n_rows if micro <= 0 or micro >= n_rows else micro


def smaller(a: int, b: int) -> int:
    """The smaller of two micro-batch settings, where 0 means the whole batch."""
    sizes = [m for m in (a, b) if m > 0]
    return min(sizes) if sizes else 0


def halve(micro: int, n_rows: int) -> int:
    """The micro-batch to retry with after running out of memory at ``micro`` (>= 1)."""
    return max(effective(micro, n_rows) // 2, 1)


def slice_batch(batch: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of a collated batch (tensors, mappings, lists/tuples of them).

    A list or tuple of plain values (e.g. default-collated strings) counts as one value per row.
    """
    if isinstance(batch, torch.Tensor):
        return batch[start:stop]
    if isinstance(batch, Mapping):
        return {k: slice_batch(v, start, stop) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        if batch and all(isinstance(v, (str, bytes, int, float)) for v in batch):
            return batch[start:stop]
        return type(batch)(slice_batch(v, start, stop) for v in batch)
    raise TypeError(f"cannot cut a batch of {type(batch).__name__} into micro-batches")


def accumulate(train_model: nn.Module, loss_fn: Callable[[nn.Module, Any], tuple[Any, Mapping]],
               batch: Any, *, micro: int, n_local: int, loss_scale: Callable[[torch.Tensor], torch.Tensor],
               scaler: torch.amp.GradScaler, precision: str, device: torch.device
               ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Forward and backward of ``batch`` in slices of ``micro`` rows; gradients summed.

    The caller zeroes the gradients first. Only the last slice synchronises gradients
    under DDP (the others run in ``no_sync``).

    Parameters
    ----------
    train_model : nn.Module
        The module trained (possibly DDP-wrapped or compiled).
    loss_fn : callable
        ``loss_fn(model, batch) -> (loss, logs)``, the slice's mean loss.
    batch : collated batch of ``n_local`` rows, on the device
    micro : int
        Rows per slice (1 <= micro < n_local).
    n_local : int
        Rows of ``batch``.
    loss_scale : callable
        Maps the batch-mean-weighted loss to the loss to backpropagate (the communicator's
        ``scale_loss`` for this batch).
    scaler : GradScaler
    precision : str
        ``training.precision`` (autocast).
    device : torch.device

    Returns
    -------
    loss : torch.Tensor
        The batch's mean loss (0-d, detached).
    logs : dict
        The row-weighted mean of each log over the slices.
    """
    loss_sum: torch.Tensor | float = 0.0
    log_sums: dict[str, Any] = {}
    starts = list(range(0, n_local, micro))
    for i, start in enumerate(starts):
        stop = min(start + micro, n_local)
        share = (stop - start) / n_local
        last = i == len(starts) - 1
        no_sync = getattr(train_model, "no_sync", None)
        sync = contextlib.nullcontext() if last or no_sync is None else no_sync()
        with sync:
            with autocast_context(precision, device):
                loss, logs = loss_fn(train_model, slice_batch(batch, start, stop))
            scaler.scale(loss_scale(loss * share)).backward()
        loss_sum = loss_sum + loss.detach().float() * share
        for k, v in logs.items():
            v = v.detach().float() if isinstance(v, torch.Tensor) else float(v)
            log_sums[k] = log_sums.get(k, 0.0) + v * share
    return loss_sum, log_sums


def forward_backward(setup: Any, state: RunState, train_model: nn.Module,
                     loss_fn: Callable[[nn.Module, Any], tuple[torch.Tensor, Mapping]],
                     batch: Any, n_local: int, n_global: int) -> tuple[torch.Tensor, Mapping]:
    """The step's gradients (zeroed first), in one pass or in ``state.micro_batch`` slices.

    On ``torch.OutOfMemoryError`` the gradients are freed, the random generators put back
    as they were before the step, ``state.micro_batch`` halved (kept for the rest of the
    run and saved in ``last.pt``) and the step run again (module notes).

    Parameters
    ----------
    setup : hms_core.train.engine.TrainingSetup
        The run's settings, optimiser, scaler, communicator and label (not imported here:
        the engine imports this module).
    state : RunState
        Its ``micro_batch`` is read and, after running out of memory, lowered.
    train_model : nn.Module
        The module trained (possibly DDP-wrapped or compiled).
    loss_fn : callable
        ``loss_fn(model, batch) -> (loss, logs)``.
    batch : collated batch of ``n_local`` rows, on the device
    n_local, n_global : int
        Rows of ``batch`` and of the global batch it is part of.

    Returns
    -------
    loss : torch.Tensor
        The batch's mean loss (0-d).
    logs : mapping
        ``loss_fn``'s logs, row-weighted means over the slices.

    Raises
    ------
    TrainingOutOfMemory
        Out of memory with one row per pass, or in a job of several processes.
    """
    cfg, optimizer, comm = setup.cfg, setup.optimizer, setup.comm
    rng = ckpt.capture_rng_state()
    while True:
        rows = effective(state.micro_batch, n_local)
        try:
            if rows == n_local:
                return _whole_batch(setup, train_model, loss_fn, batch, n_local, n_global)
            optimizer.zero_grad(set_to_none=True)
            return accumulate(
                train_model, loss_fn, batch, micro=rows, n_local=n_local,
                loss_scale=lambda x: comm.scale_loss(x, n_local, n_global), scaler=setup.scaler,
                precision=cfg.precision, device=setup.device)
        except torch.OutOfMemoryError as err:
            where = (f"{setup.label}, epoch {state.epoch + 1}/{cfg.epochs}, step "
                     f"{state.global_step + 1}/{setup.total_steps}, batch_size {cfg.batch_size}")
            if comm.world_size > 1:
                raise TrainingOutOfMemory(
                    f"{where}: CUDA out of memory with {rows} rows per pass on rank {comm.rank}; "
                    "in a job of several processes a rank cannot fall back alone: set "
                    f"training.micro_batch_size below {rows} ({err})") from err
            if rows == 1:
                raise TrainingOutOfMemory(
                    f"{where}: CUDA out of memory with 1 row per pass; the model does not fit "
                    "on this GPU even then: use a larger GPU, precision bf16, "
                    f"training.grad_checkpointing or smaller inputs ({err})") from err
        # -- out of memory: free the step's tensors, then retry with half the rows
        optimizer.zero_grad(set_to_none=True)
        if setup.device.type == "cuda":
            torch.cuda.empty_cache()
        ckpt.restore_rng_state(rng)
        state.micro_batch = halve(rows, n_local)
        logger.warning("%s: CUDA out of memory with %d rows per pass; retrying the step with "
                       "micro-batches of %d rows (gradients accumulated, batch_size %d "
                       "unchanged; kept for the rest of the run)", where, rows,
                       state.micro_batch, cfg.batch_size)


def _whole_batch(setup: Any, train_model: nn.Module,
                 loss_fn: Callable[[nn.Module, Any], tuple[torch.Tensor, Mapping]],
                 batch: Any, n_local: int, n_global: int) -> tuple[torch.Tensor, Mapping]:
    """Forward and backward of the whole batch in one pass (a function of its own, so a
    failed attempt's graph goes with its frame before a retry)."""
    with autocast_context(setup.cfg.precision, setup.device):
        loss, logs = loss_fn(train_model, batch)
    setup.optimizer.zero_grad(set_to_none=True)
    setup.scaler.scale(setup.comm.scale_loss(loss, n_local, n_global)).backward()
    return loss, logs
