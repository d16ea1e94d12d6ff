"""Self-supervised pretraining of the EEG foundation encoder: config, data and entry point.

The objectives are in :mod:`hms_core.foundation.objectives`, the model that applies them
in :mod:`hms_core.foundation.head`. Every window of the stores is used, labelled or not
(low-vote rows included), except those of the patients of ``holdout_folds``: the transfer
study validates on those folds, so the encoder it assesses has never seen those windows.
``encoder`` picks the architecture (:mod:`hms_core.models.encoder_registry`: our ``hms``
encoder or braindecode's ``cbramod``, ``biot`` and ``labram``); ``init_weights`` starts it from published weights
(a local file) instead of a random initialisation. Labels
are never read. The loop is :mod:`hms_core.train.engine` (epoch/step checkpoints, emergency
save on SIGTERM, exact resume).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from hms_core import contract
from hms_core.config import FLATTEN, check_option, from_mapping
from hms_core.data.folds import read_folds
from hms_core.errors import ConfigError, DataError
from hms_core.foundation.head import PretrainModel
from hms_core.foundation.objectives import ObjectivesConfig
from hms_core.hashing import sha256_file
from hms_core.models.encoder_registry import ENCODER_NAMES, build_encoder, encoder_class
from hms_core.models.foundation import FoundationModelConfig, n_parameters, save_foundation
from hms_core.models.published_weights import read_published
from hms_core.store import open_window_source
from hms_core.tracking import Tracker
from hms_core.train.checkpoint import make_run_key
from hms_core.train.data import identity_collate
from hms_core.train.engine import fit
from hms_core.train.engine_config import EngineConfig
from hms_core.train.fingerprint import source_fingerprint

logger = logging.getLogger(__name__)


# Engine settings that pretraining passes through to :class:`EngineConfig`, with their
# pretraining defaults (different from supervised training where it matters).
ENGINE_DEFAULTS: dict[str, Any] = {
    "epochs": 4, "batch_size": 32, "lr": 1e-3, "weight_decay": 0.05, "warmup_frac": 0.1,
    "seed": 0, "precision": "fp32", "num_workers": 0, "checkpoint_every_steps": 0,
    "grad_clip": 1.0, "device": "auto", "progress": True, "compile": False,
}


@dataclass
class PretrainConfig:
    """Config section ``pretrain``.

    Parameters
    ----------
    enabled : bool
        Run pretraining (default True); the workflow skips the step otherwise.
    encoder : {"hms", "cbramod", "biot", "labram"}
        The encoder architecture (default ``"hms"``: our patch transformer over the 18 chains;
        ``"cbramod"``: braindecode's CBraMod over the 19 referential channels, which needs
        ``model.dim`` 200 and ``model.patch_s`` 1.0; its published sizes are depth 12, heads 8,
        mlp_ratio 4.0; ``"biot"``: braindecode's BIOT over the 18 chains, which needs
        ``model.patch_s`` 1.0, ``model.mlp_ratio`` 4.0 and an even ``model.dim``; its published
        sizes are dim 256, depth 4, heads 8; ``"labram"``: braindecode's Labram over the 19
        referential channels, which needs ``model.dim`` 200 and ``model.patch_s`` 1.0; its
        published base sizes are depth 12, heads 10, mlp_ratio 4.0).
    init_weights : str | None
        Local file (or folder) of published weights to start from (default None: random
        initialisation). ``cbramod``: the ``model.safetensors`` (with its ``config.json``) of
        ``braindecode/cbramod-pretrained``; ``biot``: that of an 18-channel
        ``braindecode/biot-pretrained-*``; ``labram``: that of ``braindecode/labram-pretrained``;
        ``hms``: an earlier pretrained encoder file.
        Nothing is downloaded.
    model : FoundationModelConfig
        Encoder size and patching (``pretrain.model``).
    objectives : ObjectivesConfig
        The objectives and their weights (``pretrain.objectives``).
    random_crop : bool
        Take each window's crop at a random position in the 50 s window (default True)
        instead of the centre.
    max_windows : int | None
        Use at most this many windows, sampled with ``seed`` (default None: all).
    holdout_folds : list of int | None
        Never pretrain on the windows of these folds' patients (``data/folds.csv``; default
        [0, 1], the transfer study's ``transfer.val_folds``), so the study validates on windows
        the encoder has not seen. None: every window. The main models that use the encoder
        train per fold; only those validated on these folds get an encoder that never saw
        their validation windows, and all of them get an encoder pretrained on (k-2)/k of the
        data (with two held-out folds of k).
    engine : EngineConfig
        Every key of :class:`~hms_core.train.engine_config.EngineConfig`, given at the top level of
        the section; pretraining's defaults are ``ENGINE_DEFAULTS``, the engine's own for
        the rest.
    """

    enabled: bool = True
    encoder: str = "hms"
    init_weights: str | None = None
    model: FoundationModelConfig = field(default_factory=FoundationModelConfig)
    objectives: ObjectivesConfig = field(default_factory=ObjectivesConfig)
    random_crop: bool = True
    max_windows: int | None = None
    holdout_folds: list[int] | None = field(default_factory=lambda: [0, 1])
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(**ENGINE_DEFAULTS), metadata=FLATTEN)

    def validate(self, path: str = "pretrain") -> None:
        """Raise ConfigError naming ``<path>.<key>`` for a bad ``max_windows`` or engine setting."""
        if self.max_windows is not None and (not isinstance(self.max_windows, int) or self.max_windows < 2):
            raise ConfigError(f"{path}.max_windows: expected an integer >= 2 or null, got {self.max_windows!r}")
        check_option(f"{path}.encoder", self.encoder, ENCODER_NAMES)
        if self.holdout_folds is not None and (
                not self.holdout_folds
                or any(not isinstance(f, int) or isinstance(f, bool) or f < 0 for f in self.holdout_folds)):
            raise ConfigError(f"{path}.holdout_folds: expected a non-empty list of fold numbers >= 0 or null, "
                              f"got {self.holdout_folds!r}")
        self.engine.validate(path)

    def to_dict(self, *, engine: bool = True) -> dict[str, Any]:
        """The section as a flat mapping; ``engine=False`` leaves the engine keys out."""
        own = {
            "enabled": self.enabled, "encoder": self.encoder, "init_weights": self.init_weights,
            "model": dataclasses.asdict(self.model),
            "objectives": dataclasses.asdict(self.objectives), "random_crop": self.random_crop,
            "max_windows": self.max_windows, "holdout_folds": self.holdout_folds,
        }
        if not engine:
            return own
        return {**own, **{k: getattr(self.engine, k) for k in ENGINE_DEFAULTS}}


class ChainsDataset:
    """Windows of a source as batches ``{field: (B, C, T)}`` in uV; labels are not read.

    Parameters
    ----------
    source : WindowStore-like
        Anything with ``.read(rows, fields)`` (see :mod:`hms_core.train.data`).
    rows : np.ndarray
        Positions in ``source.index``.
    field : str
        The store field read (default ``"chains"``; the encoder's ``input_field``).
    """

    def __init__(self, source: Any, rows, field: str = "chains"):
        self.source = source
        self.field = field
        self.rows = np.asarray(rows, dtype=np.int64)
        self.collate_fn = identity_collate

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}

    def __getitems__(self, indices) -> dict[str, torch.Tensor]:
        rows = self.rows[np.asarray(list(indices), dtype=np.int64)]
        order = np.argsort(rows, kind="stable")  # sorted reads are cheaper for chunked stores
        signal = self.source.read(rows[order], [self.field])[self.field]
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return {self.field: torch.from_numpy(np.ascontiguousarray(signal[inverse], dtype=np.float32))}


def holdout_patients(folds_csv, folds_held: Sequence[int]) -> np.ndarray:
    """Sorted patient ids of the folds ``folds_held`` in ``folds_csv`` (``label_id, patient_id, fold``).

    Raises
    ------
    DataError
        When the file is missing, lacks a column, or has no row in one of the folds.
    """
    folds_path = Path(folds_csv)
    folds = read_folds(folds_path, ("patient_id", "fold"))
    for fold in folds_held:
        if not (folds["fold"] == fold).any():
            raise DataError(folds_path, f"pretrain.holdout_folds: fold {fold} has no rows "
                                        f"(folds present: {sorted(folds['fold'].unique().tolist())})")
    return np.unique(folds.loc[folds["fold"].isin(list(folds_held)), "patient_id"].to_numpy(dtype=np.int64))


def read_holdout(path) -> dict[str, Any] | None:
    """The ``holdout`` record :func:`pretrain` wrote into an encoder file, None when it held none out.

    ``{"folds": [int, ...], "patient_ids": [int, ...], "n_windows_excluded": int}``: pretraining
    never read a window of these patients.
    """
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return payload.get("holdout") if isinstance(payload, dict) else None


def pretrain(
    store_paths: Any,
    cfg: PretrainConfig | Mapping | None,
    *,
    out_path,
    checkpoint_dir,
    folds_csv=None,
    status_path=None,
    on_step_end: Sequence[Callable[[Any], None]] = (),
    tracker: Tracker | None = None,
) -> dict[str, Any]:
    """Pretrain the foundation encoder on the windows of the stores and save it.

    Parameters
    ----------
    store_paths : path or sequence of paths
        Zarr window stores (``data/processed/batch_*.zarr``); all their windows are used,
        labelled or not, except the held-out fold's. A WindowStore-like object is accepted too.
    cfg : PretrainConfig | Mapping | None
        The ``pretrain`` config section.
    folds_csv : path | None
        ``data/folds.csv``; required when ``cfg.holdout_folds`` is set: the windows of those
        folds' patients are left out.
    out_path : path
        ``models/final/eeg_foundation_pretrained.pth``, written atomically by
        :func:`hms_core.models.foundation.save_foundation` (encoder ``state_dict``, its
        kwargs, the objectives and these metrics); ``load_foundation`` rebuilds it.
    checkpoint_dir : path
        Resumable engine state (``models/checkpoints/pretrain``).
    status_path : path | None
        ``status/run.json`` for progress.
    on_step_end : sequence of callable, default ()
        Hooks passed to :func:`hms_core.train.engine.fit` (tests kill the run with one).
    tracker : Tracker | None
        Experiment tracking (:func:`hms_core.tracking.open_job`): the loss curves.

    Returns
    -------
    dict
        ``n_windows`` (pretrained on), ``n_windows_excluded`` (the held-out folds'), ``n_parameters, epochs, global_step, resumed_from_step, seconds,
        loss_history`` (per epoch: ``total`` and each objective's unweighted loss),
        ``first_epoch_loss``, ``last_epoch_loss``.
    """
    cfg = cfg if isinstance(cfg, PretrainConfig) else from_mapping(PretrainConfig, cfg, "pretrain")
    engine_cfg = cfg.engine
    source = open_window_source(store_paths)
    n_total = len(source.index)
    if n_total < 2:
        raise ConfigError(f"pretrain: the stores hold {n_total} window(s); pretraining needs at least 2")
    rows = np.arange(n_total)
    holdout = None
    if cfg.holdout_folds is not None:
        if folds_csv is None:
            raise ConfigError(f"pretrain.holdout_folds is {cfg.holdout_folds} but no folds file was given; "
                              "pass folds_csv or set pretrain.holdout_folds: null")
        patients = holdout_patients(folds_csv, cfg.holdout_folds)
        held = np.isin(source.index["patient_id"].to_numpy(dtype=np.int64), patients)
        rows = rows[~held]
        if len(rows) < 2:
            raise ConfigError(f"pretrain.holdout_folds: leaving out folds {cfg.holdout_folds} leaves "
                              f"{len(rows)} window(s); pretraining needs at least 2")
        holdout = {"folds": [int(f) for f in cfg.holdout_folds], "patient_ids": [int(p) for p in patients],
                   "n_windows_excluded": int(held.sum())}
        logger.info("pretrain: leaving out the %d windows of the %d patients of folds %s",
                    holdout["n_windows_excluded"], len(patients), cfg.holdout_folds)
    if cfg.max_windows is not None and cfg.max_windows < len(rows):
        rows = np.sort(np.random.default_rng(engine_cfg.seed).choice(rows, cfg.max_windows, replace=False))
    field_name = encoder_class(cfg.encoder).input_field
    first = source.read(rows[:1], [field_name])[field_name]
    torch.manual_seed(engine_cfg.seed)  # same initial weights on every (re)start
    encoder = build_encoder(cfg.encoder, n_chans=int(first.shape[1]), n_times=int(first.shape[-1]),
                            sfreq=contract.SAMPLING_RATE_HZ, **dataclasses.asdict(cfg.model))
    if cfg.init_weights is not None:
        encoder.load_init_weights(cfg.init_weights)
    model = PretrainModel(encoder, cfg.objectives, random_crop=cfg.random_crop)

    def loss_fn(module: PretrainModel, batch: dict[str, torch.Tensor]):
        loss, parts = module(batch[field_name])
        return loss, {name: value.detach() for name, value in parts.items()}

    # The engine adds its own result-relevant settings; speed-only ones stay out of the key.
    init_digest = None if cfg.init_weights is None else _weights_digest(cfg.init_weights)
    run_key = make_run_key("pretrain", source_fingerprint(source), rows.tolist(), int(first.shape[-1]),
                           cfg.to_dict(engine=False), init_digest)
    started = time.time()
    result = fit(
        model, loss_fn=loss_fn, train_data=ChainsDataset(source, rows, field_name), cfg=engine_cfg,
        checkpoint_dir=checkpoint_dir, run_key=run_key, status_path=status_path,
        status_job="pretrain", status_fields={"model": "eeg_foundation"}, on_step_end=on_step_end,
        tracker=tracker,
    )
    names = cfg.objectives.enabled_names()
    history = [
        {"epoch": int(r["epoch"]), "total": float(r["train_loss"]),
         **{name: float(r[f"train_{name}"]) for name in names}, "seconds": float(r["seconds"])}
        for r in result.history
    ]
    metrics = {
        "n_windows": int(len(rows)),
        "n_windows_excluded": 0 if holdout is None else holdout["n_windows_excluded"],
        "n_parameters": n_parameters(result.model.encoder),
        "n_tokens": result.model.encoder.n_tokens,
        "epochs": engine_cfg.epochs,
        "global_step": result.global_step,
        "resumed_from_step": result.resumed_from_step,
        "seconds": time.time() - started,
        "objectives": list(names),
        "loss_history": history,
        "first_epoch_loss": {k: v for k, v in history[0].items() if k not in ("epoch", "seconds")},
        "last_epoch_loss": {k: v for k, v in history[-1].items() if k not in ("epoch", "seconds")},
    }
    save_foundation(
        result.model.encoder.cpu(), out_path,
        extra={"objectives": dataclasses.asdict(cfg.objectives), "pretrain_config": cfg.to_dict(), "metrics": metrics,
               "holdout": holdout},
    )
    logger.info("pretrained encoder on %d windows: loss %.4f -> %.4f; wrote %s",
                len(rows), history[0]["total"], history[-1]["total"], out_path)
    return metrics


def _weights_digest(path) -> str:
    """sha256 of the weights file ``init_weights`` names (its ``model.safetensors`` for a folder)."""
    return sha256_file(read_published(path)[2])
