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
import torch

from hms_core import atomic, metrics
from hms_core.contract import LOGP_COLUMNS, LOGP_SWAP_COLUMNS, VOTE_COLUMNS, group_by_model, parse_fold_name
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


def _score_oofs(paths: Sequence[str | os.PathLike]) -> dict[str, Any]:
    from hms_core.ensemble.oof import read_member_oof

    oof = read_member_oof(paths, member=parse_fold_name(paths[0])[0])
    votes = oof[list(VOTE_COLUMNS)].to_numpy(np.float64)
    probs = np.exp(oof[list(LOGP_COLUMNS)].to_numpy(np.float64))
    tta = 0.5 * (probs + np.exp(oof[list(LOGP_SWAP_COLUMNS)].to_numpy(np.float64)))
    scores = metrics.score_predictions(votes, probs)
    scores["tta"] = metrics.score_predictions(votes, tta)
    return scores


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
    for name, files in sorted(by_model.items()):
        entry: dict[str, Any] = {"n_folds": len(files["oofs"])}
        if files["oofs"]:
            entry["oof"] = _score_oofs(sorted(files["oofs"], key=str))
        if files["weights"]:
            entry["training"] = _training_record(sorted(files["weights"], key=str))
        if name in parity_by_name:
            entry["onnx_parity"] = parity_by_name[name]
        deployed_members = (ens.get("ensemble", {}).get("deployed_members")
                            or ens.get("selection", {}).get("kept", []))
        entry["kept_in_ensemble"] = name in deployed_members
        models[name] = entry

    ensemble = {k: ens[k] for k in ("ensemble", "calibration", "selection", "bma", "meta_learner") if k in ens}
    if "ensemble" in parity_by_name:
        ensemble["onnx_parity"] = parity_by_name["ensemble"]

    listed = [*oofs, *weights, ensemble_metrics, *parity, *artifacts, *quarantine]
    listed += [p for p in (transfer, validation) if p is not None]
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
    lines.append(f"  training time (sum over folds): {_num(results.get('training_time_s', 0.0) / 60, '.1f')} min"
                 + (f"; run wall time {_num(results['run_wall_s'] / 60, '.1f')} min" if "run_wall_s" in results else ""))
    if "foundation_transfer" in results:
        lines.append("  foundation transfer study: included in training_results.json")
    outputs = [p for p in results.get("artifacts", {}) if p.endswith((".onnx", "ensemble.pth"))]
    if outputs:
        lines.append("  outputs: " + ", ".join(sorted(outputs)))
    lines.append("  details: training_results.json")
    return "\n".join(lines)
