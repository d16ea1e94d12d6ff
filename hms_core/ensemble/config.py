"""Config of the ``ensemble`` stage: meta-learner, member selection, BMA, calibration, conformal sets.

The Snakemake config section ``ensemble`` is built with
``from_mapping(EnsembleConfig, config["ensemble"], "ensemble")``.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Literal

from hms_core.config import check_option
from hms_core.errors import ConfigError

SelectionMethod = Literal["greedy", "all"]
DeployMode = Literal["auto", "best_member", "blend", "stacked"]
SELECTION_METHODS = typing.get_args(SelectionMethod)
DEPLOY_MODES = typing.get_args(DeployMode)


def _check_positive(section: str, **values: float) -> None:
    for key, value in values.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{section}.{key}: must be a positive number, got {value!r}")


@dataclass
class MetaLearnerConfig:
    """Small neural stacker on the members' out-of-fold log-probabilities.

    Parameters
    ----------
    hidden : int
        Width of the hidden layer (default 32).
    epochs : int
        Training epochs per outer fold (default 30).
    lr : float
        AdamW learning rate (default 3e-3).
    weight_decay : float
        AdamW weight decay (default 1e-4).
    dropout : float
        Dropout before the hidden layer (default 0.1).
    batch_size : int
        Rows per step (default 256).
    seed : int
        Seed of the initialisation and the row order (default 0).
    residual_l2 : float
        L2 penalty on the correction MLP's weights, added to the KL loss; pulls the stacker
        toward the blend it starts from (default 1e-2).
    inner_validation : bool
        Hold out one training fold (patient-grouped) per outer fold: the epoch with the lowest
        inner KL is kept (early stopping) and the correction is shrunk by the factor in [0, 1]
        that minimises the inner KL, so a correction that does not generalise becomes the
        blend (default True). Needs at least 3 outer folds.
    deploy : {"auto", "best_member", "blend", "stacked"}
        ``"auto"`` deploys whichever of the single best member, the blend and the stacker has
        the lowest nested OOF KL (ties go to the simpler); ``"best_member"`` / ``"blend"`` /
        ``"stacked"`` force one (default "auto").
    """

    hidden: int = 32
    epochs: int = 30
    lr: float = 3e-3
    weight_decay: float = 1e-4
    dropout: float = 0.1
    batch_size: int = 256
    seed: int = 0
    residual_l2: float = 1e-2
    inner_validation: bool = True
    deploy: DeployMode = "auto"

    def __post_init__(self) -> None:
        _check_positive("ensemble.meta_learner", hidden=self.hidden, epochs=self.epochs, lr=self.lr,
                        batch_size=self.batch_size)
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"ensemble.meta_learner.dropout: must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.residual_l2, (int, float)) or self.residual_l2 < 0:
            raise ConfigError(f"ensemble.meta_learner.residual_l2: must be >= 0, got {self.residual_l2!r}")
        check_option("ensemble.meta_learner.deploy", self.deploy, DEPLOY_MODES)


@dataclass
class SelectionConfig:
    """Diversity-aware choice of ensemble members.

    Parameters
    ----------
    method : {"greedy", "all"}
        ``"greedy"``: forward selection by penalised OOF KL; ``"all"``: every member
        (default "greedy").
    correlation_penalty : float
        Added to a candidate's blended KL per unit of the largest Pearson correlation between
        its OOF errors and those of an already kept member, counted only above
        ``correlation_threshold`` (default 0.05: r = 0.98 costs 0.004 nats, the size of a
        typical blending gain).
    correlation_threshold : float
        Correlations up to this are free (default 0.9); members trained on the same data
        routinely reach 0.8, and a penalty there would veto every real blending gain.
    max_members : int
        Upper bound on kept members (default 8).
    min_improvement : float
        A candidate is kept only if the penalised KL drops by more than this (default 1e-4).
    """

    method: SelectionMethod = "greedy"
    correlation_penalty: float = 0.05
    correlation_threshold: float = 0.9
    max_members: int = 8
    min_improvement: float = 1e-4

    def __post_init__(self) -> None:
        check_option("ensemble.selection.method", self.method, SELECTION_METHODS)
        _check_positive("ensemble.selection", max_members=self.max_members)
        if self.correlation_penalty < 0 or self.min_improvement < 0:
            raise ConfigError("ensemble.selection: correlation_penalty and min_improvement must be >= 0")
        if not -1 <= self.correlation_threshold < 1:
            raise ConfigError(f"ensemble.selection.correlation_threshold: must be in [-1, 1), "
                              f"got {self.correlation_threshold!r}")


@dataclass
class BMAConfig:
    """Bayesian model averaging of the kept members.

    Parameters
    ----------
    effective_rows : float or None
        Member weights are ``softmax(effective_rows * mean OOF log-likelihood per row)``.
        None uses the number of OOF rows (exact BMA, which puts nearly all weight on the best
        member once rows are many); a smaller value tempers the likelihood (default 50).
    """

    effective_rows: float | None = 50.0

    def __post_init__(self) -> None:
        if self.effective_rows is not None:
            _check_positive("ensemble.bma", effective_rows=self.effective_rows)


@dataclass
class CalibrationConfig:
    """Temperature scaling of the stacked logits.

    Parameters
    ----------
    enabled : bool
        Fit a temperature; False keeps T = 1 (default True). A fitted temperature is deployed
        only if it lowers the cross-fitted (held-out fold) soft NLL; otherwise T = 1.
    n_bins : int
        Bins of the expected calibration error (default 15).
    max_iter : int
        L-BFGS iterations of the temperature fit (default 100).
    """

    enabled: bool = True
    n_bins: int = 15
    max_iter: int = 100

    def __post_init__(self) -> None:
        _check_positive("ensemble.calibration", n_bins=self.n_bins, max_iter=self.max_iter)


@dataclass
class ConformalConfig:
    """Split conformal prediction sets on the calibrated out-of-fold probabilities.

    Parameters
    ----------
    alpha : float
        Miscoverage rate: a window's set holds the experts' majority class with probability
        at least 1 - alpha, marginally over windows like the out-of-fold rows (default 0.1).
    """

    alpha: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool) or not 0 < self.alpha < 1:
            raise ConfigError(f"ensemble.conformal.alpha: must be in (0, 1), got {self.alpha!r}")


@dataclass
class EnsembleConfig:
    """The ``ensemble`` config section (see the member dataclasses for each key)."""

    meta_learner: MetaLearnerConfig = field(default_factory=MetaLearnerConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    bma: BMAConfig = field(default_factory=BMAConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    conformal: ConformalConfig = field(default_factory=ConformalConfig)
