"""The searched hyperparameters: built-in spaces per model family, sampling, applying the result.

A hyperparameter is named by its dotted path inside the model's config entry
(``cfg["models"][model]``): ``training.lr``, ``training.weight_decay``, ``training.steps``,
``training.augment.mixup_alpha`` land in the model's ``training`` overrides (merged over the
shared ``training`` section by :func:`hms_core.train.fold.resolve_model_config`), anything
else (``dropout``, ``drop_rate``) is a keyword argument of the model. So the tuned values win
over both the shared section and the model's own overrides.

Built-in space (used for a model without a ``tuning.space.<model>`` entry), around the
merged config's values:

- every family: ``training.lr`` lr/3 ... 3 lr (log); ``training.weight_decay`` wd/10 ... 10 wd
  (log; 1e-5 ... 0.1 when wd is 0); the training length, ``training.steps`` when the config
  gives steps, else ``training.epochs``, half ... twice the configured value (integer);
- ``resnet1d_gru``: ``dropout`` 0 ... 0.5, ``training.augment.mixup_alpha`` 0 ... 0.8
  (0: no mixup);
- ``efficientnet`` and ``eeg_image``: ``drop_rate`` 0 ... 0.6, ``drop_path_rate`` 0 ... 0.3,
  ``training.augment.mixup_alpha`` 0 ... 0.8;
- ``qeeg``: ``dropout`` 0 ... 0.5 when it has an MLP head (``hidden`` > 0).
"""
from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

from hms_core.config import deep_update
from hms_core.errors import ConfigError, DataError
from hms_core.train.fold import MODEL_ENTRY_RESERVED, TrainingConfig
from hms_core.tune.config import ParamRange, TuningConfig, param_range

logger = logging.getLogger(__name__)

MIXUP = "training.augment.mixup_alpha"


