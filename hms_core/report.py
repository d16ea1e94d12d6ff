"""Figures for ``snakemake --report``: one PNG per function, each written atomically.

All figures come from the run's artifacts: weights files (training history), out-of-fold
parquets (``logp_<class>`` log-probabilities and vote counts) and the window store index.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from hms_core import atomic  # noqa: E402
from hms_core.contract import (CLASSES, HIGH_VOTE_THRESHOLD, LOGP_COLUMNS, LOGP_SWAP_COLUMNS,  # noqa: E402
                               VOTE_COLUMNS, parse_fold_name, votes_to_targets)
from hms_core.errors import DataError  # noqa: E402

logger = logging.getLogger(__name__)
_PROB_FLOOR = 1e-15  # Kaggle's clipping of predictions


def _save(fig: plt.Figure, out_png: str | os.PathLike) -> Path:
    with atomic.atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(out_png)


def read_oof(oof_paths: Sequence[str | os.PathLike]) -> dict[str, pd.DataFrame]:
    """Out-of-fold parquets grouped by model (file name ``<model>_fold<k>.parquet``).

    Raises
    ------
    DataError
        A file lacks the vote or ``logp_<class>`` columns.
    """
    frames: dict[str, list[pd.DataFrame]] = {}
    for path in map(Path, oof_paths):
        df = pd.read_parquet(path)
        missing = [c for c in (*VOTE_COLUMNS, *LOGP_COLUMNS) if c not in df.columns]
        if missing:
            raise DataError(path, f"out-of-fold file lacks columns {missing}")
        frames.setdefault(parse_fold_name(path)[0], []).append(df)
    return {model: pd.concat(dfs, ignore_index=True) for model, dfs in sorted(frames.items())}


def plot_learning_curves(weights_paths: Sequence[str | os.PathLike], out_png: str | os.PathLike) -> Path:
    """Training loss and validation KL per epoch, one panel per model, one colour per fold.

    Parameters
    ----------
    weights_paths : sequence of path-like
        ``models/final/<model>_fold<k>.pth`` files whose ``history`` lists per-epoch dicts
        (``epoch``, ``train_loss``, ``val_kl`` on the inner split that picks the epoch,
        ``oof_kl`` on the held-out fold).
    out_png : path-like
        Figure to write.
    """
    import torch

    curves: dict[str, list[tuple[int | None, list[dict]]]] = {}
    for path in map(Path, weights_paths):
        state = torch.load(path, map_location="cpu", weights_only=True)
        history = state.get("history") if isinstance(state, dict) else None
        if not history:
            raise DataError(path, "weights file has no training history")
        model = state.get("model_name") or parse_fold_name(path)[0]
        curves.setdefault(model, []).append((parse_fold_name(path)[1], history))
    if not curves:
        raise DataError(out_png, "no weights files given for the learning curves")
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.6), squeeze=False)
    for ax, (model, runs) in zip(axes[0], sorted(curves.items())):
        for i, (fold, history) in enumerate(sorted(runs, key=lambda r: (r[0] is None, r[0]))):
            color = f"C{i % 10}"
            epochs = [h.get("epoch", j) for j, h in enumerate(history)]
            for key, style in (("train_loss", "-"), ("val_kl", "--"), ("oof_kl", ":")):
                values = [h.get(key, np.nan) for h in history]
                if not np.all(np.isnan(values)):
                    ax.plot(epochs, values, style, color=color, marker=".",
                            label=f"fold {fold} {key.replace('_', ' ')}")
        ax.set(title=model, xlabel="epoch", ylabel="KL divergence (nats)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Learning curves (solid: training loss, dashed: inner-validation KL, "
                 "dotted: held-out fold KL)", fontsize=9)
    return _save(fig, out_png)


def confusion_counts(votes: np.ndarray, scores: np.ndarray, *, min_votes: int = HIGH_VOTE_THRESHOLD) -> np.ndarray:
    """``(6, 6)`` counts of (vote majority, argmax of ``scores``) on rows with >= ``min_votes`` votes."""
    votes = np.asarray(votes, dtype=np.float64)
    high = votes.sum(axis=1) >= min_votes
    counts = np.zeros((len(CLASSES), len(CLASSES)), dtype=np.int64)
    np.add.at(counts, (votes[high].argmax(axis=1), np.asarray(scores)[high].argmax(axis=1)), 1)
    return counts


def plot_confusion_matrix(oof: Mapping[str, pd.DataFrame], out_png: str | os.PathLike, *,
                          min_votes: int = HIGH_VOTE_THRESHOLD) -> Path:
    """Row-normalised confusion matrix (vote majority vs argmax), rows with >= ``min_votes``.

    Parameters
    ----------
    oof : mapping
        Model name -> out-of-fold frame (:func:`read_oof`); one panel per model.
    """
    fig, axes = plt.subplots(1, len(oof), figsize=(4.8 * len(oof), 4.4), squeeze=False,
                             layout="constrained")
    n = len(CLASSES)
    for ax, (model, df) in zip(axes[0], oof.items()):
        counts = confusion_counts(df[list(VOTE_COLUMNS)].to_numpy(), df[list(LOGP_COLUMNS)].to_numpy(),
                                  min_votes=min_votes)
        share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
        accuracy = np.trace(counts) / counts.sum() if counts.sum() else float("nan")
        ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="vote majority",
               title=f"{model}: accuracy {accuracy:.3f} (n={counts.sum()})")
        ax.set_xticklabels(CLASSES, rotation=45, ha="right")
        ax.set_yticklabels(CLASSES)
    fig.suptitle(f"Out-of-fold confusion on rows with >= {min_votes} votes")
    return _save(fig, out_png)


def plot_reliability(probs_before: np.ndarray, probs_after: np.ndarray, targets: np.ndarray,
                     out_png: str | os.PathLike, *, n_bins: int = 10,
                     title: str = "Reliability before and after temperature scaling") -> Path:
    """Reliability diagram: accuracy of the top class per confidence bin, before and after.

    Parameters
    ----------
    probs_before, probs_after : np.ndarray
        ``(n_rows, 6)`` probabilities without and with temperature scaling.
    targets : np.ndarray
        ``(n_rows, 6)`` vote counts or vote distributions; a prediction is correct when
        its argmax is the vote majority (as in :func:`hms_core.metrics.expected_calibration_error`).
    """
    from hms_core.metrics import expected_calibration_error

    targets = votes_to_targets(targets)
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    edges = np.linspace(0, 1, n_bins + 1)
    for probs, label, color in ((probs_before, "before", "C3"), (probs_after, "after", "C0")):
        probs = np.asarray(probs, dtype=np.float64)
        if probs.shape != targets.shape:
            raise ValueError(f"{label}: probabilities {probs.shape} do not match targets {targets.shape}")
        confidence = probs.max(axis=1)
        correct = probs.argmax(axis=1) == targets.argmax(axis=1)
        bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
        centres, accuracy = [], []
        for b in range(n_bins):
            if (bins == b).any():
                centres.append(confidence[bins == b].mean())
                accuracy.append(correct[bins == b].mean())
        ece = expected_calibration_error(targets, probs, n_bins=n_bins)
        ax.plot(centres, accuracy, "o-", color=color, label=f"{label} (ECE {ece:.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1), xticks=edges[::2], xlabel="confidence (top-class probability)",
           ylabel="accuracy against vote majority", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_png)


def per_class_kl(votes: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Each class's share of Kaggle's KL: ``mean_rows y_c log(y_c / p_c)``, shape ``(6,)``.

    The shares sum to the KL score; one class may be negative.
    """
    y = votes_to_targets(votes)
    p = np.clip(np.asarray(probs, dtype=np.float64), _PROB_FLOOR, 1 - _PROB_FLOOR)
    with np.errstate(divide="ignore", invalid="ignore"):
        cells = np.where(y > 0, y * np.log(y / p), 0.0)
    return cells.mean(axis=0)


