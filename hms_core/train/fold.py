"""Train one model on one cross-validation fold: weights file + out-of-fold predictions.

``train_fold`` is what the Snakemake rule ``train_fold`` (``rules/train.smk``) calls. It
reads the windows of every batch store, trains on the windows of the other folds with the
engine (two-stage schedule, augmentation, optional vote weighting, progressive resizing),
and predicts the held-out fold both as is and hemisphere-swapped (test-time augmentation).

Config (the mapping passed as ``cfg``): ``cfg["training"]`` (see :class:`TrainingConfig`)
and ``cfg["models"][model_name]``: ``enabled``, optional ``training`` (per-model overrides
of ``cfg["training"]``), optional ``image_sizes`` (progressive resizing), everything else
is a keyword argument of the registered model.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
import typing
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from hms_core import atomic, contract, tracking
from hms_core.config import FLATTEN, check_option, deep_update, from_mapping
from hms_core.errors import ConfigError, DataError
from hms_core.hashing import sha256_file
from hms_core.metrics import kaggle_kl, score_predictions
from hms_core.models.foundation import FoundationMode
from hms_core.models.registry import create_model
from hms_core.store import open_window_source
from hms_core.train import augment as aug
from hms_core.train import distributed
from hms_core.train.checkpoint import make_run_key
from hms_core.data.folds import inner_validation_mask, read_folds
from hms_core.train.data import InMemorySource, WindowDataset, train_prior
from hms_core.train.fingerprint import source_fingerprint
from hms_core.train.device import autocast_context, move_to_device, select_device
from hms_core.train.engine import fit
from hms_core.train.engine_config import EngineConfig, epochs_for_steps, n_batches
from hms_core.train.losses import kl_loss, vote_weights

logger = logging.getLogger(__name__)

WEIGHTS_KEYS = ("model_name", "model_kwargs", "state_dict", "metrics", "input_fields", "history")
MODEL_ENTRY_RESERVED = ("enabled", "training", "image_sizes")


@dataclasses.dataclass
class TwoStageConfig:
    """``training.two_stage``: more epochs on the windows most experts agreed on.

    Parameters
    ----------
    enabled : bool, default True
        After stage 1 (``training.epochs`` or ``training.steps`` on all windows), train
        ``epochs`` (or ``steps``) more on the windows with at least ``min_votes`` votes.
    min_votes : int, default 10
        Votes a window needs for the second stage.
    epochs : int, default 2
        Epochs of the second stage; ignored when ``steps`` > 0.
    steps : int, default 0
        Length of the second stage in optimiser steps over the high-vote windows (the
        fewest whole epochs that reach it); 0: ``epochs`` sets it.
    lr_scale : float or None, default 0.2
        The learning-rate schedule restarts for stage 2: a new warm-up
        (``training.warmup_frac`` of the stage's steps) to ``lr_scale * training.lr``, then
        the decay of ``training.scheduler`` to ``min_lr_frac`` of that peak. Stage 1's
        schedule ends with stage 1. None: one schedule over both stages (stage 2 then runs
        at the tail of stage 1's decay and changes little).
    """

    enabled: bool = True
    min_votes: int = contract.HIGH_VOTE_THRESHOLD
    epochs: int = 2
    steps: int = 0
    lr_scale: float | None = 0.2


@dataclasses.dataclass
class TrainingConfig:
    """Config section ``training``: the engine's keys plus the HMS-specific ones below.

    Parameters
    ----------
    engine : EngineConfig
        Every key of :class:`~hms_core.train.engine_config.EngineConfig` (``epochs`` = stage-1 epochs).
    two_stage : TwoStageConfig
    augment : AugmentConfig
    vote_weighting : bool, default False
        Weight each window's loss by ``min(n_votes / two_stage.min_votes, 1)``.
    inner_val_frac : float, default 0.15
        With ``select_best`` (an engine key), this fraction of the training windows, whole
        patients, is held out of training to pick the best epoch (``val_*`` in the history).
        The held-out fold is scored every epoch (``oof_*``) but never chooses weights, so
        out-of-fold figures stay honest. With ``select_best: false`` the last epoch is kept
        and every training window is trained on.
    eval_batch_size : int, default 64
        Windows per forward pass when scoring the inner split and the held-out fold.
    cache_max_mb : float, default 2048
        Load the fold's windows into memory (float16) when they fit in this many MiB.
    """

    engine: EngineConfig = dataclasses.field(default_factory=EngineConfig, metadata=FLATTEN)
    two_stage: TwoStageConfig = dataclasses.field(default_factory=TwoStageConfig)
    augment: aug.AugmentConfig = dataclasses.field(default_factory=aug.AugmentConfig)
    vote_weighting: bool = False
    inner_val_frac: float = 0.15
    eval_batch_size: int = 64
    cache_max_mb: float = 2048.0

    def validate(self, path: str = "training") -> None:
        """The inner split must be usable when it picks the best epoch; lengths >= 0."""
        two = self.two_stage
        if int(two.steps) < 0 or int(two.epochs) < 0:
            raise ConfigError(f"{path}.two_stage: epochs ({two.epochs!r}) and steps "
                              f"({two.steps!r}) must be >= 0")
        if two.lr_scale is not None and not float(two.lr_scale) > 0:
            raise ConfigError(f"{path}.two_stage.lr_scale: {two.lr_scale!r} must be > 0, or null "
                              "for one schedule over both stages")
        if self.engine.select_best and not 0.0 < float(self.inner_val_frac) < 1.0:
            raise ConfigError(f"{path}.inner_val_frac: {self.inner_val_frac!r} must be in (0, 1) "
                              "when select_best is true (the best epoch is picked on held-out "
                              "training patients, never on the validation fold)")


def stage_epochs(training: TrainingConfig, n_train: int, n_high: int) -> tuple[int, int]:
    """Epochs of stage 1 (all ``n_train`` windows) and stage 2 (the ``n_high`` high-vote ones).

    A stage whose length is given in optimiser steps (``training.steps``,
    ``training.two_stage.steps``) gets the fewest whole epochs that reach it; stage 2 has
    0 epochs when two-stage training is off.
    """
    engine, two = training.engine, training.two_stage
    stage1 = (epochs_for_steps(engine.steps, lambda e: n_batches(n_train, engine))
              if engine.steps > 0 else int(engine.epochs))
    if not two.enabled:
        return stage1, 0
    if two.steps == 0:
        return stage1, int(two.epochs)
    if n_high == 0:
        return stage1, 1  # steps wanted but no high-vote window: the caller says so
    return stage1, epochs_for_steps(two.steps, lambda e: n_batches(n_high, engine))


def resolve_model_config(cfg: Mapping[str, Any], model_name: str
                         ) -> tuple[TrainingConfig, dict[str, Any], list[int] | None]:
    """Split the config into the training settings, model kwargs and image-size schedule."""
    models = cfg.get("models") or {}
    if model_name not in models:
        raise ConfigError(f"models.{model_name}: no config entry; configured: "
                          f"{', '.join(models) or 'none'}")
    entry = dict(models[model_name] or {})
    # A deep copy: the per-model overrides must not leak into the shared training section.
    training = from_mapping(TrainingConfig,
                            deep_update(copy.deepcopy(dict(cfg.get("training") or {})),
                                        entry.get("training") or {}),
                            f"models.{model_name}.training")
    kwargs = {k: v for k, v in entry.items() if k not in MODEL_ENTRY_RESERVED}
    if kwargs.get("foundation_mode") is not None:
        check_option(f"models.{model_name}.foundation_mode", kwargs["foundation_mode"],
                     typing.get_args(FoundationMode))
    sizes = entry.get("image_sizes")
    if sizes is not None:
        sizes = [int(s) for s in sizes]
        kwargs["image_size"] = sizes[-1]
    return training, kwargs, sizes


def fold_of_windows(index: pd.DataFrame, folds_csv: str | os.PathLike) -> np.ndarray:
    """The fold of every window of ``index`` (``(n,)`` int64) from ``folds_csv`` by ``label_id``.

    Raises
    ------
    DataError
        The file is unreadable, lacks ``label_id``/``fold``, or misses a window.
    """
    folds = read_folds(folds_csv, ("label_id", "fold"))
    by_label = folds.drop_duplicates("label_id").set_index("label_id")["fold"]
    fold = index["label_id"].map(by_label)
    if fold.isna().any():
        missing = index.loc[fold.isna(), "label_id"].head(5).tolist()
        raise DataError(folds_csv, f"{int(fold.isna().sum())} windows have no fold "
                                   f"(e.g. label_id {missing})")
    return fold.to_numpy(dtype=np.int64)


def _foundation_digest(path: str | os.PathLike | None) -> str | None:
    return None if path is None else sha256_file(path)


def _maybe_cache(source: Any, rows: np.ndarray, fields: Sequence[str], max_mb: float
                 ) -> tuple[Any, np.ndarray]:
    """An in-memory copy of ``rows`` when it fits in ``max_mb`` MiB (float16), else the source."""
    if len(rows) == 0 or max_mb <= 0 or isinstance(source, InMemorySource):
        return source, rows
    sample = source.read(rows[:1], list(fields))
    mb = sum(v[0].size for v in sample.values()) * 2 * len(rows) / 2**20
    if mb > max_mb:
        return source, rows
    logger.info("caching %d windows (%.0f MiB) in memory", len(rows), mb)
    return InMemorySource.from_source(source, rows, fields), np.arange(len(rows))


@torch.no_grad()
def predict_logp(model: nn.Module, dataset: WindowDataset, *, batch_size: int = 64,
                 device: torch.device | None = None, precision: str = "fp32",
                 swap_hemispheres: bool = False) -> np.ndarray:
    """Log-probabilities ``(n, 6)`` of every window of ``dataset``, in order.

    ``swap_hemispheres=True`` mirrors the inputs first (test-time augmentation).
    """
    device = device or next(model.parameters()).device
    fields = tuple(model.input_fields)
    model.eval()
    out = []
    for start in range(0, len(dataset), batch_size):
        batch = dataset.__getitems__(list(range(start, min(start + batch_size, len(dataset)))))
        batch = move_to_device(batch, device)
        inputs = [batch[f] for f in fields]
        if swap_hemispheres:
            inputs = [aug.swap_hemispheres(x, f) for x, f in zip(inputs, fields)]
        with autocast_context(precision, device):
            logits = model(*inputs)
        out.append(F.log_softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, contract.N_CLASSES), np.float32)


def predict_logp_sharded(model: nn.Module, dataset: WindowDataset, **kwargs: Any) -> np.ndarray:
    """:func:`predict_logp` with the rows split across the ranks and gathered on every rank.

    One process: exactly :func:`predict_logp`. Under torchrun each rank scores its
    contiguous share of ``dataset`` and every rank gets all ``(n, 6)`` rows, in order.
    """
    info = distributed.current()
    if not info.distributed:
        return predict_logp(model, dataset, **kwargs)
    start, stop = distributed.shard_bounds(len(dataset), info.rank, info.world_size)
    shard = WindowDataset(dataset.source, dataset.rows[start:stop], dataset.fields)
    return distributed.gather_rows(predict_logp(model, shard, **kwargs))


def train_fold(store_paths: Any, folds_csv: str | os.PathLike, model_name: str, fold: int,
               cfg: Mapping[str, Any], *, weights_out: str | os.PathLike,
               oof_out: str | os.PathLike, checkpoint_dir: str | os.PathLike,
               foundation_path: str | os.PathLike | None = None,
               status_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train ``model_name`` on all folds but ``fold``; write weights and OOF predictions.

    Parameters
    ----------
    store_paths : sequence of path (or a window source)
        The batch stores (``data/processed/batch_*.zarr``); a ``WindowStore``-like object
        is used as is.
    folds_csv : path
        ``data/folds.csv`` (``label_id, ..., fold``).
    model_name : str
        Registered model with an entry in ``cfg["models"]``.
    fold : int
        The held-out fold.
    cfg : mapping
        Holds ``training`` and ``models`` (see module docstring).
    weights_out : path
        ``{"model_name", "model_kwargs", "state_dict", "metrics", "input_fields", "history"}``.
    oof_out : path
        Parquet: ``label_id, fold``, vote columns, ``logp_<class>``, ``logp_swap_<class>``.
    checkpoint_dir : path
        Resumable state (``models/checkpoints/<job>/``).
    foundation_path : path, optional
        Pretrained foundation encoder for models configured with ``foundation_mode``.
    status_path : path, optional
        ``status/run.json``.

    Returns
    -------
    dict
        The metrics stored in the weights file: ``kl_all, kl_high_vote, acc_high_vote,
        n_rows, n_high_vote`` of the OOF predictions, ``kl_all_tta`` (averaged with the
        swapped prediction), ``prior_kl_all`` (train-prior baseline), ``best_epoch``,
        ``seconds``.

    Under torchrun (see :mod:`hms_core.train.fold_main`) every rank calls this; training
    is data-parallel, validation and OOF prediction are sharded and gathered, only rank 0
    writes the weights and OOF files, and every rank returns rank 0's metrics.

    torch's thread count is the caller's: :func:`hms_core.workflow.rule_context` sets it to
    the rule's ``threads``, :mod:`hms_core.train.fold_main` to ``--threads`` per rank.

    With a ``cfg["tracking"]`` section, rank 0 logs the job as an MLflow run
    (:mod:`hms_core.tracking`): the resolved training section and model keyword arguments
    as params, the epoch history and the returned metrics.
    """
    job = f"train_{model_name}_fold{fold}"
    training, model_kwargs, image_sizes = resolve_model_config(cfg, model_name)
    params = {"model": model_name, "fold": int(fold), "training": training,
              "model_kwargs": model_kwargs, "image_sizes": image_sizes}
    with tracking.open_job(cfg.get("tracking"), job, state_dir=checkpoint_dir,
                           params=params) as tracker:
        metrics = _train_fold(store_paths, folds_csv, model_name, fold, cfg, weights_out=weights_out,
                              oof_out=oof_out, checkpoint_dir=checkpoint_dir,
                              foundation_path=foundation_path, status_path=status_path,
                              tracker=tracker)
        tracker.log_metrics(metrics, step=0)
    return metrics


def _train_fold(store_paths: Any, folds_csv: str | os.PathLike, model_name: str, fold: int,
                cfg: Mapping[str, Any], *, weights_out: str | os.PathLike,
                oof_out: str | os.PathLike, checkpoint_dir: str | os.PathLike,
                foundation_path: str | os.PathLike | None, status_path: str | os.PathLike | None,
                tracker: tracking.Tracker) -> dict[str, Any]:
    t0 = time.time()
    training, model_kwargs, image_sizes = resolve_model_config(cfg, model_name)
    dinfo = distributed.init_from_env(training.engine.device)
    if foundation_path is not None and model_kwargs.get("foundation_mode") is not None:
        model_kwargs["foundation_path"] = str(foundation_path)
    torch.manual_seed(training.engine.seed)  # the same initial weights on every (re)start
    model = create_model(model_name, **model_kwargs)
    fields = tuple(model.input_fields)

    source = open_window_source(store_paths)
    index = source.index.reset_index(drop=True)
    window_fold = fold_of_windows(index, folds_csv)
    train_rows = np.flatnonzero(window_fold != fold)
    val_rows = np.flatnonzero(window_fold == fold)
    if len(val_rows) == 0 or len(train_rows) == 0:
        raise DataError(folds_csv, f"fold {fold} leaves {len(train_rows)} training and "
                                   f"{len(val_rows)} validation windows; both must be > 0")
    prior_rows = train_rows
    inner_rows = np.zeros(0, dtype=np.int64)
    if training.engine.select_best:
        inner = inner_validation_mask(index["patient_id"].to_numpy()[train_rows],
                                      training.inner_val_frac, training.engine.seed + int(fold))
        train_rows, inner_rows = train_rows[~inner], train_rows[inner]

    train_src, train_pos = _maybe_cache(source, train_rows, fields, training.cache_max_mb)
    val_src, val_pos = _maybe_cache(source, val_rows, fields, training.cache_max_mb)
    train_set = WindowDataset(train_src, train_pos, fields)
    val_set = WindowDataset(val_src, val_pos, fields)
    val_votes = index.iloc[val_rows][list(contract.VOTE_COLUMNS)].to_numpy(dtype=np.float64)
    inner_set = None
    if len(inner_rows):
        inner_src, inner_pos = _maybe_cache(source, inner_rows, fields, training.cache_max_mb)
        inner_set = WindowDataset(inner_src, inner_pos, fields)
        inner_votes = index.iloc[inner_rows][list(contract.VOTE_COLUMNS)].to_numpy(dtype=np.float64)

    two = training.two_stage
    high = train_set.high_vote_positions(two.min_votes)
    stage1, stage2 = stage_epochs(training, len(train_set), len(high))
    if stage2 > 0 and len(high) == 0:
        raise ConfigError(f"training.two_stage.min_votes: no training window of fold {fold} "
                          f"has >= {two.min_votes} votes; lower it or disable two_stage")
    n_epochs = stage1 + stage2
    # Lengths given in steps are resolved here (per stage), so the engine sees epochs.
    engine_cfg = dataclasses.replace(training.engine, epochs=n_epochs, steps=0)
    lr_restarts = {stage1: float(two.lr_scale)} if stage2 > 0 and two.lr_scale is not None else None
    all_pos = np.arange(len(train_set))

    def epoch_indices(epoch: int) -> np.ndarray:
        return all_pos if epoch < stage1 else high

    def on_epoch_start(epoch: int, m: nn.Module) -> None:
        if image_sizes:
            from hms_core.models.efficientnet import image_size_for_epoch

            m.image_size = image_size_for_epoch(epoch, n_epochs, image_sizes)

    def loss_fn(m: nn.Module, batch: dict[str, torch.Tensor]):
        if m.training:
            batch = aug.augment_batch(batch, fields, training.augment)
        logits = m(*[batch[f] for f in fields])
        weights = (vote_weights(batch["n_votes"], full_weight_votes=two.min_votes)
                   if training.vote_weighting else None)
        loss = kl_loss(logits, batch["target"], weights=weights)
        return loss, {}

    device = select_device(engine_cfg.device)

    def scores(m: nn.Module, dataset: WindowDataset, votes: np.ndarray, prefix: str) -> dict:
        logp = predict_logp_sharded(m, dataset, batch_size=training.eval_batch_size,
                                    device=device, precision=engine_cfg.precision)
        s = score_predictions(votes, np.exp(logp))
        return {f"{prefix}_kl": s["kl_all"], f"{prefix}_kl_high_vote": s["kl_high_vote"],
                f"{prefix}_acc_high_vote": s["acc_high_vote"]}

    def eval_fn(m: nn.Module) -> dict[str, float]:
        # Always evaluate at the final image size: the one the saved model predicts at.
        # val_*: the inner split that picks the epoch; oof_*: the held-out fold, watched only.
        train_size = getattr(m, "image_size", None)
        if image_sizes:
            m.image_size = image_sizes[-1]
        out = scores(m, inner_set, inner_votes, "val") if inner_set is not None else {}
        out.update(scores(m, val_set, val_votes, "oof"))
        if image_sizes:
            m.image_size = train_size
        return out

    # The engine adds its own result-relevant settings; speed-only ones stay out of the key.
    # The windows' contents are in it (a store rebuilt with other preprocessing trains
    # afresh), and whether each split was cached: the cache holds float16.
    recipe = {"two_stage": dataclasses.asdict(two), "augment": dataclasses.asdict(training.augment),
              "vote_weighting": training.vote_weighting, "inner_val_frac": training.inner_val_frac,
              "cached": [isinstance(s, InMemorySource) for s in (train_src, val_src)]
              + ([isinstance(inner_src, InMemorySource)] if len(inner_rows) else [])}
    run_key = make_run_key("train_fold", model_name, model_kwargs, int(fold), recipe,
                           image_sizes, sha256_file(folds_csv), source_fingerprint(source),
                           _foundation_digest(model_kwargs.get("foundation_path")),
                           # the pretrained backbone file's content, not just its name
                           *([sha256_file(model_kwargs["pretrained_path"])]
                             if model_kwargs.get("pretrained_path") else []))
    job = f"train_{model_name}_fold{fold}"
    result = fit(model, loss_fn=loss_fn, train_data=train_set, eval_fn=eval_fn, cfg=engine_cfg,
                 checkpoint_dir=checkpoint_dir, run_key=run_key, epoch_indices=epoch_indices,
                 on_epoch_start=on_epoch_start, lr_restarts=lr_restarts,
                 status_path=status_path, status_job=job,
                 status_fields={"model": model_name, "fold": int(fold)}, tracker=tracker)
    model = result.model
    if image_sizes:
        model.image_size = image_sizes[-1]

    # -- out-of-fold predictions, plain and hemisphere-swapped
    logp = predict_logp_sharded(model, val_set, batch_size=training.eval_batch_size,
                                device=device, precision=engine_cfg.precision)
    logp_swap = predict_logp_sharded(model, val_set, batch_size=training.eval_batch_size,
                                     device=device, precision=engine_cfg.precision,
                                     swap_hemispheres=True)
    oof = pd.DataFrame({"label_id": index.iloc[val_rows]["label_id"].to_numpy(dtype=np.int64),
                        "fold": np.full(len(val_rows), int(fold), dtype=np.int64)})
    for j, col in enumerate(contract.VOTE_COLUMNS):
        oof[col] = val_votes[:, j].astype(np.int64)
    for j, col in enumerate(contract.LOGP_COLUMNS):
        oof[col] = logp[:, j]
    for j, col in enumerate(contract.LOGP_SWAP_COLUMNS):
        oof[col] = logp_swap[:, j]
    if dinfo.is_rank0:
        atomic.write_parquet(oof, oof_out)

    # -- metrics and weights
    metrics: dict[str, Any] = score_predictions(val_votes, np.exp(logp))
    tta = 0.5 * (np.exp(logp) + np.exp(logp_swap))
    metrics["kl_all_tta"] = score_predictions(val_votes, tta)["kl_all"]
    prior = train_prior(index.iloc[prior_rows])
    metrics["prior_kl_all"] = kaggle_kl(contract.votes_to_targets(val_votes),
                                        np.broadcast_to(prior, val_votes.shape))
    metrics["best_epoch"] = result.best_epoch
    metrics["n_train"], metrics["n_inner_val"] = len(train_rows), len(inner_rows)
    metrics["seconds"] = time.time() - t0
    saved_kwargs = (model.portable_kwargs(model_kwargs) if hasattr(model, "portable_kwargs")
                    else dict(model_kwargs))
    history = [{k: v for k, v in h.items()} for h in result.history]
    metrics = distributed.broadcast_object(metrics)  # "seconds" differs per rank
    if dinfo.is_rank0:
        atomic.torch_save({
            "model_name": model_name, "model_kwargs": saved_kwargs,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "metrics": metrics, "input_fields": list(fields), "history": history,
        }, weights_out)
    distributed.barrier()  # the files exist when any rank returns
    if dinfo.is_rank0:
        logger.info("%s fold %d: OOF KL %.4f (prior %.4f, TTA %.4f) in %.0f s", model_name, fold,
                    metrics["kl_all"], metrics["prior_kl_all"], metrics["kl_all_tta"],
                    metrics["seconds"])
    return metrics


def load_trained(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model from a ``train_fold`` weights file, in eval mode.

    Raises
    ------
    DataError
        The file is missing, unreadable or lacks the weights-file keys.
    """
    if not os.path.exists(path):
        raise DataError(path, "weights file not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # any unpickling failure means a bad file
        raise DataError(path, f"cannot read weights file: {exc}") from exc
    missing = [k for k in ("model_name", "model_kwargs", "state_dict") if k not in payload]
    if missing:
        raise DataError(path, f"not a trained-model file: missing {missing}")
    model = create_model(payload["model_name"], **payload["model_kwargs"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise DataError(path, f"weights do not match model {payload['model_name']!r}: {exc}") from exc
    return model.to(map_location).eval()
