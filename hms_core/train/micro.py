"""Micro-batches: one optimiser step's forward/backward in slices, and the CUDA OOM fall-back.

:func:`accumulate` runs this process's part of a global batch through ``loss_fn`` in
slices of ``micro`` rows. Each slice's loss is scaled by its share of the rows
(``n_slice / n_local``) before its backward, so the summed gradient is that of the batch
mean and the optimiser still steps once per batch: learning rate, clipping, EMA and the
step count do not change. The sum is not bit-identical to one pass over the whole batch
(float addition order), but a given micro-batch always gives the same result, so a run
that fell back to ``m`` rows equals one configured with ``micro_batch_size = m`` from the
start (see :func:`hms_core.train.engine.train_step`).

BatchNorm: each slice is normalised with its own batch statistics and updates the running
statistics once, so a model with BatchNorm (the EfficientNets) trains slightly differently
with micro-batches; models without it (LayerNorm, GroupNorm) differ only by rounding.

Out of memory: the engine catches ``torch.OutOfMemoryError`` from forward/backward, frees
the step's gradients, puts the random generators back where they were before the step,
halves the micro-batch (:func:`halve`) and runs the step again. At one row, or with
several processes (a rank cannot change its slices alone), it raises
:class:`TrainingOutOfMemory` naming the run, the step and the batch size.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Mapping

import torch
from torch import nn

from hms_core.errors import HMSError
from hms_core.train.device import autocast_context


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
