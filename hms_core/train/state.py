"""The state of a training run that exact resume depends on, and its checkpoint form.

:class:`RunState` is everything about a run that is not a weight: where the loop stands
(epoch, step inside it, global step), the data-order generator's state at the start of
the epoch, the epoch's running sums, the best epoch so far and the per-epoch history.
:meth:`RunState.to_checkpoint` adds the weights, optimiser, grad scaler, EMA weights and
every rank's RNG state to make the ``last.pt`` mapping that
:func:`hms_core.train.checkpoint.save_checkpoint` writes; :meth:`RunState.from_checkpoint`
loads the weights back into the live objects and returns the state, and
:func:`restore_rank_rng` puts this rank's random generators where they were.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from hms_core.train import checkpoint as ckpt
from hms_core.train.engine_config import EngineConfig


logger = logging.getLogger(__name__)


@dataclasses.dataclass
class EpochTotals:
    """Running sums over the optimiser steps of the current epoch.

    Attributes
    ----------
    loss_sum : float
        Sum over steps of (global batch mean loss x global batch rows).
    n : int
        Rows trained on so far in this epoch.
    logs : dict of str to float
        Sum over steps of (each ``loss_fn`` log's global batch mean x rows).
    seconds : float
        Training time of this epoch spent before the last resume, in s.
    """

    loss_sum: float = 0.0
    n: int = 0
    logs: dict[str, float] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    def add(self, loss: float, logs: Mapping[str, Any], n: int) -> None:
        """Add one step: its mean ``loss``, mean ``logs`` and its ``n`` rows."""
        self.loss_sum += loss * n
        self.n += n
        for k, v in logs.items():
            self.logs[k] = self.logs.get(k, 0.0) + float(v) * n

    def mean_loss(self) -> float:
        """Row-weighted mean loss of the epoch so far."""
        return self.loss_sum / max(self.n, 1)

    def mean_logs(self) -> dict[str, float]:
        """Row-weighted mean of each log of the epoch so far."""
        return {k: v / max(self.n, 1) for k, v in self.logs.items()}


@dataclasses.dataclass
class RunState:
    """Where a training run stands; with the weights, all that ``last.pt`` holds.

    Attributes
    ----------
    order_state : torch.Tensor
        State of the data-order ``torch.Generator`` at the start of ``epoch``.
    epoch : int
        The epoch being trained (0-based); ``epochs`` once finished.
    step_in_epoch : int
        Optimiser steps done in ``epoch``.
    global_step : int
        Optimiser steps done in the whole run.
    totals : EpochTotals
        Running sums of ``epoch``.
    best_metric : float or None
        Best value of ``select_metric`` so far.
    best_epoch : int or None
        Epoch of ``best_metric``.
    history : list of dict
        One record per finished epoch (see :class:`hms_core.train.engine.FitResult`).
    finished : bool
        Every epoch is done.
    resumed_from : int or None
        Global step of the checkpoint this process resumed from (None: fresh start);
        not saved.
    nonfinite_streak : int
        Optimiser steps in a row skipped for a non-finite loss; not saved (a resume
        restarts the count).
    micro_batch : int
        Rows per forward/backward pass (0: the whole batch): ``training.micro_batch_size``,
        or less after running out of GPU memory (:mod:`hms_core.train.micro`); saved, so a
        resume starts with the micro-batch that fitted.
    """

    order_state: torch.Tensor
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    totals: EpochTotals = dataclasses.field(default_factory=EpochTotals)
    best_metric: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    finished: bool = False
    resumed_from: int | None = None
    nonfinite_streak: int = 0
    micro_batch: int = 0

    @classmethod
    def fresh(cls, seed: int) -> "RunState":
        """The state before the first step; the data order is seeded with ``seed``."""
        return cls(order_state=torch.Generator().manual_seed(seed).get_state())

    def next_epoch(self, order_state: torch.Tensor, epochs: int) -> None:
        """Move to the start of the next epoch, whose data order starts at ``order_state``."""
        self.epoch += 1
        self.step_in_epoch = 0
        self.order_state = order_state
        self.totals = EpochTotals()
        self.finished = self.epoch >= epochs

    def to_checkpoint(self, *, run_key: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                      scaler: torch.amp.GradScaler, ema_model: nn.Module | None,
                      cfg: EngineConfig, total_steps: int,
                      rng_per_rank: Sequence[Mapping[str, Any]],
                      lr_segments: Sequence[Mapping[str, float]] = (),
                      seconds_in_epoch: float = 0.0) -> dict[str, Any]:
        """The ``last.pt`` mapping for :func:`hms_core.train.checkpoint.save_checkpoint`.

        Parameters
        ----------
        run_key : str
            The run's key (engine settings mixed in).
        model, optimizer, scaler : the live training objects
        ema_model : nn.Module or None
            The EMA copy of the weights, if EMA is on.
        cfg : EngineConfig
            Saved as a plain dict, with the scheduler's position.
        total_steps : int
            Optimiser steps of the whole run.
        rng_per_rank : sequence of mapping
            :func:`~hms_core.train.checkpoint.capture_rng_state` of every rank, in rank
            order (one entry for a single process).
        lr_segments : sequence of mapping, default ()
            The learning-rate schedule's segments
            (:meth:`~hms_core.train.optim.LrSchedule.describe`), saved for inspection.
        seconds_in_epoch : float, default 0.0
            Training time of the current epoch since this process started it, in s.
        """
        totals = dataclasses.asdict(self.totals)
        totals["seconds"] = self.totals.seconds + seconds_in_epoch
        return {
            "run_key": run_key, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step, "finished": self.finished,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": {"name": cfg.scheduler, "global_step": self.global_step,
                          "total_steps": total_steps, "segments": list(lr_segments)},
            "scaler": scaler.state_dict(),
            "ema": ema_model.state_dict() if ema_model is not None else None,
            "rng": rng_per_rank[0], "rng_per_rank": list(rng_per_rank),
            "world_size": len(rng_per_rank), "order_gen_state": self.order_state,
            "accum": totals, "best_metric": self.best_metric, "best_epoch": self.best_epoch,
            "history": self.history, "engine_config": dataclasses.asdict(cfg),
            "micro_batch_size": self.micro_batch,
        }

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Any], *, model: nn.Module,
                        optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                        ema_model: nn.Module | None) -> "RunState":
        """Load the weights of ``checkpoint`` into the live objects and return its state.

        The random generators are restored separately (:func:`restore_rank_rng`).
        """
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        if ema_model is not None:
            ema_model.load_state_dict(checkpoint["ema"])
        global_step = int(checkpoint["global_step"])
        return cls(order_state=checkpoint["order_gen_state"], epoch=int(checkpoint["epoch"]),
                   step_in_epoch=int(checkpoint["step_in_epoch"]), global_step=global_step,
                   totals=EpochTotals(**checkpoint["accum"]),
                   best_metric=checkpoint["best_metric"], best_epoch=checkpoint["best_epoch"],
                   history=list(checkpoint["history"]), finished=bool(checkpoint.get("finished")),
                   resumed_from=global_step,
                   micro_batch=int(checkpoint.get("micro_batch_size", 0)))


def restore_rank_rng(checkpoint: Mapping[str, Any], *, rank: int, world_size: int,
                     seed: int) -> None:
    """Restore rank ``rank``'s random generators from ``checkpoint``.

    Exact when the checkpoint was written by ``world_size`` processes. Otherwise every rank
    takes rank 0's saved state (so the data order is kept) and ranks above 0 reseed torch and
    NumPy from ``seed``, their rank and the global step: the run goes on, not bit-exactly.
    """
    # Single-process checkpoints written before rng_per_rank was saved for every run.
    per_rank = checkpoint.get("rng_per_rank") or [checkpoint["rng"]]
    if len(per_rank) == world_size:
        ckpt.restore_rng_state(per_rank[rank])
        return
    ckpt.restore_rng_state(per_rank[0])
    if rank > 0:
        rank_seed = seed + rank + 7919 * int(checkpoint["global_step"])
        torch.manual_seed(rank_seed)
        np.random.seed(rank_seed % 2**32)
    logger.warning("checkpoint written by %d process(es), resumed by %d: the data order is "
                   "kept but per-rank randomness is not (resume not bit-exact)",
                   len(per_rank), world_size)
