"""Self-supervised pretraining of the EEG foundation encoder: config, data and entry point.

The objectives are in :mod:`hms_core.foundation.objectives`, the model that applies them
in :mod:`hms_core.foundation.head`. Every window of the stores is used, labelled or not
(low-vote rows included); labels are never read. The loop is :mod:`hms_core.train.engine`
(epoch/step checkpoints, emergency save on SIGTERM, exact resume).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from hms_core import contract
from hms_core.config import FLATTEN, from_mapping
from hms_core.errors import ConfigError
from hms_core.foundation.head import PretrainModel
from hms_core.foundation.objectives import ObjectivesConfig
from hms_core.models.foundation import (
    EEGFoundationEncoder,
    FoundationModelConfig,
    n_parameters,
    save_foundation,
)
from hms_core.store import open_window_source
from hms_core.train.checkpoint import make_run_key
from hms_core.train.data import identity_collate
from hms_core.train.engine import fit
from hms_core.train.engine_config import EngineConfig

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
    model : FoundationModelConfig
        Encoder size and patching (``pretrain.model``).
    objectives : ObjectivesConfig
        The objectives and their weights (``pretrain.objectives``).
    random_crop : bool
        Take each window's crop at a random position in the 50 s window (default True)
        instead of the centre.
    max_windows : int | None
        Use at most this many windows, sampled with ``seed`` (default None: all).
    engine : EngineConfig
        Every key of :class:`~hms_core.train.engine_config.EngineConfig`, given at the top level of
        the section; pretraining's defaults are ``ENGINE_DEFAULTS``, the engine's own for
        the rest.
    """

    enabled: bool = True
    model: FoundationModelConfig = field(default_factory=FoundationModelConfig)
    objectives: ObjectivesConfig = field(default_factory=ObjectivesConfig)
    random_crop: bool = True
    max_windows: int | None = None
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(**ENGINE_DEFAULTS), metadata=FLATTEN)

    def validate(self, path: str = "pretrain") -> None:
        """Raise ConfigError naming ``<path>.<key>`` for a bad ``max_windows`` or engine setting."""
        if self.max_windows is not None and (not isinstance(self.max_windows, int) or self.max_windows < 2):
            raise ConfigError(f"{path}.max_windows: expected an integer >= 2 or null, got {self.max_windows!r}")
        self.engine.validate(path)

    def to_dict(self, *, engine: bool = True) -> dict[str, Any]:
        """The section as a flat mapping; ``engine=False`` leaves the engine keys out."""
        own = {
            "enabled": self.enabled, "model": dataclasses.asdict(self.model),
            "objectives": dataclasses.asdict(self.objectives), "random_crop": self.random_crop,
            "max_windows": self.max_windows,
        }
        if not engine:
            return own
        return {**own, **{k: getattr(self.engine, k) for k in ENGINE_DEFAULTS}}


class ChainsDataset:
    """Windows of a source as batches ``{"chains": (B, 18, T)}`` in uV; labels are not read.

    Parameters
    ----------
    source : WindowStore-like
        Anything with ``.read(rows, fields)`` (see :mod:`hms_core.train.data`).
    rows : np.ndarray
        Positions in ``source.index``.
    """

    def __init__(self, source: Any, rows):
        self.source = source
        self.rows = np.asarray(rows, dtype=np.int64)
        self.collate_fn = identity_collate

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}

    def __getitems__(self, indices) -> dict[str, torch.Tensor]:
        rows = self.rows[np.asarray(list(indices), dtype=np.int64)]
        order = np.argsort(rows, kind="stable")  # sorted reads are cheaper for chunked stores
        chains = self.source.read(rows[order], ["chains"])["chains"]
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return {"chains": torch.from_numpy(np.ascontiguousarray(chains[inverse], dtype=np.float32))}


def source_fingerprint(source: Any) -> dict[str, Any]:
    """What identifies a source's windows for the run key.

    The window count, a hash of the label ids and, for a ``WindowStore``, each store's
    attributes (its preprocessing config), so re-preprocessed stores start a fresh run.
    """
    index = source.index
    ids = index["label_id"].to_numpy() if "label_id" in index else index.index.to_numpy()
    fingerprint: dict[str, Any] = {
        "n_windows": len(index), "label_ids_sha256": hashlib.sha256(ids.astype("int64").tobytes()).hexdigest(),
    }
    if hasattr(source, "paths"):
        from hms_core.store import read_store_attributes

        attributes = json.dumps([read_store_attributes(p) for p in source.paths], sort_keys=True, default=str)
        fingerprint["store_attributes_sha256"] = hashlib.sha256(attributes.encode()).hexdigest()
    return fingerprint


def pretrain(
    store_paths: Any,
    cfg: PretrainConfig | Mapping | None,
    *,
    out_path,
    checkpoint_dir,
    status_path=None,
    on_step_end: Sequence[Callable[[Any], None]] = (),
) -> dict[str, Any]:
    """Pretrain the foundation encoder on every window of the stores and save it.

    Parameters
    ----------
    store_paths : path or sequence of paths
        Zarr window stores (``data/processed/batch_*.zarr``); all their windows are used,
        labelled or not. A WindowStore-like object is accepted too.
    cfg : PretrainConfig | Mapping | None
        The ``pretrain`` config section.
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

    Returns
    -------
    dict
        ``n_windows, n_parameters, epochs, global_step, resumed_from_step, seconds,
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
    if cfg.max_windows is not None and cfg.max_windows < n_total:
        rows = np.sort(np.random.default_rng(engine_cfg.seed).choice(n_total, cfg.max_windows, replace=False))
    n_times = int(source.read(rows[:1], ["chains"])["chains"].shape[-1])
    torch.manual_seed(engine_cfg.seed)  # same initial weights on every (re)start
    encoder = EEGFoundationEncoder(n_chans=contract.N_CHAINS, n_times=n_times, sfreq=contract.SAMPLING_RATE_HZ,
                                   **dataclasses.asdict(cfg.model))
    model = PretrainModel(encoder, cfg.objectives, random_crop=cfg.random_crop)

    def loss_fn(module: PretrainModel, batch: dict[str, torch.Tensor]):
        loss, parts = module(batch["chains"])
        return loss, {name: value.detach() for name, value in parts.items()}

    # The engine adds its own result-relevant settings; speed-only ones stay out of the key.
    run_key = make_run_key("pretrain", source_fingerprint(source), rows.tolist(), n_times,
                           cfg.to_dict(engine=False))
    started = time.time()
    result = fit(
        model, loss_fn=loss_fn, train_data=ChainsDataset(source, rows), cfg=engine_cfg,
        checkpoint_dir=checkpoint_dir, run_key=run_key, status_path=status_path,
        status_job="pretrain", status_fields={"model": "eeg_foundation"}, on_step_end=on_step_end,
    )
    names = cfg.objectives.enabled_names()
    history = [
        {"epoch": int(r["epoch"]), "total": float(r["train_loss"]),
         **{name: float(r[f"train_{name}"]) for name in names}, "seconds": float(r["seconds"])}
        for r in result.history
    ]
    metrics = {
        "n_windows": int(len(rows)),
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
        extra={"objectives": dataclasses.asdict(cfg.objectives), "pretrain_config": cfg.to_dict(), "metrics": metrics},
    )
    logger.info("pretrained encoder on %d windows: loss %.4f -> %.4f; wrote %s",
                len(rows), history[0]["total"], history[-1]["total"], out_path)
    return metrics
