"""Nested out-of-fold fits: blend weights and meta-learners, each fold scored by a fit without it.

For each outer fold k the blend weights are refitted on the other folds (:func:`nested_blend`)
and a :class:`~.meta_learner.MetaLearner` starting from that blend is trained with
:func:`hms_core.train.engine.fit` on the other folds (:func:`train_meta_learners`), with early
stopping and shrinkage toward the blend decided on an inner held-out training fold.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from hms_core.config import from_mapping
from hms_core.contract import CLASSES
from hms_core.ensemble.averaging import blend
from hms_core.ensemble.config import EnsembleConfig
from hms_core.ensemble.meta_learner import MetaLearner
from hms_core.ensemble.oof import OOFSet
from hms_core.ensemble.selection import fit_blend_weights
from hms_core.train.checkpoint import make_run_key
from hms_core.train.data import ArrayDataset
from hms_core.train.engine import fit
from hms_core.train.engine_config import EngineConfig
from hms_core.train.losses import kl_loss

logger = logging.getLogger(__name__)


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _engine_config(cfg: EnsembleConfig, *, select_best: bool) -> EngineConfig:
    m = cfg.meta_learner
    return from_mapping(EngineConfig, {
        "epochs": m.epochs, "batch_size": m.batch_size, "lr": m.lr, "weight_decay": m.weight_decay,
        "seed": m.seed, "device": "cpu", "select_best": select_best, "grad_clip": 1.0,
        "warmup_frac": 0.0, "progress": False, "pin_memory": False,
    }, "ensemble.meta_learner")


def _kl_loss_fn(residual_l2: float):
    def loss_fn(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        kl = kl_loss(model(batch["logp"], batch["logp_swap"]), batch["target"])
        if residual_l2 <= 0:
            return kl, {}
        return kl + residual_l2 * model.correction_l2(), {"kl": kl.detach()}
    return loss_fn


def _soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return float(-(targets * torch.log_softmax(logits, dim=1)).sum(dim=1).mean())


SHRINK_GRID = np.linspace(0.0, 1.0, 21)


def _fit_shrinkage(model: MetaLearner, logp: torch.Tensor, logp_swap: torch.Tensor,
                   targets: torch.Tensor) -> tuple[float, dict[str, float]]:
    """The factor in ``SHRINK_GRID`` whose ``base + factor * correction`` has the lowest soft CE.

    Soft CE differs from the KL by the targets' entropy, a constant, so the argmin is the KL's.
    """
    with torch.no_grad():
        base, corr = model.parts(logp, logp_swap)
        ce = [_soft_ce(base + float(a) * corr, targets) for a in SHRINK_GRID]
    best = int(np.argmin(ce))
    return float(SHRINK_GRID[best]), {"blend_ce": ce[0], "full_ce": ce[-1], "shrunk_ce": ce[best]}


def nested_blend(member_probs: np.ndarray, votes: np.ndarray, fold: np.ndarray
                 ) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Blend weights fitted per outer fold on the other folds, applied to that fold.

    Parameters
    ----------
    member_probs : np.ndarray
        ``(n_members, n_rows, 6)`` OOF probabilities (TTA-averaged).
    votes : np.ndarray
        ``(n_rows, 6)`` vote counts.
    fold : np.ndarray
        ``(n_rows,)`` outer fold of each row.

    Returns
    -------
    probs : np.ndarray
        ``(n_rows, 6)``: row i blended with weights that never saw it (single fold: in-sample).
    fold_weights : dict
        ``{fold: (n_members,) weights}``.
    """
    folds = np.unique(fold)
    probs = np.zeros(member_probs.shape[1:], dtype=np.float64)
    fold_weights = {}
    for k in folds:
        held = fold == k
        fit_rows = ~held if len(folds) > 1 else held
        w = fit_blend_weights(member_probs[:, fit_rows], votes[fit_rows])
        fold_weights[int(k)] = w
        probs[held] = blend(member_probs[:, held], w)
    return probs, fold_weights