def plot_per_class_kl(oof: Mapping[str, pd.DataFrame], out_png: str | os.PathLike) -> Path:
    """Grouped bars of each class's share of the out-of-fold KL, one bar per model."""
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    width = 0.8 / max(len(oof), 1)
    x = np.arange(len(CLASSES))
    for i, (model, df) in enumerate(oof.items()):
        shares = per_class_kl(df[list(VOTE_COLUMNS)].to_numpy(),
                              np.exp(df[list(LOGP_COLUMNS)].to_numpy(dtype=np.float64)))
        ax.bar(x + (i - (len(oof) - 1) / 2) * width, shares, width,
               label=f"{model} (KL {shares.sum():.3f})")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set(xticks=x, ylabel="share of KL (nats)", title="Out-of-fold KL by class (all rows)")
    ax.set_xticklabels(CLASSES)
    ax.legend(fontsize=8)
    return _save(fig, out_png)


def plot_gap_to_floor(gap: Mapping[str, Any], out_png: str | os.PathLike) -> Path:
    """The gap table as bars: train prior, model and answer-key floor KL, and the share closed.

    One panel for all rows, one for rows with >= 10 votes; one bar group per model and the
    deployed ensemble. Without an answer key the floor is not drawn and the share reads n/a.

    Parameters
    ----------
    gap : mapping
        ``training_results.json["gap_to_floor"]`` (:func:`hms_core.results.gap_table`).
    out_png : path-like
        Figure to write.
    """
    table = gap.get("table") or {}
    if not table:
        raise DataError(out_png, "the results file has an empty gap table")
    names = list(table)
    y = np.arange(len(names))[::-1]
    subsets = (("all", "all rows"), ("high_vote", f"rows with >= {HIGH_VOTE_THRESHOLD} votes"))
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.6 * len(names) + 1.8), sharey=True, squeeze=False)

    def num(v: Any) -> float:
        return float(v) if isinstance(v, (int, float)) else np.nan

    for ax, (subset, title) in zip(axes[0], subsets):
        rows = [table[n].get(subset, {}) for n in names]
        prior = np.array([num(r.get("prior_kl")) for r in rows])
        model = np.array([num(r.get("model_kl")) for r in rows])
        floor = np.array([num(r.get("floor_kl")) for r in rows])
        ax.barh(y, prior, height=0.7, color="lightgrey", label="train prior")
        ax.barh(y, model, height=0.45, color="C0", label="model (OOF)")
        if np.isfinite(floor).any():
            ax.barh(y, floor, height=0.7, color="none", edgecolor="C2", hatch="///",
                    label="answer-key floor")
        for yi, r, p in zip(y, rows, prior):
            share = r.get("gap_closed")
            text = f"{share:.0%} closed" if isinstance(share, (int, float)) else "closed: n/a"
            ax.text((p if np.isfinite(p) else 0) * 1.01, yi, text, va="center", fontsize=8)
        n = max((int(r.get("n_rows", 0)) for r in rows), default=0)
        ax.set(title=f"{title} (n={n})", xlabel="Kaggle KL (nats)",
               xlim=(0, 1.25 * max(np.nanmax(np.r_[prior, model, 0.1]), 0.1)))
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(y)
    axes[0][0].set_yticklabels(names)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, ncol=3, loc="lower center", bbox_to_anchor=(0.5, -0.08))
    subtitle = ("share closed = (prior - model) / (prior - floor)" if gap.get("answer_key")
                else "no answer key (not synthetic data): floor and share unknown")
    fig.suptitle(f"How far from the floor: {subtitle}", fontsize=9)
    return _save(fig, out_png)


