"""Summary and verdict of the transfer study: does pretraining beat random initialisation?

Each run of :func:`hms_core.foundation.transfer.transfer_study` is one (validation fold,
init, mode, label fraction, seed). Per mode and fraction the summary gives each init's KL
over all folds x seeds, per fold over seeds, the *seed spread* (the within-fold standard
deviation over seeds, averaged over folds, so fold difficulty does not inflate it), the
distance to the prior, and the paired difference pretrained - random (same fold, subset and
seed). Pretraining helps in a mode when the random arm's mean KL exceeds the pretrained
arm's by more than the larger of the two seed spreads; ``pretraining_helps`` is true when it
helps in every mode at the decisive fraction and the study has at least ``MIN_FOLDS`` folds
and ``MIN_SEEDS`` seeds there.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

MIN_FOLDS = 2
MIN_SEEDS = 3
INITS = ("pretrained", "random")


def stats(values: Sequence[float]) -> dict[str, Any]:
    """``{mean, std, n, values}``; std is the sample standard deviation (None for one value)."""
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else None,
            "n": int(len(arr)), "values": [float(v) for v in arr]}


def _arm(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    by_fold: dict[int, list[float]] = {}
    for run in runs:
        by_fold.setdefault(int(run["val_fold"]), []).append(float(run["val_kl"]))
    per_fold = {str(f): stats(v) for f, v in sorted(by_fold.items())}
    within = [s["std"] for s in per_fold.values() if s["std"] is not None]
    return {**stats([r["val_kl"] for r in runs]), "per_fold": per_fold,
            "seed_std": float(np.mean(within)) if within else None,
            "vs_prior": float(np.mean([r["val_kl"] - r["val_kl_prior"] for r in runs]))}


def summarise(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``summary[mode][fraction]``: per init :func:`stats` over folds x seeds plus ``per_fold``,
    ``seed_std`` and ``vs_prior``; ``paired_diff`` (pretrained - random, negative when
    pretraining helped), ``n_folds``, ``n_seeds`` (fewest seeds of a fold) and subset sizes."""
    cells: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for run in runs:
        cells.setdefault((run["mode"], f"{run['label_fraction']:g}"), []).append(run)
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for (mode, fraction), cell_runs in cells.items():
        cell: dict[str, Any] = {}
        keyed = {init: {(r["val_fold"], r["repeat"]): r for r in cell_runs if r["init"] == init} for init in INITS}
        for init, by_key in keyed.items():
            if by_key:
                cell[init] = _arm(list(by_key.values()))
        any_arm = next(v for v in keyed.values() if v)
        seeds_per_fold: dict[int, int] = {}
        for fold, _ in any_arm:
            seeds_per_fold[fold] = seeds_per_fold.get(fold, 0) + 1
        cell["n_folds"] = len(seeds_per_fold)
        cell["n_seeds"] = min(seeds_per_fold.values())
        cell["n_train_windows"] = stats([r["n_train_windows"] for r in any_arm.values()])
        cell["n_train_patients"] = stats([r["n_train_patients"] for r in any_arm.values()])
        paired = sorted(set(keyed["pretrained"]) & set(keyed["random"]))
        if paired:
            cell["paired_diff"] = stats([keyed["pretrained"][k]["val_kl"] - keyed["random"][k]["val_kl"]
                                         for k in paired])
        summary.setdefault(mode, {})[fraction] = cell
    return summary


def verdict(summary: Mapping[str, Mapping[str, Mapping[str, Any]]], fraction: float,
            modes: Sequence[str]) -> dict[str, Any]:
    """``pretraining_helps`` at ``fraction`` and its evidence per mode.

    Per mode: ``pretrained`` and ``random`` mean KL and seed spread, ``margin`` (random -
    pretrained; positive when pretraining is better), ``spread`` (the larger seed spread),
    ``helps`` (margin > spread), ``paired_diff``, ``n_folds`` and ``n_seeds``.
    ``enough_runs`` says whether every mode has >= MIN_FOLDS folds and >= MIN_SEEDS seeds;
    ``pretraining_helps`` needs it and ``helps`` in every mode.
    """
    key = f"{fraction:g}"
    evidence: dict[str, Any] = {}
    for mode in modes:
        cell = summary.get(mode, {}).get(key)
        if not cell or not all(init in cell for init in INITS):
            evidence[mode] = {"helps": False, "reason": f"no paired runs at fraction {key}"}
            continue
        spreads = [cell[i]["seed_std"] for i in INITS if cell[i]["seed_std"] is not None]
        margin = cell["random"]["mean"] - cell["pretrained"]["mean"]
        spread = max(spreads) if spreads else None
        evidence[mode] = {
            **{init: {"mean": cell[init]["mean"], "seed_std": cell[init]["seed_std"], "std": cell[init]["std"]}
               for init in INITS},
            "margin": margin, "spread": spread, "helps": spread is not None and margin > spread,
            "paired_diff": {k: cell["paired_diff"][k] for k in ("mean", "std", "n")},
            "n_folds": cell["n_folds"], "n_seeds": cell["n_seeds"],
        }
    enough = all(e.get("n_folds", 0) >= MIN_FOLDS and e.get("n_seeds", 0) >= MIN_SEEDS for e in evidence.values())
    return {"pretraining_helps": bool(enough and evidence and all(e["helps"] for e in evidence.values())),
            "label_fraction": float(fraction), "enough_runs": enough, "min_folds": MIN_FOLDS,
            "min_seeds": MIN_SEEDS, "rule": "random mean KL - pretrained mean KL > the larger seed spread, "
                                            "in every mode", "modes": evidence}


def _pm(mean: float, std: float | None) -> str:
    return f"{mean:.3f}" + ("" if std is None else f" +- {std:.3f}")


def conclusion(summary: Mapping[str, Mapping[str, Mapping[str, Any]]], decision: Mapping[str, Any]) -> str:
    """One factual sentence per mode and fraction, then the verdict."""
    parts = ["validation KL (lower is better; mean +- seed spread over folds x seeds)"]
    for mode, cells in summary.items():
        for fraction, cell in cells.items():
            arms = [f"{init} {_pm(cell[init]['mean'], cell[init]['seed_std'])} ({cell[init]['vs_prior']:+.3f} "
                    "vs prior)" for init in INITS if init in cell]
            text = (f"{mode} at fraction {fraction} ({cell['n_folds']} fold(s) x {cell['n_seeds']} seed(s), "
                    f"~{cell['n_train_windows']['mean']:.0f} windows): {', '.join(arms)}")
            if "paired_diff" in cell:
                text += f"; paired pretrained - random {_pm(cell['paired_diff']['mean'], cell['paired_diff']['std'])}"
            parts.append(text)
    helps = decision["pretraining_helps"]
    tail = (f"pretraining_helps: {str(helps).lower()} at fraction {decision['label_fraction']:g}"
            + ("" if decision["enough_runs"] else
               f" (fewer than {decision['min_folds']} folds x {decision['min_seeds']} seeds)"))
    return "; ".join(parts[:1]) + ". " + ". ".join(parts[1:] + [tail]) + "."
