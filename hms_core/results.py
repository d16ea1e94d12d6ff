"""The run's results file ``training_results.json`` and the end-of-run summary.

Everything here is read from files the pipeline wrote (OOF parquets, weights, the ensemble
metrics, the ONNX parity reports, the foundation transfer study); nothing is estimated.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from hms_core import atomic, metrics
from hms_core.contract import (HIGH_VOTE_THRESHOLD, LOGP_COLUMNS, LOGP_SWAP_COLUMNS, VOTE_COLUMNS,
                              group_by_model, parse_fold_name, votes_to_targets)
from hms_core.errors import DataError
from hms_core.hashing import sha256_file

logger = logging.getLogger(__name__)

RESULTS_FORMAT = 1


def _read_json(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "results input not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(path, f"not valid JSON: {err}") from err


def _read_oofs(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    from hms_core.ensemble.oof import read_member_oof

    return read_member_oof(paths, member=parse_fold_name(paths[0])[0])


def _score_oofs(oof: pd.DataFrame) -> dict[str, Any]:
    votes = oof[list(VOTE_COLUMNS)].to_numpy(np.float64)
    probs = np.exp(oof[list(LOGP_COLUMNS)].to_numpy(np.float64))
    tta = 0.5 * (probs + np.exp(oof[list(LOGP_SWAP_COLUMNS)].to_numpy(np.float64)))
    scores = metrics.score_predictions(votes, probs)
    scores["tta"] = metrics.score_predictions(votes, tta)
    return scores


GAP_SUBSETS = {"all": 1, "high_vote": HIGH_VOTE_THRESHOLD}  # subset name -> minimum votes of a row
GAP_DEFINITION = {
    "model_kl": "Kaggle KL of the out-of-fold predictions (members: plain; ensemble: what "
                "ensemble.pth deploys)",
    "prior_kl": "Kaggle KL of the train prior: each out-of-fold row predicted by the mean vote "
                "distribution of its fold's training rows (hms_core.train.data.train_prior, as "
                "prior_kl_all in the weights' metrics)",
    "floor_kl": "Kaggle KL of the answer key's latent class probabilities on the same rows "
                "(null without an answer key)",
    "gap_closed": "(prior_kl - model_kl) / (prior_kl - floor_kl): share of the learnable gap "
                  "closed (null without an answer key)",
    "high_vote": f"rows with >= {HIGH_VOTE_THRESHOLD} votes",
}
NO_ANSWER_KEY = "no answer key (not a synthetic data set): floor_kl and gap_closed are null"


def gap_closed(model_kl: float | None, prior_kl: float | None, floor_kl: float | None) -> float | None:
    """Share of the learnable gap a model closes: ``(prior - model) / (prior - floor)``.

    1 means the model scores the floor, 0 the prior, < 0 worse than the prior.

    Parameters
    ----------
    model_kl, prior_kl, floor_kl : float or None
        Kaggle KL (nats) of the model, the train prior and the answer key on the same rows.

    Returns
    -------
    float or None
        None when a value is missing or not finite, or the prior is not above the floor
        (there is no gap to close).
    """
    values = (model_kl, prior_kl, floor_kl)
    if any(v is None or not np.isfinite(v) for v in values):
        return None
    if prior_kl <= floor_kl:
        return None
    return float((prior_kl - model_kl) / (prior_kl - floor_kl))


def oof_prior_probs(oof: pd.DataFrame) -> np.ndarray:
    """The train prior of each out-of-fold row, ``(n_rows, 6)``.

    A row of fold ``k`` gets :func:`~hms_core.train.data.train_prior` of the rows of the other
    folds: one model's OOF frames cover every stored window once, so these are the windows
    ``train_fold`` trained fold ``k`` on (its ``prior_kl_all`` is the same figure).

    Parameters
    ----------
    oof : pandas.DataFrame
        ``fold`` and the six vote columns (all folds of one member).
    """
    from hms_core.train.data import train_prior

    folds = oof["fold"].to_numpy()
    prior = np.empty((len(oof), len(VOTE_COLUMNS)), dtype=np.float64)
    for k in np.unique(folds):
        others = folds != k
        if not others.any():
            raise DataError("oof", f"fold {int(k)} is the only fold: its rows have no training rows "
                                   "to take a prior from")
        prior[folds == k] = train_prior(oof.loc[others])
    return prior


def gap_entry(scores: Mapping[str, Any], votes: np.ndarray, prior_probs: np.ndarray,
              latent_probs: np.ndarray | None) -> dict[str, dict[str, Any]]:
    """One row of the gap table: model, prior and floor KL and the share closed, per subset.

    Parameters
    ----------
    scores : mapping
        The model's ``kl_all``, ``kl_high_vote`` and ``n_rows``
        (:func:`hms_core.metrics.score_predictions` on these rows).
    votes : np.ndarray
        ``(n_rows, 6)`` vote counts of the scored rows.
    prior_probs : np.ndarray
        ``(n_rows, 6)`` train prior of each row (:func:`oof_prior_probs`).
    latent_probs : np.ndarray or None
        ``(n_rows, 6)`` answer-key probabilities of the same rows, None without an answer key.

    Returns
    -------
    dict
        ``{"all": {...}, "high_vote": {...}}``, each with ``n_rows``, ``model_kl``,
        ``prior_kl``, ``floor_kl`` and ``gap_closed`` (KL in nats, the share a fraction).
    """
    votes = np.asarray(votes, dtype=np.float64)
    if scores.get("n_rows") is not None and int(scores["n_rows"]) != len(votes):
        raise DataError("gap", f"the model was scored on {scores['n_rows']} rows, the gap table has {len(votes)}")
    targets = votes_to_targets(votes)
    n_votes = votes.sum(axis=1)
    entry = {}
    for subset, min_votes in GAP_SUBSETS.items():
        keep = n_votes >= min_votes
        model_kl = scores.get("kl_all" if subset == "all" else "kl_high_vote")
        prior_kl = metrics.kaggle_kl(targets[keep], prior_probs[keep]) if keep.any() else None
        floor_kl = (metrics.kaggle_kl(targets[keep], latent_probs[keep])
                    if keep.any() and latent_probs is not None else None)
        entry[subset] = {"n_rows": int(keep.sum()), "model_kl": model_kl, "prior_kl": prior_kl,
                         "floor_kl": floor_kl, "gap_closed": gap_closed(model_kl, prior_kl, floor_kl)}
    return entry


def gap_table(oof_by_model: Mapping[str, pd.DataFrame], model_scores: Mapping[str, Mapping[str, Any]],
              ensemble_scores: Mapping[str, Any] | None, ensemble_members: Sequence[str],
              answer_key: str | os.PathLike | None) -> dict[str, Any]:
    """How far each model and the deployed ensemble are from the answer-key floor.

    Parameters
    ----------
    oof_by_model : mapping
        Model name -> its out-of-fold frame (all folds).
    model_scores : mapping
        Model name -> :func:`hms_core.metrics.score_predictions` of its plain OOF predictions.
    ensemble_scores : mapping or None
        Scores of what ``ensemble.pth`` deploys; its rows are every member's rows.
    ensemble_members : sequence of str
        The deployed members (the ensemble's prior and floor are taken on their rows).
    answer_key : path or None
        ``answer_key/latent.parquet`` of a synthetic data set; None where there is none.

    Returns
    -------
    dict
        ``answer_key`` (the path or None), ``note``, ``definition`` and ``table``
        (name -> :func:`gap_entry`, ``"ensemble"`` last).
    """
    from hms_core.data.synthetic.answer_key import read_latent

    def entry(scores: Mapping[str, Any], oof: pd.DataFrame) -> dict:
        votes = oof[list(VOTE_COLUMNS)].to_numpy(np.float64)
        latent = read_latent(answer_key, oof["label_id"].to_numpy()) if answer_key is not None else None
        return gap_entry(scores, votes, oof_prior_probs(oof), latent)

    table = {name: entry(model_scores[name], oof) for name, oof in sorted(oof_by_model.items())}
    rows_of = next((m for m in ensemble_members if m in oof_by_model), None)
    if ensemble_scores and rows_of is not None:
        table["ensemble"] = entry(ensemble_scores, oof_by_model[rows_of])
    return {
        "answer_key": None if answer_key is None else str(answer_key),
        "note": ("floor from the answer key's latent class probabilities" if answer_key is not None
                 else NO_ANSWER_KEY),
        "definition": GAP_DEFINITION,
        "table": table,
    }


def _check_prior(name: str, oof: pd.DataFrame, fold_metrics: Mapping[str, Mapping[str, Any]]) -> None:
    """Warn when a fold's prior KL here differs from the ``prior_kl_all`` training stored.

    They differ only when the model's OOF frames do not cover the windows it trained on
    (e.g. some folds missing), so the gap table's prior would not be the training prior.
    """
    prior = oof_prior_probs(oof)
    targets = votes_to_targets(oof[list(VOTE_COLUMNS)].to_numpy(np.float64))
    folds = oof["fold"].to_numpy()
    for fold, fm in fold_metrics.items():
        stored = fm.get("prior_kl_all")
        rows = folds == int(fold)
        if not isinstance(stored, (int, float)) or not rows.any():
            continue
        here = metrics.kaggle_kl(targets[rows], prior[rows])
        if abs(here - stored) > 1e-6:
            logger.warning("%s fold %s: prior KL %.6f from the OOF rows, %.6f stored by training; the "
                           "gap table's prior is not the training prior", name, fold, here, stored)


def _training_record(weight_paths: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """Per-fold metrics stored in the weights files, and their summed training time."""
    folds = {}
    total_s = 0.0
    for path in weight_paths:
        state = torch.load(path, map_location="cpu", weights_only=True)
        fold_metrics = dict(state.get("metrics") or {})
        folds[str(parse_fold_name(path)[1])] = fold_metrics
        for key in ("seconds", "train_time_s"):
            if isinstance(fold_metrics.get(key), (int, float)):
                total_s += float(fold_metrics[key])
                break
    return {"folds": folds, "train_time_s": total_s}


def collect_results(out_path: str | os.PathLike, *, oofs: Sequence[str | os.PathLike],
                    weights: Sequence[str | os.PathLike], ensemble_metrics: str | os.PathLike,
                    parity: Sequence[str | os.PathLike], artifacts: Iterable[str | os.PathLike] = (),
                    transfer: str | os.PathLike | None = None, validation: str | os.PathLike | None = None,
                    quarantine: Sequence[str | os.PathLike] = (), status_path: str | os.PathLike | None = None,
                    answer_key: str | os.PathLike | None = None,
                    extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Gather the run's measured figures into ``training_results.json`` (written atomically).

    Parameters
    ----------
    out_path : path
        The results file.
    oofs, weights : sequences of paths
        ``oof/{model}_fold{k}.parquet`` and ``models/final/{model}_fold{k}.pth`` of every model.
    ensemble_metrics : path
        JSON written from :func:`hms_core.ensemble.build.build_ensemble`'s return value.
    parity : sequence of paths
        One JSON per ONNX file (from :mod:`hms_core.export.onnx`).
    artifacts : iterable of paths
        Further files to list with their SHA-256 (ONNX files, ensemble.pth, encoder, ...);
        ``oofs``, ``weights`` and the JSON inputs are listed anyway.
    transfer : path or None
        The foundation transfer study JSON; included verbatim when given.
    validation : path or None
        ``data/validation.json``; its summary counts are included.
    quarantine : sequence of paths
        Per-batch quarantine JSONs; the number of skipped (quarantined) recordings is included.
    status_path : path or None
        ``status/run.json``; the wall time of the run is taken from its job timestamps.
    answer_key : path or None
        ``answer_key/latent.parquet`` of a synthetic data set: the gap table
        (``gap_to_floor``, :func:`gap_table`) then holds the floor and the share of the
        learnable gap closed; None (Kaggle or local data) leaves both null.
    extra : mapping or None
        Merged into the top level (e.g. the config).

    Returns
    -------
    dict
        What was written.
    """
    ens = _read_json(ensemble_metrics)
    oofs_by_model, weights_by_model = group_by_model(oofs), group_by_model(weights)
    by_model = {name: {"oofs": oofs_by_model.get(name, []), "weights": weights_by_model.get(name, [])}
                for name in {**oofs_by_model, **weights_by_model}}
    parity_by_name = {}
    for p in parity:
        rec = _read_json(p)
        parity_by_name[rec.get("model") or Path(p).stem] = rec

    models: dict[str, Any] = {}
    oof_frames: dict[str, pd.DataFrame] = {}
    for name, files in sorted(by_model.items()):
        entry: dict[str, Any] = {"n_folds": len(files["oofs"])}
        if files["oofs"]:
            oof_frames[name] = _read_oofs(sorted(files["oofs"], key=str))
            entry["oof"] = _score_oofs(oof_frames[name])
        if files["weights"]:
            entry["training"] = _training_record(sorted(files["weights"], key=str))
        if name in parity_by_name:
            entry["onnx_parity"] = parity_by_name[name]
        deployed_members = (ens.get("ensemble", {}).get("deployed_members")
                            or ens.get("selection", {}).get("kept", []))
        entry["kept_in_ensemble"] = name in deployed_members
        models[name] = entry

    ensemble = {k: ens[k] for k in ("ensemble", "calibration", "conformal", "selection", "bma", "meta_learner")
                if k in ens}
    members = ens.get("ensemble", {}).get("deployed_members") or ens.get("selection", {}).get("kept", [])
    gap = gap_table(oof_frames, {n: models[n]["oof"] for n in oof_frames}, _deployed_scores(ensemble),
                    members, answer_key)
    for name, oof in oof_frames.items():
        _check_prior(name, oof, models[name].get("training", {}).get("folds", {}))
    if "ensemble" in parity_by_name:
        ensemble["onnx_parity"] = parity_by_name["ensemble"]

    listed = [*oofs, *weights, ensemble_metrics, *parity, *artifacts, *quarantine]
    listed += [p for p in (transfer, validation, answer_key) if p is not None]
    artifact_hashes = {}
    for p in listed:
        p = Path(p)
        if p.is_file():
            artifact_hashes[str(p)] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}

    results: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "metric": "Kaggle KL divergence of the vote distributions (lower is better); "
                  "accuracy is argmax vs vote majority on rows with >= 10 votes",
        "models": models,
        "ensemble": ensemble,
        "gap_to_floor": gap,
        "training_time_s": float(sum(m.get("training", {}).get("train_time_s", 0.0) for m in models.values())),
    }
    run_wall = _run_wall_s(status_path)
    if run_wall is not None:
        results["run_wall_s"] = run_wall
    if transfer is not None:
        results["foundation_transfer"] = _read_json(transfer)
    if validation is not None:
        v = _read_json(validation)
        results["data_validation"] = {k: v[k] for k in v if not isinstance(v[k], (list, dict))}
        results["data_validation"]["n_bad_recordings"] = len(v.get("bad_recordings", []))
    if quarantine:
        results["quarantined_recordings"] = int(sum(_count_quarantined(_read_json(q)) for q in quarantine))
    results["artifacts"] = artifact_hashes
    results.update(extra or {})
    results = _finite(results)
    atomic.write_json(out_path, results)
    logger.info("wrote %s", out_path)
    return results