def ica_components_removed(value: Any) -> tuple[int, list[str]]:
    """Number of ICA components removed and their reasons, from an index ``ica_removed`` cell.

    Accepts the JSON text (or object) of a list of removed components (``{component,
    reasons}`` dicts or indices), of the ICA info dict with a ``removed`` list, or a count.
    """
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else []
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return 0, []
    if isinstance(value, dict):
        value = value.get("removed", [])
    if isinstance(value, (int, np.integer)):
        return int(value), []
    reasons = [r for item in value if isinstance(item, dict) for r in item.get("reasons", [])]
    return len(value), reasons


def ica_removal_table(index: pd.DataFrame) -> pd.DataFrame:
    """Per recording, which ICA components were removed and why.

    Parameters
    ----------
    index : pd.DataFrame
        The window store index with ``eeg_id`` and ``ica_removed`` (JSON text), optionally
        ``ica_status``.

    Returns
    -------
    pd.DataFrame
        ``eeg_id, ica_status, labeler, component, why``: one row per removed component, and
        one row with component -1 for a recording with none removed. ``why`` is the ICLabel
        class and its probability (``eye p=0.93``) or the rules matched and their scores.
    """
    missing = [c for c in ("eeg_id", "ica_removed") if c not in index.columns]
    if missing:
        raise DataError("<window index>", f"lacks columns {missing}")
    per_recording = index.drop_duplicates("eeg_id")
    statuses = per_recording["ica_status"] if "ica_status" in per_recording else [""] * len(per_recording)
    rows = []
    for eeg_id, cell, status in zip(per_recording["eeg_id"], per_recording["ica_removed"], statuses):
        removed = json.loads(cell) if isinstance(cell, str) and cell.strip() else cell
        removed = removed.get("removed", []) if isinstance(removed, dict) else removed
        removed = removed if isinstance(removed, list) else []  # a bare count (old stores): no detail
        base = {"eeg_id": int(eeg_id), "ica_status": status}
        if not removed:
            rows.append({**base, "labeler": "", "component": -1, "why": ""})
        for item in removed:
            item = item if isinstance(item, dict) else {"component": item}
            rows.append({**base, "labeler": item.get("labeler", ""), "component": int(item["component"]),
                         "why": _removal_reason(item)})
    return pd.DataFrame(rows, columns=["eeg_id", "ica_status", "labeler", "component", "why"])


