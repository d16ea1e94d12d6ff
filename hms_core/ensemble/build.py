"""Build the ensemble from the members' out-of-fold predictions.

Steps, all on out-of-fold (OOF) rows and the patient-grouped folds they carry:

1. score every member (Kaggle KL, >= 10-vote KL and accuracy);
2. choose members and blend weights (:mod:`hms_core.ensemble.selection`);
3. Bayesian model averaging weights and per-row uncertainty (:mod:`.averaging`);
4. nested blend: for each outer fold k the blend weights are refitted on the other folds and
   applied to fold k;
5. nested stacking: for each outer fold k a :class:`~.meta_learner.MetaLearner` starts from
   that fold's blend, is trained with :func:`hms_core.train.engine.fit` (resumable) on the
   other folds (early stopping and shrinkage toward the blend on an inner held-out fold) and
   predicts fold k, so no row is scored by a meta-learner that saw it;
6. temperature scaling of both, cross-fitted on held-out folds (:mod:`.calibration`), kept
   only where it lowers the held-out NLL;
7. deployment: the single best member, the blend or the stacker, whichever has the lowest
   nested OOF KL (the choice and its reason are in the metrics);
8. split conformal prediction sets on the deployed candidate's calibrated OOF probabilities
   (:mod:`.conformal`): the threshold, and coverage and set size cross-fitted by fold.

The deployed head (:class:`~.stacking.StackedHead`) averages the logits of the k fold
meta-learners, or is a single zero-correction meta-learner carrying the blend weights when
the blend is deployed, then divides by the temperature. ``ensemble.pth`` holds everything
needed to rebuild it (:func:`~.stacking.load_ensemble`); its ``deployed`` field says which.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import numpy as np

from hms_core import atomic, metrics
from hms_core.config import from_mapping
from hms_core.contract import CLASSES
from hms_core.ensemble.averaging import PROB_FLOOR, blend, bma_summary, bma_weights
from hms_core.ensemble.calibration import calibrate, softmax_np
from hms_core.ensemble.config import EnsembleConfig
from hms_core.ensemble.conformal import fit_conformal
from hms_core.ensemble.nested import nested_blend, train_meta_learners
from hms_core.ensemble.oof import load_oof
from hms_core.ensemble.selection import select_members
from hms_core.ensemble.stacking import ENSEMBLE_FORMAT
from hms_core.status import update_status

logger = logging.getLogger(__name__)


def _score(votes: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    return {k: (float(v) if isinstance(v, (float, np.floating)) else v)
            for k, v in metrics.score_predictions(votes, probs).items()}


DEPLOY_PREFERENCE = ("best_member", "blend", "stacked")  # simplest first: it wins ties


def _choose_deployment(mode: str, candidates: Mapping[str, Mapping[str, Any]]) -> tuple[str, str]:
    """Pick the candidate with the lowest nested OOF KL (``mode`` "auto"), or the forced one."""
    kl = {name: candidates[name]["kl_all"] for name in DEPLOY_PREFERENCE}
    scores = ", ".join(f"{name} {value:.4f}" for name, value in kl.items())
    if mode != "auto":
        return mode, f"meta_learner.deploy = {mode!r} (nested OOF KL: {scores})"
    chosen = min(DEPLOY_PREFERENCE, key=lambda name: kl[name])  # min keeps the first of equals
    return chosen, (f"lowest nested OOF KL, all calibrated cross-fitted ({scores}); "
                    f"meta_learner.deploy = 'auto'")


def build_ensemble(oof_paths: Mapping[str, Sequence[str | os.PathLike]], cfg: EnsembleConfig | Mapping | None, *,
                   out_path: str | os.PathLike, checkpoint_dir: str | os.PathLike,
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

    Returns
    -------
    dict
        ``members`` (per member: OOF scores plain and with swap TTA), ``ensemble``
        (``deployed``: nested OOF scores of what ``ensemble.pth`` deploys, calibrated
        cross-fitted; ``deployed_candidate`` ``"best_member"``, ``"blend"`` or ``"stacked"``;
        ``deployed_mode`` the head kind, ``"blend"`` or ``"stacked"``; ``deployed_members``;
        ``deployed_reason``; ``best_member_calibrated``;
        ``stacked``: nested OOF of the meta-learner, calibrated cross-fitted;
        ``stacked_uncalibrated``; ``blend_nested``: blend weights fitted per outer fold,
        calibrated cross-fitted; ``blend_nested_uncalibrated``; ``blend`` and ``bma``:
        weights fitted on all OOF rows, so slightly optimistic; ``best_member``;
        ``kl_gain_over_best_member`` of the deployed ensemble), ``calibration`` (of the
        deployed candidate), ``calibration_candidates`` (``best_member``, ``blend``,
        ``stacked``),
        ``conformal`` (:func:`~.conformal.fit_conformal` on the deployed candidate; its
        ``method``, ``alpha``, ``threshold`` and ``n_calibration`` are also in ``ensemble.pth``),
        ``selection``, ``bma``, ``meta_learner``, ``deployed``, ``deployed_candidate``,
        ``n_rows``, ``folds``.
    """
    if not isinstance(cfg, EnsembleConfig):
        cfg = from_mapping(EnsembleConfig, cfg, "ensemble")
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

    blend_oof, blend_fold_weights = nested_blend(tta, votes, oof.fold)
    update_status(status_path, "ensemble", stage="ensemble", step="training meta-learners")
    learners, oof_logits, histories = train_meta_learners(
        oof, blend_fold_weights, cfg, checkpoint_dir=checkpoint_dir, status_path=status_path)

    # The single best member (TTA, as the head computes it) competes too: no weights are
    # fitted for it, so its OOF score is as out-of-fold as the members' own.
    single = min(range(len(oof_all.members)), key=lambda i: member_scores[oof_all.members[i]]["tta"]["kl_all"])
    cals = {
        "best_member": calibrate(np.log(np.clip(tta_all[single], PROB_FLOOR, 1.0)), votes, oof.fold, cfg.calibration),
        "blend": calibrate(np.log(np.clip(blend_oof, PROB_FLOOR, 1.0)), votes, oof.fold, cfg.calibration),
        "stacked": calibrate(oof_logits, votes, oof.fold, cfg.calibration),
    }
    candidates = {name: _score(votes, c["calibrated_probs"]) for name, c in cals.items()}
    choice, reason = _choose_deployment(cfg.meta_learner.deploy, candidates)
    cal = cals[choice]
    deployed = "stacked" if choice == "stacked" else "blend"
    if choice == "best_member":
        head_members, head_weights = [oof_all.members[single]], np.ones(1)
        head_bma = np.ones(1)
    else:
        head_members, head_weights, head_bma = list(kept), weights, bma_w
    best_member = min(member_scores, key=lambda m: min(member_scores[m]["kl_all"], member_scores[m]["tta"]["kl_all"]))
    best_kl = min(member_scores[best_member]["kl_all"], member_scores[best_member]["tta"]["kl_all"])
    ensemble_scores = {
        "deployed": candidates[choice],
        "deployed_candidate": choice,
        "deployed_mode": deployed,
        "deployed_members": head_members,
        "deployed_reason": reason,
        "best_member_calibrated": candidates["best_member"],
        "stacked": candidates["stacked"],
        "stacked_uncalibrated": _score(votes, softmax_np(oof_logits)),
        "blend_nested": candidates["blend"],
        "blend_nested_uncalibrated": _score(votes, blend_oof),
        "blend": _score(votes, blend(tta, weights)),
        "bma": _score(votes, np.clip(bma["probs"], PROB_FLOOR, 1.0)),
        "best_member": {"name": best_member, "kl_all": best_kl},
        "kl_gain_over_best_member": float(best_kl - candidates[choice]["kl_all"]),
    }
    logger.info("deployed %s: %s", choice, reason)
    conformal = fit_conformal(cal["calibrated_probs"], votes, oof.fold, cfg.conformal)

    state = {
        "format": ENSEMBLE_FORMAT,
        "classes": list(CLASSES),
        "members": list(head_members),
        "all_members": list(oof_all.members),
        "member_weights": [float(w) for w in head_weights],
        "bma_weights": [float(w) for w in head_bma],
        "deployed": deployed,
        "temperature": float(cal["temperature"]),
        "folds": [int(k) for k in np.unique(oof.fold)],
        "conformal": {k: conformal[k] for k in ("method", "alpha", "threshold", "n_calibration")},
        "meta_learner": {
            "n_members": len(kept), "members": list(kept), "hidden": cfg.meta_learner.hidden, "dropout": cfg.meta_learner.dropout,
            "state_dicts": [{k: v.detach().cpu().clone() for k, v in m.state_dict().items()} for m in learners],
        },
    }
    atomic.torch_save(state, out_path)
    update_status(status_path, "ensemble", stage="ensemble", step="done", kl=candidates[choice]["kl_all"])

    def _cal_record(c: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in c.items() if k != "calibrated_probs"}

    return {
        "members": member_scores,
        "ensemble": ensemble_scores,
        "calibration": _cal_record(cal),
        "calibration_candidates": {name: _cal_record(c) for name, c in cals.items()},
        "conformal": conformal,
        "selection": selection,
        "bma": {"weights": dict(zip(kept, map(float, bma_w))),
                "effective_rows": cfg.bma.effective_rows,
                "mean_entropy": float(bma["entropy"].mean()),
                "mean_member_spread": float(bma["member_spread"].mean())},
        "meta_learner": {"config": dict(cfg.meta_learner.__dict__), "folds": histories,
                         "nested_blend_weights": {int(k): dict(zip(kept, map(float, w)))
                                                  for k, w in blend_fold_weights.items()}},
        "deployed": deployed,
        "deployed_candidate": choice,
        "n_rows": int(len(votes)),
        "folds": state["folds"],
        "ensemble_path": str(out_path),
    }