def train_meta_learners(oof: OOFSet, init_weights: np.ndarray | Mapping[int, np.ndarray], cfg: EnsembleConfig,
                        *, checkpoint_dir: str | os.PathLike, status_path: str | os.PathLike | None = None
                        ) -> tuple[list[MetaLearner], np.ndarray, list[dict]]:
    """Nested stacking: one meta-learner per outer fold, trained on the other folds.

    With ``meta_learner.inner_validation`` (and >= 3 folds) one of the training folds is held
    out as an inner validation fold: training keeps the epoch with the lowest inner KL and
    the correction is then shrunk toward the blend by the factor minimising the inner KL.
    The outer fold is never used for any of this.

    Parameters
    ----------
    oof : OOFSet
        The kept members' OOF predictions.
    init_weights : np.ndarray or mapping
        ``(n_members,)`` starting blend weights, or ``{fold: weights}`` (weights fitted
        without that outer fold, see :func:`nested_blend`).
    checkpoint_dir : path
        Resumable state; one sub-folder per fold.

    Returns
    -------
    meta_learners : list of MetaLearner
        One per fold, in the order of ``np.unique(oof.fold)``, eval mode, shrinkage applied.
    oof_logits : np.ndarray
        ``(n_rows, 6)``: row i scored by the meta-learner of its own fold (never trained on it).
    histories : list of dict
        Per fold: ``fold, n_train, inner_fold, n_inner_val, best_epoch, shrinkage``, inner
        soft CE of blend / full / shrunk stacker, ``final_train_loss``, ``blend_weights``.
    """
    mcfg = cfg.meta_learner
    folds = np.unique(oof.fold)
    logp = np.transpose(oof.logp, (1, 0, 2)).astype(np.float32)  # (n_rows, M, 6)
    logp_swap = np.transpose(oof.logp_swap, (1, 0, 2)).astype(np.float32)
    targets = oof.targets.astype(np.float32)
    fold_init = (dict(init_weights) if isinstance(init_weights, Mapping)
                 else {int(k): np.asarray(init_weights) for k in folds})
    inner = mcfg.inner_validation and len(folds) >= 3
    engine_cfg = _engine_config(cfg, select_best=inner)
    data_key = _digest(logp, logp_swap, targets, oof.fold, *[np.asarray(fold_init[int(k)]) for k in folds])
    oof_logits = np.zeros((len(targets), len(CLASSES)), dtype=np.float64)
    learners, histories = [], []
    if len(folds) == 1:
        logger.warning("only one fold in the OOF rows: the meta-learner is trained and scored on the "
                    "same rows, so the stacked OOF figures are optimistic")
    elif mcfg.inner_validation and not inner:
        logger.warning("meta_learner.inner_validation needs >= 3 folds (got %d): no early stopping or "
                    "shrinkage", len(folds))
    for pos, k in enumerate(folds):
        held_rows = np.flatnonzero(oof.fold == k)
        train_rows = np.flatnonzero(oof.fold != k) if len(folds) > 1 else np.arange(len(targets))
        inner_fold, val_rows, eval_fn = None, None, None
        if inner:
            inner_fold = int(folds[(pos + 1) % len(folds)])  # patient-grouped like the outer folds
            val_rows = train_rows[oof.fold[train_rows] == inner_fold]
            train_rows = train_rows[oof.fold[train_rows] != inner_fold]
            val = [torch.from_numpy(a[val_rows]) for a in (logp, logp_swap, targets)]

            def eval_fn(model: nn.Module, val=val) -> dict[str, float]:
                with torch.no_grad():
                    return {"val_kl": _soft_ce(model(val[0], val[1]), val[2])}
        torch.manual_seed(mcfg.seed + int(k))
        model = MetaLearner(len(oof.members), hidden=mcfg.hidden, dropout=mcfg.dropout,
                            init_weights=fold_init[int(k)])
        data = ArrayDataset(logp=logp[train_rows], logp_swap=logp_swap[train_rows], target=targets[train_rows])
        result = fit(model, loss_fn=_kl_loss_fn(mcfg.residual_l2), train_data=data, cfg=engine_cfg,
                     eval_fn=eval_fn, checkpoint_dir=Path(checkpoint_dir) / f"fold{int(k)}",
                     run_key=make_run_key("meta_learner", int(k), data_key, list(oof.members), mcfg.__dict__),
                     status_path=status_path, status_job="ensemble",
                     status_fields={"stage": "ensemble", "meta_fold": int(k)})
        model = result.model.eval()
        record: dict[str, Any] = {"fold": int(k), "n_train": int(len(train_rows)), "inner_fold": inner_fold,
                                  "n_inner_val": int(len(val_rows)) if val_rows is not None else 0,
                                  "best_epoch": result.best_epoch, "shrinkage": 1.0}
        if inner:
            factor, ce = _fit_shrinkage(model, *val)
            model.shrink_correction(factor)
            record.update(shrinkage=factor, **{f"inner_{n}": v for n, v in ce.items()})
        with torch.no_grad():
            oof_logits[held_rows] = model(torch.from_numpy(logp[held_rows]),
                                          torch.from_numpy(logp_swap[held_rows])).double().numpy()
        learners.append(model)
        record.update(final_train_loss=float(result.history[-1]["train_loss"]) if result.history else None,
                      blend_weights=dict(zip(oof.members, map(float, model.blend_weights()))))
        histories.append(record)
    return learners, oof_logits, histories