def _removal_reason(item: Mapping[str, Any]) -> str:
    if "class" in item:
        return f"{item['class']} p={item['probability']:.2f}"
    scores = {k: v for k, v in item.items()
              if k not in ("component", "reasons", "strength", "labeler") and isinstance(v, (int, float))}
    detail = ", ".join(f"{k} {v:.2f}" for k, v in scores.items())
    return "+".join(item.get("reasons", [])) + (f" ({detail})" if detail else "")


def write_ica_removal_table(index: pd.DataFrame, out_csv: str | os.PathLike) -> Path:
    """:func:`ica_removal_table` written atomically as CSV."""
    atomic.write_text(out_csv, ica_removal_table(index).to_csv(index=False))
    return Path(out_csv)


def plot_preprocessing_summary(index: pd.DataFrame, out_png: str | os.PathLike) -> Path:
    """NaN fraction per window and ICA components removed per recording.

    Parameters
    ----------
    index : pd.DataFrame
        The window store index (``WindowStore(...).index``) with columns ``eeg_id``,
        ``nan_fraction`` (0-1) and ``ica_removed`` (JSON text).
    """
    missing = [c for c in ("eeg_id", "nan_fraction", "ica_removed") if c not in index.columns]
    if missing:
        raise DataError(out_png, f"window index lacks columns {missing}")
    per_recording = index.drop_duplicates("eeg_id")
    parsed = [ica_components_removed(v) for v in per_recording["ica_removed"]]
    counts = np.array([n for n, _ in parsed])
    reasons = Counter(r for _, rs in parsed for r in rs)
    fig, axes = plt.subplots(1, 3 if reasons else 2, figsize=(13 if reasons else 9, 3.6))
    nan_fraction = index["nan_fraction"].to_numpy(dtype=np.float64)
    axes[0].hist(nan_fraction, bins=np.linspace(0, 1, 21), color="C1")
    axes[0].set(xlabel="NaN fraction of the window", ylabel="windows",
                title=f"Missing data ({(nan_fraction > 0).mean():.0%} of windows have NaN)")
    top = int(counts.max()) if len(counts) else 0
    axes[1].bar(np.arange(top + 1), np.bincount(counts, minlength=top + 1), color="C2")
    axes[1].set_xticks(range(top + 1))
    axes[1].set(xlabel="ICA components removed", ylabel="recordings",
                title=f"ICA cleaning ({len(counts)} recordings, mean {counts.mean():.2f})")
    if reasons:
        names = sorted(reasons, key=reasons.get, reverse=True)
        axes[2].bar(names, [reasons[n] for n in names], color="C4")
        axes[2].set(ylabel="components", title="Why components were removed")
    return _save(fig, out_png)


