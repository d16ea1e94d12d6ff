"""Config section ``tuning``: the optional Optuna search run per model and fold before training."""
from __future__ import annotations

import dataclasses
from typing import Any, Literal

from hms_core.config import from_mapping
from hms_core.errors import ConfigError

Pruner = Literal["median", "none"]


@dataclasses.dataclass
class ParamRange:
    """One searched hyperparameter: ``tuning.space.<model>.<key>``.

    ``<key>`` is a dotted path inside the model's config entry: ``training.lr``,
    ``training.augment.mixup_alpha`` (the training section, merged over the shared one), or a
    model keyword argument such as ``dropout`` or ``drop_rate``.

    Parameters
    ----------
    low : float
        Smallest value tried (inclusive).
    high : float
        Largest value tried (inclusive); >= ``low``.
    log : bool, default False
        Sample uniformly in log space (learning rates, weight decay); needs ``low`` > 0.
    integer : bool, default False
        An integer hyperparameter (``training.steps``, ``training.epochs``).
    """

    low: float
    high: float
    log: bool = False
    integer: bool = False

    def validate(self, path: str) -> None:
        """``low <= high``; a log range must be positive."""
        if float(self.low) > float(self.high):
            raise ConfigError(f"{path}: low ({self.low!r}) must be <= high ({self.high!r})")
        if self.log and not float(self.low) > 0:
            raise ConfigError(f"{path}: a log range needs low > 0, got {self.low!r}")


@dataclasses.dataclass
class TuningConfig:
    """Config section ``tuning``: an Optuna search per model and outer fold before training.

    Parameters
    ----------
    enabled : bool, default False
        Run the ``tune`` rule for every tuned model and fold; ``train_fold`` then reads
        ``models/tuning/<model>_fold<k>_params.json`` and applies it over the model's entry.
        False: no tune jobs and no extra training inputs.
    models : list of str or None, default None
        Models to tune; null: every enabled model.
    n_trials : int, default 20
        Finished trials (complete or pruned) per model and fold, counted over restarts.
    timeout_min : float or None, default None
        Wall-clock budget per model and fold in minutes, counted over restarts (the time of
        finished trials); the running trial is finished first. null: no time limit.
    inner_folds : int, default 3
        Patient-grouped inner folds of the outer fold's training windows; a trial's score is
        the mean Kaggle KL over them. The outer validation fold is never read.
    seed : int, default 0
        Seed of the TPE sampler and of the inner fold assignment.
    pruner : {"median", "none"}, default "median"
        Stop a trial after an inner fold when its running mean KL is worse than the median of
        earlier trials at the same inner fold (after 5 trials); none: every trial runs all
        inner folds.
    space : dict, default {}
        ``<model>: {<key>: {low, high, log, integer}}`` (see the README, Tuning). A model listed
        here is searched over exactly these keys; others get the built-in space of their
        family (lr, weight decay, training length, dropout and mixup, around the config's
        values).
    """

    enabled: bool = False
    models: list[str] | None = None
    n_trials: int = dataclasses.field(default=20, metadata={"minimum": 1})
    timeout_min: float | None = None
    inner_folds: int = dataclasses.field(default=3, metadata={"minimum": 2})
    seed: int = 0
    pruner: Pruner = "median"
    space: dict[str, dict[str, dict[str, Any]]] = dataclasses.field(default_factory=dict)

    def validate(self, path: str = "tuning") -> None:
        """Every range of ``space`` is a valid :class:`ParamRange`; the budget is positive."""
        if self.timeout_min is not None and not float(self.timeout_min) > 0:
            raise ConfigError(f"{path}.timeout_min: {self.timeout_min!r} must be > 0, or null "
                              "for no time limit")
        for model, keys in self.space.items():
            if not keys:
                raise ConfigError(f"{path}.space.{model}: empty; list at least one key or drop "
                                  "the model to use its built-in space")
            for key, spec in keys.items():
                param_range(spec, f"{path}.space.{model}.{key}")


def param_range(spec: Any, path: str) -> ParamRange:
    """Build one :class:`ParamRange` from its mapping, naming ``path`` in any error."""
    if isinstance(spec, ParamRange):
        return spec
    if not isinstance(spec, dict) or not {"low", "high"} <= set(spec):
        raise ConfigError(f"{path}: expected a mapping with low and high (and optional log, "
                          f"integer), got {spec!r}")
    return from_mapping(ParamRange, spec, path)
