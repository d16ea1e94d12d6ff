"""Optuna search of one model's hyperparameters on inner folds of one outer fold's training data.

``tune_model`` is what the Snakemake rule ``tune`` (``rules/tune.smk``) calls, once per model
and outer fold when ``tuning.enabled`` is true. The outer fold's validation windows are never
read: the study sees only the windows of the other folds (the ones ``train_fold`` will train
on), splits their patients into ``tuning.inner_folds`` patient-grouped inner folds
(:func:`hms_core.data.folds.make_folds`) and scores each trial by the mean Kaggle KL of
:func:`hms_core.train.fold.train_fold` over the inner folds. So every fold's out-of-fold score
stays an honest estimate (nested cross-validation). Trial 0 is the recipe as configured (the
values the config gives the searched keys), so the best found is never worse than it on the
inner folds.

The study lives in SQLite (``models/tuning/<model>_fold<k>.db``, not a rule output, so
Snakemake never deletes it) and is loaded when it exists: a killed search resumes with the
trials it finished, re-runs the one that was running (from its training checkpoints) and
stops at ``tuning.n_trials`` finished trials or ``tuning.timeout_min`` minutes in all. The
study name carries a digest of the space, the configs and the data, so changing any of them
starts a fresh study in the same file.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from hms_core import atomic
from hms_core.config import from_mapping
from hms_core.data.folds import make_folds
from hms_core.errors import ConfigError, DataError, HMSError
from hms_core.hashing import sha256_file
from hms_core.status import update_status
from hms_core.store import open_window_source
from hms_core.train.checkpoint import make_run_key
from hms_core.train.data import RowSubset
from hms_core.train.fingerprint import source_fingerprint
from hms_core.train.fold import fold_of_windows, resolve_model_config, train_fold
from hms_core.tune.config import TuningConfig
from hms_core.tune.space import apply_params, configured_values, resolve_space, suggest_params

logger = logging.getLogger(__name__)

MEDIAN_STARTUP_TRIALS = 5  # the median pruner lets the first trials run every inner fold
INNER_FOLDS_NAME = "inner_folds.csv"


def inner_training_source(source: Any, folds_csv: str | os.PathLike, fold: int) -> RowSubset:
    """The windows ``train_fold`` trains on for outer ``fold``: every fold but ``fold``.

    Raises
    ------
    DataError
        ``fold`` leaves no training or no validation window.
    """
    index = source.index.reset_index(drop=True)
    window_fold = fold_of_windows(index, folds_csv)
    train_rows = np.flatnonzero(window_fold != fold)
    if len(train_rows) == 0 or len(train_rows) == len(index):
        raise DataError(folds_csv, f"fold {fold} leaves {len(train_rows)} training and "
                                   f"{len(index) - len(train_rows)} validation windows; both must be > 0")
    return RowSubset(source, train_rows)


def inner_folds(index: pd.DataFrame, n_folds: int, seed: int) -> pd.DataFrame:
    """Patient-grouped inner folds of the training windows ``index`` (``make_folds``' columns)."""
    n_patients = index["patient_id"].nunique()
    if n_patients < n_folds:
        raise ConfigError(f"tuning.inner_folds: {n_folds} inner folds need at least {n_folds} "
                          f"training patients, the outer fold has {n_patients}")
    return make_folds(index, n_folds, seed)


def _sampler_and_pruner(tuning: TuningConfig, n_previous: int) -> tuple[Any, Any]:
    import optuna

    # Offset by the trials already in the study: a resumed search must not draw the same
    # start-up (random) points again.
    sampler = optuna.samplers.TPESampler(seed=int(tuning.seed) + n_previous)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS)
              if tuning.pruner == "median" else optuna.pruners.NopPruner())
    return sampler, pruner


def _requeue_stale(study: Any, storage: Any) -> int:
    """Trials left RUNNING by a killed job: mark them failed and queue their parameters again.

    Only one job owns a study (one Snakemake job per model and fold), so at start-up every
    running trial is stale. Its re-run finds the training checkpoints of the killed one.
    """
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in stale:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        study.enqueue_trial(dict(trial.params), user_attrs={"requeued_from": trial.number})
        logger.warning("trial %d was left running by a stopped job: queued again", trial.number)
    return len(stale)