def default_space(model_name: str, training: TrainingConfig, model_kwargs: Mapping[str, Any]
                  ) -> dict[str, ParamRange]:
    """The built-in space of ``model_name``'s family around its merged config (module table).

    Parameters
    ----------
    model_name : str
        Registered model name; families other than ``resnet1d_gru``, ``efficientnet``,
        ``eeg_image`` and ``qeeg`` get the shared keys only (lr, weight decay, length).
    training : TrainingConfig
        The model's merged training config (shared section + model overrides).
    model_kwargs : mapping
        The model's keyword arguments from its config entry.
    """
    engine = training.engine
    lr, wd = float(engine.lr), float(engine.weight_decay)
    space = {"training.lr": ParamRange(lr / 3, lr * 3, log=True),
             "training.weight_decay": (ParamRange(wd / 10, wd * 10, log=True) if wd > 0
                                       else ParamRange(1e-5, 1e-1, log=True))}
    if int(engine.steps) > 0:
        steps = int(engine.steps)
        space["training.steps"] = ParamRange(max(1, steps // 2), 2 * steps, integer=True)
    else:
        epochs = int(engine.epochs)
        space["training.epochs"] = ParamRange(max(1, epochs // 2), max(2, 2 * epochs), integer=True)
    if model_name == "resnet1d_gru":
        space["dropout"] = ParamRange(0.0, 0.5)
        space[MIXUP] = ParamRange(0.0, 0.8)
    elif model_name in ("efficientnet", "eeg_image"):  # timm backbones
        space["drop_rate"] = ParamRange(0.0, 0.6)
        space["drop_path_rate"] = ParamRange(0.0, 0.3)
        space[MIXUP] = ParamRange(0.0, 0.8)
    elif model_name == "qeeg" and int(model_kwargs.get("hidden") or 0) > 0:
        space["dropout"] = ParamRange(0.0, 0.5)
    return space


def resolve_space(tuning: TuningConfig, model_name: str, training: TrainingConfig,
                  model_kwargs: Mapping[str, Any]) -> dict[str, ParamRange]:
    """``tuning.space.<model_name>`` when configured, else :func:`default_space`; keys checked."""
    given = tuning.space.get(model_name)
    if given is None:
        space = default_space(model_name, training, model_kwargs)
    else:
        space = {key: param_range(spec, f"tuning.space.{model_name}.{key}")
                 for key, spec in given.items()}
    for key in space:
        _check_key(key, f"tuning.space.{model_name}")
    return space


def _check_key(key: str, path: str) -> list[str]:
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"{path}: bad key {key!r}; use a dotted path such as 'training.lr'")
    if key == "training" or (parts[0] in MODEL_ENTRY_RESERVED and parts[0] != "training"):
        raise ConfigError(f"{path}: {key!r} cannot be tuned; allowed: 'training.<key>' or a "
                          f"model keyword argument (not {', '.join(MODEL_ENTRY_RESERVED)})")
    return parts


def configured_values(cfg: Mapping[str, Any], model_name: str,
                      space: Mapping[str, ParamRange]) -> dict[str, Any]:
    """The values ``cfg`` already gives the keys of ``space``, where inside their range.

    ``training.<key>`` is read from the model's ``training`` overrides merged over the shared
    section, any other key from the model's entry; keys the config leaves at a code default
    are left out. The search starts with these (trial 0 is the configured recipe).
    """
    entry = dict((cfg.get("models") or {}).get(model_name) or {})
    training = deep_update(copy.deepcopy(dict(cfg.get("training") or {})), entry.get("training") or {})
    out = {}
    for key, r in space.items():
        parts = key.split(".")
        node: Any = {"training": training, **{k: v for k, v in entry.items() if k != "training"}}
        for part in parts:
            node = node.get(part) if isinstance(node, Mapping) else None
        if isinstance(node, (int, float)) and not isinstance(node, bool) \
                and float(r.low) <= float(node) <= float(r.high):
            out[key] = int(node) if r.integer else float(node)
    return out


def suggest_params(trial: Any, space: Mapping[str, ParamRange]) -> dict[str, Any]:
    """One value per key of ``space`` from an Optuna ``trial`` (``suggest_int``/``suggest_float``)."""
    params = {}
    for key, r in space.items():
        if r.integer:
            params[key] = trial.suggest_int(key, int(r.low), int(r.high), log=bool(r.log))
        else:
            params[key] = trial.suggest_float(key, float(r.low), float(r.high), log=bool(r.log))
    return params


def apply_params(cfg: Mapping[str, Any], model_name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``cfg`` with each dotted key of ``params`` set in ``cfg["models"][model_name]``.

    ``{"training.lr": 3e-4, "dropout": 0.1}`` sets ``models.<model>.training.lr`` and
    ``models.<model>.dropout``; the shared ``training`` section is left as it is, so
    :func:`~hms_core.train.fold.resolve_model_config` merges the tuned values over it.
    """
    out = copy.deepcopy(dict(cfg))
    models = dict(out.get("models") or {})
    if model_name not in models:
        raise ConfigError(f"models.{model_name}: no config entry to apply tuned parameters to; "
                          f"configured: {', '.join(models) or 'none'}")
    entry = dict(models[model_name] or {})
    for key, value in params.items():
        parts = _check_key(key, f"tuned parameters of {model_name}")
        node = entry
        for part in parts[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, Mapping) else {}
            node = node[part]
        node[parts[-1]] = value
    models[model_name] = entry
    out["models"] = models
    return out


def load_params(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``models/tuning/<model>_fold<k>_params.json`` file written by ``tune_model``."""
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(path, f"cannot read the tuned parameters: {exc}") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("params"), dict):
        raise DataError(path, "not a tuned-parameters file: no 'params' mapping")
    return payload


def apply_tuned_params(cfg: Mapping[str, Any], model_name: str,
                       params_path: str | os.PathLike | None) -> dict[str, Any]:
    """``cfg`` with the best parameters of ``params_path`` applied (:func:`apply_params`).

    ``params_path=None`` (tuning disabled) returns ``cfg`` unchanged. The file must be the
    one tuned for ``model_name``.
    """
    if params_path is None:
        return dict(cfg)
    payload = load_params(params_path)
    if payload.get("model") != model_name:
        raise DataError(params_path, f"tuned for model {payload.get('model')!r}, not {model_name!r}")
    logger.info("applying tuned parameters of %s: %s", params_path, payload["params"])
    return apply_params(cfg, model_name, payload["params"])
