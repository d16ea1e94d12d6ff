"""Training length from the mean cross-validation learning curve.

Picking the best epoch per fold on a small inner split is noisy (on the demo set ~40
windows of 4-5 patients) and costs the inner patients' windows. The usual remedy, used here:
train every fold for a fixed length on all its training patients (``select_best: false``),
read the per-epoch score of the held-out fold that every ``train_fold`` weights file keeps
in its ``history`` (``oof_kl``), average the curves over the folds, and take the length
where the mean curve is lowest as the recipe's length (``training.steps``).

Caveat: the chosen length is one number picked on all folds' held-out scores, so the
out-of-fold score *at* that length is slightly optimistic (each fold's held-out windows had
a say in it). One scalar chosen over a handful of candidates leaks far less than a per-fold
best epoch, and the length is then fixed for every later run, but a leak-free estimate
would need the length chosen on inner folds of each training fold.

With a decaying learning rate, epoch ``e`` of a long run is not the same model as the last
epoch of a run ``e`` epochs long (the rate is still high there). The mean curve of a long
run shows where held-out error stops falling; confirm the chosen length by training at it.

Usage
-----
``hms curves models/final/resnet1d_gru_fold*.pth`` prints one JSON line:
``{"model", "metric", "n_folds", "best_epochs", "best_steps", "best_value", "last_value",
"curve": [{"epochs", "steps", "mean", "std", "n_folds"}, ...]}``.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any, Literal, Sequence

import numpy as np
import pandas as pd
import torch

from hms_core.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


def read_histories(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """The per-epoch history of every ``train_fold`` weights file in ``paths``.

    Parameters
    ----------
    paths : sequence of path
        Weights files (``models/final/<model>_fold<k>.pth``).

    Returns
    -------
    DataFrame
        One row per file and epoch: ``file, model, epoch`` (0-based), ``epochs`` (epochs
        done at its end, 1-based), ``step`` (optimiser steps done at its end; missing in
        files written before the history recorded it), and every history key.

    Raises
    ------
    DataError
        A file cannot be read or holds no history.
    """
    frames = []
    for path in paths:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # any unpickling failure means a bad file
            raise DataError(path, f"cannot read weights file: {exc}") from exc
        history = payload.get("history") if isinstance(payload, dict) else None
        if not history:
            raise DataError(path, "no per-epoch history (not a train_fold weights file?)")
        frame = pd.DataFrame(history)
        frame.insert(0, "file", str(path))
        frame.insert(1, "model", str(payload.get("model_name", "?")))
        frame["epochs"] = frame["epoch"].astype(int) + 1
        frames.append(frame)
    if not frames:
        raise ConfigError("curves: no weights file given")
    return pd.concat(frames, ignore_index=True)


def mean_curve(histories: pd.DataFrame, metric: str = "oof_kl") -> pd.DataFrame:
    """Mean and spread of ``metric`` over the files, per number of epochs done.

    Returns
    -------
    DataFrame
        ``epochs, steps`` (mean optimiser steps done; NaN without a recorded step),
        ``mean, std`` (over the files, ddof 0) and ``n_folds``; only epochs every file
        reached, so the mean is over the same folds throughout.
    """
    if metric not in histories.columns:
        keys = sorted(c for c in histories.columns if c not in ("file", "model"))
        raise ConfigError(f"curves: metric {metric!r} is not in the history; have {keys}")
    n_files = histories["file"].nunique()
    steps = histories["step"] if "step" in histories.columns else np.nan
    grouped = (histories.assign(steps=steps).groupby("epochs")
               .agg(steps=("steps", "mean"), mean=(metric, "mean"),
                    std=(metric, lambda v: float(np.std(v))), n_folds=(metric, "count"))
               .reset_index())
    return grouped[grouped["n_folds"] == n_files].reset_index(drop=True)


def best_length(paths: Sequence[str | os.PathLike], metric: str = "oof_kl",
                mode: Literal["min", "max"] = "min") -> dict[str, Any]:
    """The training length where the mean cross-validation curve of ``metric`` is best.

    Parameters
    ----------
    paths : sequence of path
        The weights files of one model's folds (one run, one recipe).
    metric : str, default "oof_kl"
        History key (``oof_kl``: held-out fold's Kaggle KL; ``oof_kl_high_vote``, ...).
    mode : {"min", "max"}, default "min"

    Returns
    -------
    dict
        ``model, metric, n_folds, best_epochs`` (epochs done, 1-based), ``best_steps``
        (mean optimiser steps done then, int; None without recorded steps),
        ``steps_per_epoch`` (mean over the first epoch), ``best_value``, ``last_value``
        (mean at the last epoch every fold reached) and the ``curve`` as records.
    """
    histories = read_histories(paths)
    models = sorted(histories["model"].unique())
    if len(models) != 1:
        raise ConfigError(f"curves: the files hold several models ({', '.join(models)}); give "
                          "one model's folds")
    curve = mean_curve(histories, metric)
    if curve.empty:
        raise ConfigError("curves: no epoch is in every file's history")
    best = int(curve["mean"].idxmin() if mode == "min" else curve["mean"].idxmax())
    row = curve.iloc[best]
    steps = None if math.isnan(row["steps"]) else int(round(row["steps"]))
    first = curve.iloc[0]["steps"]
    result = {
        "model": models[0], "metric": metric, "n_folds": int(histories["file"].nunique()),
        "best_epochs": int(row["epochs"]), "best_steps": steps,
        "steps_per_epoch": None if math.isnan(first) else float(first),
        "best_value": float(row["mean"]), "last_value": float(curve.iloc[-1]["mean"]),
        "curve": [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                   for k, v in r.items()} for r in curve.to_dict("records")],
    }
    logger.info("%s: mean %s is best after %d epochs (%s steps): %.4f (last epoch %.4f)",
                result["model"], metric, result["best_epochs"], steps, result["best_value"],
                result["last_value"])
    return result