def make_report_figures(workdir: str | os.PathLike, out_dir: str | os.PathLike, *,
                        results_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Make every figure the run's artifacts allow; skip the others with a note.

    Parameters
    ----------
    workdir : path-like
        The run folder.
    out_dir : path-like
        Where the PNGs go.
    results_path : path-like or None
        ``training_results.json`` (its gap table); default ``workdir/training_results.json``.

    Returns
    -------
    dict
        ``figures`` (name -> written PNG path; "ica_removed" -> a CSV, :func:`ica_removal_table`)
        and ``skipped`` (name -> reason).
    """
    workdir, out_dir = Path(workdir), Path(out_dir)
    figures: dict[str, str] = {}
    skipped: dict[str, str] = {}

    def attempt(name: str, make) -> None:
        try:
            figures[name] = str(make(out_dir / f"{name}.png"))
        except (DataError, FileNotFoundError, KeyError, ValueError) as err:
            skipped[name] = str(err)
            logger.warning("report figure %s skipped: %s", name, err)

    weights = sorted(p for p in (workdir / "models" / "final").glob("*_fold*.pth"))
    if weights:
        attempt("learning_curves", lambda out: plot_learning_curves(weights, out))
    else:
        skipped["learning_curves"] = "no models/final/<model>_fold<k>.pth yet"
    oof_paths = sorted((workdir / "oof").glob("*_fold*.parquet"))
    try:
        oof, oof_problem = (read_oof(oof_paths), "") if oof_paths else ({}, "no oof/<model>_fold<k>.parquet yet")
    except DataError as err:
        oof, oof_problem = {}, str(err)
    if oof:
        attempt("confusion_matrix", lambda out: plot_confusion_matrix(oof, out))
        attempt("per_class_kl", lambda out: plot_per_class_kl(oof, out))
        attempt("reliability", lambda out: _blend_reliability(oof, out))
    else:
        for name in ("confusion_matrix", "per_class_kl", "reliability"):
            skipped[name] = oof_problem
    results_path = Path(results_path) if results_path is not None else workdir / "training_results.json"
    gap = json.loads(results_path.read_text()).get("gap_to_floor") if results_path.is_file() else None
    if gap:
        attempt("gap_to_floor", lambda out: plot_gap_to_floor(gap, out))
    else:
        skipped["gap_to_floor"] = f"no gap table in {results_path} yet"
    stores = sorted((workdir / "data" / "processed").glob("batch_*.zarr"))
    if stores:
        attempt("preprocessing", lambda out: plot_preprocessing_summary(_store_index(stores), out))
        attempt("ica_removed", lambda out: write_ica_removal_table(_store_index(stores), out.with_suffix(".csv")))
    else:
        skipped["preprocessing"] = skipped["ica_removed"] = "no data/processed/batch_*.zarr yet"
    return {"figures": figures, "skipped": skipped}


def _store_index(stores: Sequence[Path]) -> pd.DataFrame:
    try:
        from hms_core.store import WindowStore
    except ImportError as err:
        raise DataError(stores[0], f"cannot read the window stores ({err})")
    return WindowStore([str(s) for s in stores]).index


def _blend_reliability(oof: Mapping[str, pd.DataFrame], out_png: Path) -> Path:
    """Reliability of the equal-weight OOF blend of all members, temperature cross-fitted by fold."""
    from hms_core.ensemble.calibration import calibrate
    from hms_core.ensemble.config import CalibrationConfig

    frames = []
    for model, df in oof.items():
        probs = np.exp(df[list(LOGP_COLUMNS)].to_numpy(dtype=np.float64))
        if all(c in df.columns for c in LOGP_SWAP_COLUMNS):
            probs = 0.5 * (probs + np.exp(df[list(LOGP_SWAP_COLUMNS)].to_numpy(dtype=np.float64)))
        frames.append(pd.DataFrame(probs, columns=list(CLASSES)).assign(
            label_id=df["label_id"].to_numpy(), fold=df["fold"].to_numpy(), model=model,
            **{c: df[c].to_numpy() for c in VOTE_COLUMNS}))
    rows = pd.concat(frames).groupby("label_id").mean(numeric_only=True)
    votes = rows[list(VOTE_COLUMNS)].to_numpy()
    before = rows[list(CLASSES)].to_numpy()
    cal = calibrate(np.log(np.clip(before, _PROB_FLOOR, 1.0)), votes, rows["fold"].to_numpy().astype(int),
                    CalibrationConfig())
    return plot_reliability(before, cal["calibrated_probs"], votes, out_png,
                            title=f"OOF blend of {len(oof)} model(s), temperature cross-fitted")
