"""Build the ensemble from the members' out-of-fold predictions.

Steps, all on out-of-fold (OOF) rows and the patient-grouped folds they carry:

1. score every member (Kaggle KL, >= 10-vote KL and accuracy);
2. choose members and blend weights (:mod:`hms_core.ensemble.selection`);
3. Bayesian model averaging weights and per-row uncertainty (:mod:`.averaging`);
4. nested stacking: for each outer fold k a :class:`~.meta_learner.MetaLearner` is trained
   with :func:`hms_core.train.engine.fit` (resumable) on the other folds and predicts fold k,
   so no row is scored by a meta-learner that saw it;
5. temperature scaling on those nested OOF logits (:mod:`.calibration`).

The deployed stacker averages the logits of the k fold meta-learners, then divides by the
temperature. ``ensemble.pth`` holds everything needed to rebuild it (:func:`load_ensemble`).
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from hms_core import atomic, metrics
from hms_core.contract import CLASSES
from hms_core.ensemble.averaging import PROB_FLOOR, blend, bma_summary, bma_weights
from hms_core.ensemble.calibration import calibrate, softmax_np
from hms_core.ensemble.config import EnsembleConfig
from hms_core.ensemble.meta_learner import MetaLearner
from hms_core.ensemble.oof import OOFSet, load_oof
from hms_core.ensemble.selection import select_members
from hms_core.ops.status import update_status
from hms_core.train.checkpoint import make_run_key
from hms_core.train.data import ArrayDataset
from hms_core.train.engine import EngineConfig, fit
from hms_core.train.losses import kl_loss

log = logging.getLogger(__name__)

ENSEMBLE_FORMAT = 1


class StackedHead(nn.Module):
    """The deployed stacker: mean logits of the fold meta-learners, divided by the temperature.

    ``forward(logp (B, M, 6), logp_swap (B, M, 6)) -> calibrated logits (B, 6)``.
    """

    def __init__(self, meta_learners: Sequence[MetaLearner], temperature: float):
        super().__init__()
        self.meta_learners = nn.ModuleList(meta_learners)
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, logp: torch.Tensor, logp_swap: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([m(logp, logp_swap) for m in self.meta_learners]).mean(dim=0)
        return logits / self.temperature


def _score(votes: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    return {k: (float(v) if isinstance(v, (float, np.floating)) else v)
            for k, v in metrics.score_predictions(votes, probs).items()}


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _engine_config(cfg: EnsembleConfig) -> EngineConfig:
    m = cfg.meta_learner
    return EngineConfig.from_dict({
        "epochs": m.epochs, "batch_size": m.batch_size, "lr": m.lr, "weight_decay": m.weight_decay,
        "seed": m.seed, "device": "cpu", "select_best": False, "grad_clip": 1.0,
        "warmup_frac": 0.0, "progress": False, "pin_memory": False,
    })


def _kl_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    return kl_loss(model(batch["logp"], batch["logp_swap"]), batch["target"]), {}


def train_meta_learners(oof: OOFSet, init_weights: np.ndarray, cfg: EnsembleConfig, *,
                        checkpoint_dir: str | os.PathLike, status_path: str | os.PathLike | None = None
                        ) -> tuple[list[MetaLearner], np.ndarray, list[dict]]:
    """Nested stacking: one meta-learner per outer fold, trained on the other folds.

    Parameters
    ----------
    oof : OOFSet
        The kept members' OOF predictions.
    init_weights : np.ndarray
        ``(n_members,)`` starting blend weights.
    checkpoint_dir : path
        Resumable state; one sub-folder per fold.

    Returns
    -------
    meta_learners : list of MetaLearner
        One per fold, in the order of ``np.unique(oof.fold)``, eval mode.
    oof_logits : np.ndarray
        ``(n_rows, 6)``: row i scored by the meta-learner of its own fold (never trained on it).
    histories : list of dict
        Per fold: ``fold, n_train, history`` (the engine's epoch records).
    """
    folds = np.unique(oof.fold)
    logp = np.transpose(oof.logp, (1, 0, 2)).astype(np.float32)  # (n_rows, M, 6)
    logp_swap = np.transpose(oof.logp_swap, (1, 0, 2)).astype(np.float32)
    targets = oof.targets.astype(np.float32)
    engine_cfg = _engine_config(cfg)
    data_key = _digest(logp, logp_swap, targets, oof.fold, np.asarray(init_weights))
    oof_logits = np.zeros((len(targets), len(CLASSES)), dtype=np.float64)
    learners, histories = [], []
    if len(folds) == 1:
        log.warning("only one fold in the OOF rows: the meta-learner is trained and scored on the "
                    "same rows, so the stacked OOF figures are optimistic")
    for k in folds:
        train_rows = np.flatnonzero(oof.fold != k) if len(folds) > 1 else np.arange(len(targets))
        held_rows = np.flatnonzero(oof.fold == k)
        torch.manual_seed(cfg.meta_learner.seed + int(k))
        model = MetaLearner(len(oof.members), hidden=cfg.meta_learner.hidden,
                            dropout=cfg.meta_learner.dropout, init_weights=init_weights)
        data = ArrayDataset(logp=logp[train_rows], logp_swap=logp_swap[train_rows], target=targets[train_rows])
        result = fit(model, loss_fn=_kl_loss, train_data=data, cfg=engine_cfg,
                     checkpoint_dir=Path(checkpoint_dir) / f"fold{int(k)}",
                     run_key=make_run_key("meta_learner", int(k), data_key, list(oof.members),
                                          cfg.meta_learner.__dict__),
                     status_path=status_path, status_job="ensemble",
                     status_fields={"stage": "ensemble", "meta_fold": int(k)})
        model = result.model.eval()
        with torch.no_grad():
            oof_logits[held_rows] = model(torch.from_numpy(logp[held_rows]),
                                          torch.from_numpy(logp_swap[held_rows])).double().numpy()
        learners.append(model)
        histories.append({"fold": int(k), "n_train": int(len(train_rows)),
                          "final_train_loss": float(result.history[-1]["train_loss"]) if result.history else None,
                          "blend_weights": dict(zip(oof.members, map(float, model.blend_weights())))})
    return learners, oof_logits, histories


def build_ensemble(oof_paths: Mapping[str, Sequence[str | os.PathLike]], cfg: EnsembleConfig | Mapping | None, *,
                   out_path: str | os.PathLike, checkpoint_dir: str | os.PathLike, threads: int = 1,
                   status_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Select, stack, average and calibrate the members; write ``ensemble.pth`` atomically.

    Parameters
    ----------
    oof_paths : Mapping
        ``{model name: [oof/{model}_fold{k}.parquet for every fold]}``.
    cfg : EnsembleConfig or mapping
        The ``ensemble`` config section.
    out_path : path
        ``models/final/ensemble.pth`` (loadable with ``weights_only=True``).
    checkpoint_dir : path
        Resumable meta-learner training state.
    threads : int
        torch CPU threads.

    Returns
    -------
    dict
        ``members`` (per member: OOF scores plain and with swap TTA), ``ensemble``
        (``stacked``: nested OOF, calibrated cross-fitted; ``stacked_uncalibrated``;
        ``blend`` and ``bma``: weights fitted on all OOF rows, so slightly optimistic;
        ``best_member``), ``calibration``, ``selection``, ``bma``, ``meta_learner``,
        ``n_rows``, ``folds``.
    """
    if not isinstance(cfg, EnsembleConfig):
        cfg = EnsembleConfig.from_dict(cfg)
    torch.set_num_threads(max(1, int(threads)))
    update_status(status_path, "ensemble", stage="ensemble", step="loading OOF predictions")
    oof_all = load_oof(oof_paths)
    votes = oof_all.votes
    tta_all = oof_all.tta_probs()
    member_scores = {}
    for i, m in enumerate(oof_all.members):
        member_scores[m] = _score(votes, np.exp(oof_all.logp[i]))
        member_scores[m]["tta"] = _score(votes, tta_all[i])

    update_status(status_path, "ensemble", stage="ensemble", step="selecting members")
    selection = select_members(oof_all.members, tta_all, votes, cfg.selection)
    kept = selection["kept"]
    oof = oof_all.subset(kept)
    tta = oof.tta_probs()
    weights = np.array([selection["weights"][m] for m in kept])

    bma_w = bma_weights(tta, votes, cfg.bma)
    bma = bma_summary(tta, bma_w)

    update_status(status_path, "ensemble", stage="ensemble", step="training meta-learners")
    learners, oof_logits, histories = train_meta_learners(
        oof, weights, cfg, checkpoint_dir=checkpoint_dir, status_path=status_path)

    cal = calibrate(oof_logits, votes, oof.fold, cfg.calibration)
    stacked = _score(votes, cal["calibrated_probs"])
    best_member = min(member_scores, key=lambda m: min(member_scores[m]["kl_all"], member_scores[m]["tta"]["kl_all"]))
    best_kl = min(member_scores[best_member]["kl_all"], member_scores[best_member]["tta"]["kl_all"])
    ensemble_scores = {
        "stacked": stacked,
        "stacked_uncalibrated": _score(votes, softmax_np(oof_logits)),
        "blend": _score(votes, blend(tta, weights)),
        "bma": _score(votes, np.clip(bma["probs"], PROB_FLOOR, 1.0)),
        "best_member": {"name": best_member, "kl_all": best_kl},
        "kl_gain_over_best_member": float(best_kl - stacked["kl_all"]),
    }
    log.info("stacked OOF KL %.4f (best member %s %.4f)", stacked["kl_all"], best_member, best_kl)

    state = {
        "format": ENSEMBLE_FORMAT,
        "classes": list(CLASSES),
        "members": list(kept),
        "all_members": list(oof_all.members),
        "member_weights": [float(w) for w in weights],
        "bma_weights": [float(w) for w in bma_w],
        "temperature": float(cal["temperature"]),
        "folds": [int(k) for k in np.unique(oof.fold)],
        "meta_learner": {
            "n_members": len(kept), "hidden": cfg.meta_learner.hidden, "dropout": cfg.meta_learner.dropout,
            "state_dicts": [{k: v.detach().cpu().clone() for k, v in m.state_dict().items()} for m in learners],
        },
    }
    atomic.torch_save(state, out_path)
    update_status(status_path, "ensemble", stage="ensemble", step="done", kl=stacked["kl_all"])
    return {
        "members": member_scores,
        "ensemble": ensemble_scores,
        "calibration": {k: v for k, v in cal.items() if k != "calibrated_probs"},
        "selection": selection,
        "bma": {"weights": dict(zip(kept, map(float, bma_w))),
                "effective_rows": cfg.bma.effective_rows,
                "mean_entropy": float(bma["entropy"].mean()),
                "mean_member_spread": float(bma["member_spread"].mean())},
        "meta_learner": {"config": dict(cfg.meta_learner.__dict__), "folds": histories},
        "n_rows": int(len(votes)),
        "folds": state["folds"],
        "ensemble_path": str(out_path),
    }


def load_ensemble(path: str | os.PathLike) -> dict[str, Any]:
    """Read ``ensemble.pth`` and rebuild its stacker.

    Returns
    -------
    dict
        The saved fields plus ``head``: a :class:`StackedHead` in eval mode.

    Raises
    ------
    DataError
        The file is missing or not an ensemble of this format.
    """
    from hms_core.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "ensemble file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DataError(path, f"cannot read the ensemble: {err}") from err
    if not isinstance(state, dict) or state.get("format") != ENSEMBLE_FORMAT:
        raise DataError(path, f"not an ensemble.pth of format {ENSEMBLE_FORMAT}")
    meta = state["meta_learner"]
    learners = []
    for sd in meta["state_dicts"]:
        m = MetaLearner(meta["n_members"], hidden=meta["hidden"], dropout=meta["dropout"])
        m.load_state_dict(sd)
        learners.append(m.eval())
    head = StackedHead(learners, state["temperature"]).eval()
    return {**state, "head": head}
