"""The workflow config's top-level sections, and the parse-time check that builds them all.

This module sits above the layers it names (it imports each section's dataclass from the
module that uses it), so the rest of :mod:`hms_core.config` stays at the bottom of the import
graph. The Snakefile calls :func:`check_config` after ``validate``; :func:`load_config` does
the same outside Snakemake (tests, ``hms`` verbs).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import yaml

from hms_core.config import (coerce_config, deep_update, from_mapping, load_schema,
                             validate_config)
from hms_core.errors import ConfigError
from hms_core.data.folds import FoldsConfig
from hms_core.data.source import DataConfig
from hms_core.ensemble.config import EnsembleConfig
from hms_core.export.config import ExportConfig
from hms_core.foundation.pretrain import PretrainConfig
from hms_core.foundation.transfer import TransferConfig
from hms_core.ops.config import OpsConfig
from hms_core.paths import CONFIG_DIR
from hms_core.preprocess import PreprocessConfig
from hms_core.tracking import TrackingConfig
from hms_core.train.fold import TrainingConfig, resolve_model_config
from hms_core.tune.config import TuningConfig
from hms_core.workflow import ComputeConfig

# Top-level config section -> its dataclass (the ``models`` section is per model, below).
SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "compute": ComputeConfig,
    "preprocessing": PreprocessConfig,
    "folds": FoldsConfig,
    "training": TrainingConfig,
    "pretrain": PretrainConfig,
    "transfer": TransferConfig,
    "ensemble": EnsembleConfig,
    "export": ExportConfig,
    "ops": OpsConfig,
    "tuning": TuningConfig,
    "tracking": TrackingConfig,
}


def build_section(name: str, data: Mapping[str, Any] | None) -> Any:
    """Config section ``name`` built from ``data`` (defaults filled in), e.g. to log it."""
    return from_mapping(SECTIONS[name], data, name)


def check_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Build every typed section of the workflow config once; raise ConfigError on the first bad key.

    Builds each section of ``SECTIONS`` and, for each enabled model, its training section
    merged with the model's overrides and its ``foundation_mode``. Called by the Snakefile
    after ``validate`` so that errors the schema cannot express (ranges, cross-key rules)
    also stop ``snakemake -n`` before any job starts.

    Returns
    -------
    dict
        ``section -> config dataclass``, plus ``"models" -> {name: TrainingConfig}``.
    """
    built = {section: from_mapping(cls, config.get(section), section)
             for section, cls in SECTIONS.items()}
    _check_holdout(built)
    resolve = resolve_model_config
    built["models"] = {}
    for name, entry in (config.get("models") or {}).items():
        if (entry or {}).get("enabled", True):
            built["models"][name] = resolve(config, name)[0]
    for name in built["tuning"].models or []:
        if name not in built["models"]:
            raise ConfigError(f"tuning.models: {name!r} is not an enabled model; enabled: "
                              f"{', '.join(built['models']) or 'none'}")
    return built


def _check_holdout(built: Mapping[str, Any]) -> None:
    """The transfer study validates only on folds pretraining held out, and all those folds exist."""
    pre, transfer, n_folds = built["pretrain"], built["transfer"], built["folds"].n_folds
    for key, folds in (("pretrain.holdout_folds", pre.holdout_folds or []), ("transfer.val_folds", transfer.val_folds)):
        for fold in folds:
            if not 0 <= fold < n_folds:
                raise ConfigError(f"{key}: {fold} is not a fold of folds.n_folds = {n_folds} (0..{n_folds - 1})")
    if pre.enabled and pre.holdout_folds is not None and len(set(pre.holdout_folds)) >= n_folds:
        raise ConfigError(f"pretrain.holdout_folds {pre.holdout_folds} holds out all {n_folds} folds, leaving no "
                          "window to pretrain on; hold out fewer (and list only those in transfer.val_folds)")
    unseen = sorted(set(transfer.val_folds) - set(pre.holdout_folds or []))
    if pre.enabled and transfer.enabled and unseen:
        raise ConfigError(f"transfer.val_folds {transfer.val_folds}: folds {unseen} are not in "
                          f"pretrain.holdout_folds ({pre.holdout_folds}): the study validates on windows the "
                          "encoder never saw (add them there, or set transfer.enabled: false)")


def load_config(*extra: str | os.PathLike, overrides: Mapping | None = None) -> dict:
    """``config/config.yaml``, then each extra file, then ``overrides``; coerced, validated and
    checked as the Snakefile does, defaults filled."""
    config = yaml.safe_load((CONFIG_DIR / "config.yaml").read_text()) or {}
    for path in extra:
        deep_update(config, yaml.safe_load(Path(path).read_text()) or {})
    if overrides:
        deep_update(config, overrides)
    schema = load_schema()
    coerce_config(config, schema)
    validate_config(config, schema)
    check_config(config)
    return config