def _finite(obj: Any) -> Any:
    """NaN / inf become None, so the file is strict JSON (e.g. a KL on zero >= 10-vote rows)."""
    if isinstance(obj, float) or isinstance(obj, np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _count_quarantined(record: Any) -> int:
    if isinstance(record, list):
        return len(record)
    if isinstance(record, dict):
        for key in ("bad_recordings", "quarantined", "windows"):
            if isinstance(record.get(key), list):
                return len(record[key])
            if isinstance(record.get(key), int):
                return record[key]
    return 0


def _run_wall_s(status_path: str | os.PathLike | None) -> float | None:
    if status_path is None or not Path(status_path).is_file():
        return None
    try:
        status = json.loads(Path(status_path).read_text())
    except json.JSONDecodeError:
        return None
    stamps = [v for job in status.get("jobs", {}).values() for k, v in job.items()
              if k in ("started_at", "updated_at") and isinstance(v, (int, float))]
    return float(max(stamps) - min(stamps)) if len(stamps) >= 2 else None


def _best(results: Mapping[str, Any]) -> tuple[str, dict] | None:
    candidates = []
    for name, m in results.get("models", {}).items():
        if "oof" in m:
            candidates.append((name, m["oof"]))
    deployed = _deployed_scores(results.get("ensemble", {}))
    if deployed:
        candidates.append(("ensemble", deployed))
    candidates = [c for c in candidates if isinstance(c[1].get("kl_all"), (int, float))]
    return min(candidates, key=lambda c: c[1]["kl_all"]) if candidates else None


def _deployed_scores(ensemble_metrics: Mapping[str, Any]) -> dict | None:
    """Scores of what ensemble.pth deploys (older metrics only have the stacker's)."""
    inner = ensemble_metrics.get("ensemble", {})
    return inner.get("deployed") or inner.get("stacked")


def _num(value: Any, spec: str = ".4f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) and np.isfinite(value) else "n/a"


def format_summary(results: Mapping[str, Any]) -> str:
    """A short end-of-run summary of measured numbers only (best KL, time, models, outputs)."""
    lines = ["hms run summary"]
    best = _best(results)
    if best is None:
        lines.append("  no out-of-fold scores recorded")
    else:
        name, s = best
        lines.append(f"  best out-of-fold KL: {_num(s['kl_all'])} ({name}); >=10-vote rows: "
                     f"KL {_num(s.get('kl_high_vote'))}, accuracy {_num(s.get('acc_high_vote'), '.3f')} "
                     f"(n={s.get('n_high_vote', 0)})")
    for name, m in sorted(results.get("models", {}).items()):
        oof = m.get("oof", {})
        par = m.get("onnx_parity", {}).get("max_abs_diff")
        lines.append(f"  {name}: {m.get('n_folds', 0)} folds, KL {_num(oof.get('kl_all'))}, "
                     f"train {_num(m.get('training', {}).get('train_time_s', 0.0) / 60, '.1f')} min"
                     + (f", ONNX max|diff| {_num(par, '.1e')}" if par is not None else "")
                     + ("" if m.get("kept_in_ensemble", True) else " (not kept in the ensemble)"))
    ens = results.get("ensemble", {})
    deployed = _deployed_scores(ens)
    if deployed:
        par = ens.get("onnx_parity", {}).get("max_abs_diff")
        inner = ens.get("ensemble", {})
        what = inner.get("deployed_candidate", "stacked")
        members = inner.get("deployed_members") or ens.get("selection", {}).get("kept", [])
        lines.append(f"  ensemble (deployed: {what}, {len(members)} members): "
                     f"KL {_num(deployed.get('kl_all'))}"
                     + (f", ONNX max|diff| {_num(par, '.1e')}" if par is not None else ""))
        if inner.get("deployed_reason"):
            lines.append(f"    why: {inner['deployed_reason']}")
    cal = ens.get("calibration")
    if cal:
        applied = "" if cal.get("applied", True) else " (not applied: it did not lower held-out NLL)"
        lines.append(f"  calibration: T={_num(cal.get('fitted_temperature', cal.get('temperature')), '.3f')}{applied}, soft NLL "
                     f"{_num(cal['before'].get('soft_nll'))} -> {_num(cal['after'].get('soft_nll'))}, "
                     f"ECE {_num(cal['before'].get('ece'))} -> {_num(cal['after'].get('ece'))}")
    lines.extend(format_conformal(ens.get("conformal")))
    lines.extend(format_gap_table(results.get("gap_to_floor")))
    lines.append(f"  training time (sum over folds): {_num(results.get('training_time_s', 0.0) / 60, '.1f')} min"
                 + (f"; run wall time {_num(results['run_wall_s'] / 60, '.1f')} min" if "run_wall_s" in results else ""))
    if "foundation_transfer" in results:
        study = results["foundation_transfer"]
        helps = study.get("pretraining_helps")
        lines.append("  foundation transfer study: "
                     + ("" if helps is None else f"pretraining_helps {str(helps).lower()} ({study.get('encoder', 'hms')} "
                                                 f"encoder, label fraction {study.get('verdict', {}).get('label_fraction', 0):g}); ")
                     + "details in training_results.json")
    outputs = [p for p in results.get("artifacts", {}) if p.endswith((".onnx", "ensemble.pth"))]
    if outputs:
        lines.append("  outputs: " + ", ".join(sorted(outputs)))
    lines.append("  details: training_results.json")
    return "\n".join(lines)


def format_conformal(conformal: Mapping[str, Any] | None) -> list[str]:
    """Lines of the conformal prediction sets: threshold, cross-fitted coverage and set size.

    Parameters
    ----------
    conformal : mapping or None
        ``results["ensemble"]["conformal"]`` (:func:`hms_core.ensemble.conformal.fit_conformal`);
        None (an older results file) gives no lines.
    """
    if not conformal:
        return []
    cross = conformal.get("cross_fitted", {})
    cells = []
    for label, key in (("all rows", "all"), (f">={HIGH_VOTE_THRESHOLD} votes", "high_vote")):
        fig = cross.get(key, {})
        cells.append(f"{label}: coverage {_num(fig.get('coverage'), '.3f')}, mean size "
                     f"{_num(fig.get('mean_set_size'), '.2f')} (n={fig.get('n', 0)})")
    return [f"  conformal sets ({str(conformal.get('method', '')).upper()}, target coverage "
            f"{_num(conformal.get('target_coverage'), '.2f')}: a class is in when p >= "
            f"{_num(conformal.get('probability_cutoff'), '.3f')}), cross-fitted:",
            "    " + "; ".join(cells)]


def _pct(value: Any) -> str:
    return f"{value:.0%}" if isinstance(value, (int, float)) and np.isfinite(value) else "n/a"


def format_gap_table(gap: Mapping[str, Any] | None) -> list[str]:
    """Lines of the gap table (:func:`gap_table`): model, prior and floor KL, share closed.

    Parameters
    ----------
    gap : mapping or None
        ``results["gap_to_floor"]``; None (an older results file) gives no lines.
    """
    if not gap or not gap.get("table"):
        return []
    lines = ["  how far from the floor (KL; closed = (prior - model) / (prior - floor)):",
             f"    {'':<16}{'all rows: model':>16}{'prior':>8}{'floor':>8}{'closed':>8}"
             f"   >={HIGH_VOTE_THRESHOLD} votes: model{'prior':>8}{'floor':>8}{'closed':>8}"]
    for name, entry in gap["table"].items():
        cells = []
        for subset in GAP_SUBSETS:
            e = entry.get(subset, {})
            cells.append(f"{_num(e.get('model_kl')):>8}{_num(e.get('prior_kl')):>8}"
                         f"{_num(e.get('floor_kl')):>8}{_pct(e.get('gap_closed')):>8}")
        lines.append(f"    {name:<16}{cells[0]:>40}{'':>11}{cells[1]:>32}")
    if gap.get("answer_key") is None:
        lines.append(f"    {gap.get('note', NO_ANSWER_KEY)}")
    return lines