def _budget(study: Any, tuning: TuningConfig) -> tuple[int, float | None]:
    """Trials still to run and seconds left, counting the finished trials of earlier runs."""
    from optuna.trial import TrialState

    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                         TrialState.FAIL))
    done = sum(t.state != TrialState.FAIL for t in finished)
    spent = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in finished
                if t.datetime_complete is not None and t.datetime_start is not None)
    left_s = None if tuning.timeout_min is None else float(tuning.timeout_min) * 60.0 - spent
    return max(0, int(tuning.n_trials) - done), left_s


def tune_model(store_paths: Any, folds_csv: str | os.PathLike, model_name: str,
               cfg: Mapping[str, Any], *, fold: int, out_params: str | os.PathLike,
               study_db: str | os.PathLike, work_dir: str | os.PathLike,
               foundation_path: str | os.PathLike | None = None,
               status_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Search ``model_name``'s hyperparameters for outer ``fold``; write the best as JSON.

    Parameters
    ----------
    store_paths : sequence of path (or a window source)
        The batch stores; a ``WindowStore``-like object is used as is.
    folds_csv : path
        ``data/folds.csv`` (``label_id, ..., fold``).
    model_name : str
        Registered model with an entry in ``cfg["models"]``.
    cfg : mapping
        ``training``, ``models`` (as for ``train_fold``) and ``tuning``
        (:class:`~hms_core.tune.config.TuningConfig`).
    fold : int
        The outer validation fold: never read; the search runs on the other folds' windows.
    out_params : path
        ``models/tuning/<model>_fold<k>_params.json`` (atomic): ``params`` (dotted keys,
        applied by :func:`hms_core.tune.space.apply_tuned_params`), ``best_value`` (mean
        inner-fold KL), ``best_inner_kl`` (per inner fold), ``n_trials`` (finished: complete
        + pruned), ``n_complete``, ``n_pruned``, ``n_failed``, ``space``, ``seconds`` and the
        study's name and file.
    study_db : path
        The SQLite file of the Optuna study (created, or resumed when it exists).
    work_dir : path
        Scratch space: the inner folds file and each running trial's training checkpoints
        (removed when the trial ends).
    foundation_path : path, optional
        Pretrained foundation encoder for models configured with ``foundation_mode``.
    status_path : path, optional
        ``status/run.json``; the job ``tune_<model>_fold<k>`` reports trials and best value.

    Returns
    -------
    dict
        What was written to ``out_params``.

    Raises
    ------
    HMSError
        No trial completed (every one was pruned or failed), or a config or data error.
    """
    import optuna
    from optuna.trial import TrialState

    tuning = from_mapping(TuningConfig, cfg.get("tuning"), "tuning")
    training, model_kwargs, _ = resolve_model_config(cfg, model_name)
    space = resolve_space(tuning, model_name, training, model_kwargs)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)

    # -- the outer fold's training windows only, split into patient-grouped inner folds
    source = inner_training_source(open_window_source(store_paths), folds_csv, int(fold))
    folds = inner_folds(source.index, int(tuning.inner_folds), int(tuning.seed))
    inner_csv = work_dir / INNER_FOLDS_NAME
    with atomic.atomic_path(inner_csv) as tmp:
        folds.to_csv(tmp, index=False)

    # -- the study: one per model, fold and setup, resumed when it exists
    space_json = {k: dataclasses.asdict(r) for k, r in space.items()}
    setup = make_run_key("tune", model_name, int(fold), space_json, dict(cfg.get("training") or {}),
                         dict(cfg["models"][model_name] or {}), int(tuning.inner_folds),
                         int(tuning.seed), tuning.pruner, sha256_file(inner_csv),
                         source_fingerprint(source),  # windows' contents, votes included
                         None if foundation_path is None else sha256_file(foundation_path))
    study_name = f"{model_name}_fold{int(fold)}_{setup[:12]}"
    Path(study_db).parent.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{Path(study_db).resolve()}")
    try:
        n_previous = len(storage.get_all_trials(storage.get_study_id_from_name(study_name),
                                                deepcopy=False))
    except KeyError:
        n_previous = 0
    sampler, pruner = _sampler_and_pruner(tuning, n_previous)
    study = optuna.create_study(storage=storage, study_name=study_name, direction="minimize",
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    requeued = _requeue_stale(study, storage)
    if n_previous == 0:  # trial 0: the recipe as configured
        start = configured_values(cfg, model_name, space)
        if start:
            study.enqueue_trial(start, user_attrs={"configured": True})
    n_left, seconds_left = _budget(study, tuning)
    job = f"tune_{model_name}_fold{int(fold)}"
    logger.info("%s: study %s in %s, %d trials there (%d re-queued), %d to run, %s; "
                "%d training windows in %d inner folds; space %s", model_name, study_name, study_db,
                n_previous, requeued, n_left, "no time limit" if seconds_left is None else
                f"{seconds_left:.0f} s left", len(source), tuning.inner_folds, space_json)

    def objective(trial: optuna.Trial) -> float:
        params = suggest_params(trial, space)
        trial_cfg = apply_params(cfg, model_name, params)
        # Named by the parameters, so a re-queued trial resumes its checkpoints.
        trial_dir = work_dir / f"trial_{make_run_key(params)}"
        kls: list[float] = []
        for inner in range(int(tuning.inner_folds)):
            metrics = train_fold(source, inner_csv, model_name, inner, trial_cfg,
                                 weights_out=trial_dir / f"inner{inner}.pth",
                                 oof_out=trial_dir / f"inner{inner}.parquet",
                                 checkpoint_dir=trial_dir / f"checkpoints{inner}",
                                 foundation_path=foundation_path)
            kls.append(float(metrics["kl_all"]))
            trial.set_user_attr("inner_kl", kls)
            trial.report(float(np.mean(kls)), inner)
            if trial.should_prune():
                shutil.rmtree(trial_dir, ignore_errors=True)
                raise optuna.TrialPruned(f"mean inner KL {np.mean(kls):.4f} after {inner + 1} folds")
        shutil.rmtree(trial_dir, ignore_errors=True)
        logger.info("trial %d: mean inner KL %.4f (%s) with %s", trial.number, np.mean(kls),
                    ", ".join(f"{k:.4f}" for k in kls), params)
        return float(np.mean(kls))

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        best = min(t.value for t in complete) if complete else None
        update_status(status_path, job, stage="tune", model=model_name, fold=int(fold),
                      trial=done, trials=int(tuning.n_trials), best_kl=best)

    t0 = datetime.datetime.now()
    if n_left > 0 and (seconds_left is None or seconds_left > 0):
        study.optimize(objective, n_trials=n_left, timeout=seconds_left, callbacks=[report])

    trials = study.get_trials(deepcopy=False)
    counts = {state: sum(t.state == state for t in trials)
              for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    if counts[TrialState.COMPLETE] == 0:
        raise HMSError(f"tuning: no trial of {model_name} fold {fold} completed "
                       f"({counts[TrialState.PRUNED]} pruned, {counts[TrialState.FAIL]} failed); "
                       f"see {study_db} (study {study_name})")
    best = study.best_trial
    out = {
        "model": model_name, "fold": int(fold), "params": dict(best.params),
        "best_value": float(best.value), "best_inner_kl": best.user_attrs.get("inner_kl"),
        "best_trial": best.number, "metric": "mean Kaggle KL over the inner folds",
        "n_trials": counts[TrialState.COMPLETE] + counts[TrialState.PRUNED],
        "n_complete": counts[TrialState.COMPLETE], "n_pruned": counts[TrialState.PRUNED],
        "n_failed": counts[TrialState.FAIL], "space": space_json,
        "inner_folds": int(tuning.inner_folds), "seed": int(tuning.seed), "pruner": tuning.pruner,
        "n_training_windows": len(source), "study_name": study_name, "study_db": str(study_db),
        "seconds": (datetime.datetime.now() - t0).total_seconds(),
    }
    atomic.write_json(out_params, out)
    update_status(status_path, job, stage="tune", model=model_name, fold=int(fold),
                  trial=out["n_trials"], trials=int(tuning.n_trials), best_kl=out["best_value"],
                  state="done")
    logger.info("%s fold %d: best mean inner KL %.4f (trial %d of %d) with %s", model_name, fold,
                out["best_value"], best.number, out["n_trials"], out["params"])
    return out
