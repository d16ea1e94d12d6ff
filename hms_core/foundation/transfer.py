"""Transfer study: does the pretrained foundation encoder help a classifier?

For each validation fold of ``val_folds``, each encoder initialisation (``pretrained`` from
the pretraining step, ``random``: the same architecture freshly initialised), each mode
(``frozen``: the encoder frozen, a linear head trained on its features; ``finetune``:
encoder and head trained together) and each label fraction (patient-grouped subsets of the
other folds), a classifier is trained with the engine on the vote distributions (KL loss)
and scored by Kaggle's KL on the validation fold. The last epoch's score is reported: no
epoch is picked on the validation fold, so the comparison is not tuned to it.

Each of the ``repeats`` seeds draws its own patient subset (grown to at least
``min_patients`` patients and ``min_windows`` windows), its own random initialisation and
its own training seed (``seed + repeat``); both inits train on the same subset with the same
seed, so their difference is paired. The summary (:mod:`hms_core.foundation.verdict`) gives
each arm's mean and spread over folds x seeds, the seed spread within a fold, the paired
difference and the distance to the prior, and the ``pretraining_helps`` verdict. The encoder
must not have been pretrained on a validation window (``pretrain.holdout_folds`` covers
``val_folds``); the study refuses an encoder that was.

The frozen mode trains the head (a linear probe) on features computed once (eval mode, no
augmentation), which is the same as training a linear head on a frozen encoder, only faster.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from hms_core import atomic, contract
from hms_core.config import FLATTEN, check_option, from_mapping
from hms_core.data.folds import read_folds
from hms_core.errors import ConfigError, DataError
from hms_core.hashing import sha256_file
from hms_core.metrics import kaggle_kl, score_predictions
from hms_core.foundation.verdict import conclusion, summarise, verdict
from hms_core.models.encoder_registry import build_encoder
from hms_core.models.foundation import FoundationClassifier, FoundationMode, load_foundation
from hms_core.status import update_status
from hms_core.store import open_window_source
from hms_core.train.checkpoint import make_run_key
from hms_core.train.data import ArrayDataset, WindowDataset, vote_targets
from hms_core.train.device import select_device
from hms_core.train.engine import fit
from hms_core.train.engine_config import EngineConfig
from hms_core.train.fingerprint import source_fingerprint
from hms_core.train.losses import kl_loss
from hms_core.foundation.pretrain import read_holdout

logger = logging.getLogger(__name__)

# The ways a classifier uses the encoder: the same two as ``models.<name>.foundation_mode``.
MODES = typing.get_args(FoundationMode)
# The transfer study's defaults of the engine settings (fine-tuning; the probe overrides some).
ENGINE_DEFAULTS: dict[str, Any] = {"epochs": 4, "lr": 5e-4, "batch_size": 32, "weight_decay": 0.01,
                                   "seed": 0, "select_best": False, "warmup_frac": 0.1}


@dataclass
class TransferConfig:
    """Config section ``transfer``.

    Parameters
    ----------
    enabled : bool
        Run the transfer study (default True).
    label_fractions : list of float
        Fractions of the training patients whose windows are used (default [0.1, 1.0]).
    repeats : int
        Seeds per validation fold and fraction (default 3): repeat ``r`` draws its patient
        subset with seed (``seed``, r), initialises the random encoder and the head and
        trains with seed ``seed + r``. A fraction whose subsets coincide (1.0: every patient)
        runs once per fold.
    min_patients : int
        Floor on a subset's patients (default 5): a fraction giving fewer is grown, with a
        warning, by the next patients of the same seeded order; the run reports what it used.
    min_windows : int
        Floor on a subset's windows (default 100), applied the same way.
    modes : list of {"frozen", "finetune"}
        The ways the encoders are trained on the labels (default both).
    val_folds : list of int
        Folds scored, one study each; all other folds train (default [0, 1]). Every one must
        be in ``pretrain.holdout_folds``.
    verdict_fraction : float | None
        Label fraction at which ``pretraining_helps`` is decided (default None: the smallest
        of ``label_fractions``).
    probe_epochs : int
        Epochs of the frozen mode's linear head over the cached features (default 30).
    probe_lr : float
        Peak learning rate of the frozen mode's linear head (default 1e-2).
    probe_c : float
        Inverse L2 strength of the probe, as scikit-learn's ``LogisticRegression(C=...)``:
        the loss gets ``||W||^2 / (2 C n_train)`` (default 1.0).
    cache_mb : float
        Keep the windows (cropped to what the encoder reads) in memory when they fit in
        this many MiB (default 2048); otherwise they are read from the stores per batch.
    engine : EngineConfig
        Every key of :class:`~hms_core.train.engine_config.EngineConfig`, given at the top level of
        the section: the fine-tuning run's settings (``epochs`` 4, ``lr`` 5e-4,
        ``batch_size`` 32 (also of feature extraction), ``weight_decay`` 0.01, ``seed`` 0 (also
        of the patient subsets and the random initialisation), ``select_best`` false,
        ``warmup_frac`` 0.1: ``ENGINE_DEFAULTS``; the engine's own for the rest). The linear
        probe uses them too, but with ``probe_epochs``, ``probe_lr``, fp32, no warm-up and
        no DataLoader workers.
    """

    enabled: bool = True
    label_fractions: list[float] = field(default_factory=lambda: [0.1, 1.0])
    repeats: int = 3
    min_patients: int = 5
    min_windows: int = 100
    modes: list[FoundationMode] = field(default_factory=lambda: list(MODES))
    val_folds: list[int] = field(default_factory=lambda: [0, 1])
    verdict_fraction: float | None = None
    probe_epochs: int = 30
    probe_lr: float = 1e-2
    probe_c: float = 1.0
    cache_mb: float = 2048.0
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(**ENGINE_DEFAULTS), metadata=FLATTEN)

    def validate(self, path: str = "transfer") -> None:
        """Raise ConfigError naming ``<path>.<key>`` for fractions, modes or epochs out of range."""
        if not self.label_fractions or any(not 0 < float(f) <= 1 for f in self.label_fractions):
            raise ConfigError(f"{path}.label_fractions: expected fractions in (0, 1], got {self.label_fractions!r}")
        for key, low in (("repeats", 1), ("min_patients", 1), ("min_windows", 0)):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"{path}.{key}: expected an integer >= {low}, got {value!r}")
        if not self.val_folds or any(not isinstance(f, int) or isinstance(f, bool) or f < 0
                                     for f in self.val_folds) or len(set(self.val_folds)) != len(self.val_folds):
            raise ConfigError(f"{path}.val_folds: expected distinct fold numbers >= 0, got {self.val_folds!r}")
        if self.verdict_fraction is not None and self.verdict_fraction not in self.label_fractions:
            raise ConfigError(f"{path}.verdict_fraction: {self.verdict_fraction!r} is not one of "
                              f"label_fractions {self.label_fractions}")
        if not self.modes:
            raise ConfigError(f"{path}.modes: choose at least one of {', '.join(MODES)}")
        for i, mode in enumerate(self.modes):
            check_option(f"{path}.modes[{i}]", mode, MODES)
        if not self.probe_c > 0:
            raise ConfigError(f"{path}.probe_c: must be > 0, got {self.probe_c!r}")
        if int(self.probe_epochs) < 1:
            raise ConfigError(f"{path}.probe_epochs: must be >= 1, got {self.probe_epochs!r}")
        self.engine.validate(path)

    def engine_for(self, mode: str, repeat: int = 0) -> EngineConfig:
        """The engine settings of a ``"finetune"`` or ``"frozen"`` run of seed ``repeat``."""
        engine = dataclasses.replace(self.engine, seed=self.engine.seed + repeat)
        if mode != "frozen":
            return engine
        return dataclasses.replace(engine, epochs=self.probe_epochs, lr=self.probe_lr, precision="fp32",
                                   warmup_frac=0.0, num_workers=0)

    def decisive_fraction(self) -> float:
        """The label fraction of the ``pretraining_helps`` verdict."""
        return float(self.verdict_fraction if self.verdict_fraction is not None else min(self.label_fractions))


# ----------------------------------------------------------------------------- data


def _split_rows(source: Any, folds_csv, val_fold: int) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Store rows of the training folds and of ``val_fold``, and the joined index."""
    folds_path = Path(folds_csv)
    folds = read_folds(folds_path, ("label_id", "fold"))
    index = source.index.reset_index(drop=True).copy()
    index["_row"] = np.arange(len(index))
    joined = index.merge(folds[["label_id", "fold"]], on="label_id", how="inner")
    votes = joined[list(contract.VOTE_COLUMNS)].to_numpy().sum(axis=1)
    joined = joined[votes > 0]
    val_rows = joined.loc[joined["fold"] == val_fold, "_row"].to_numpy()
    train_rows = joined.loc[joined["fold"] != val_fold, "_row"].to_numpy()
    if len(val_rows) == 0 or len(train_rows) == 0:
        raise DataError(folds_path, f"fold {val_fold} leaves {len(train_rows)} training and "
                                    f"{len(val_rows)} validation windows in the stores; need both")
    return np.sort(train_rows), np.sort(val_rows), index


def patient_subset(rows: np.ndarray, index: pd.DataFrame, fraction: float, seed: int | Sequence[int], *,
                   min_patients: int = 1, min_windows: int = 0) -> tuple[np.ndarray, int]:
    """Rows of a random ``fraction`` of the patients among ``rows``, grown to the floors.

    The patients are shuffled with ``seed``; the first ``ceil(fraction * n_patients)`` are
    kept, then the next ones in the same order until the subset has ``min_patients``
    patients and ``min_windows`` windows (or every patient; a warning says so).

    Parameters
    ----------
    rows : np.ndarray
        Candidate positions in ``index`` (sorted).
    index : pd.DataFrame
        Store index with ``patient_id``.
    fraction : float
        Requested fraction of the patients, in (0, 1].
    seed : int or sequence of int
        Seed of the patient order (``(seed, repeat)`` for repeated subsets).
    min_patients, min_windows : int
        Floors on the subset size (patients, windows).

    Returns
    -------
    rows : np.ndarray
        The subset's rows, sorted.
    n_patients : int
        Patients in the subset.
    """
    patient_of_row = index["patient_id"].to_numpy()[rows]
    patients = np.unique(patient_of_row)
    if fraction >= 1:
        return rows, len(patients)
    order = np.random.default_rng(seed).permutation(patients)
    windows = pd.Series(patient_of_row).value_counts().reindex(order).to_numpy()
    n_keep = max(1, int(math.ceil(fraction * len(patients))))
    floor = n_keep
    while floor < len(order) and (floor < min_patients or windows[:floor].sum() < min_windows):
        floor += 1
    if floor > n_keep:
        logger.warning("transfer: fraction %g gives %d patients / %d windows, below the floor (%d patients, "
                       "%d windows); using %d patients / %d windows", fraction, n_keep, windows[:n_keep].sum(),
                       min_patients, min_windows, floor, windows[:floor].sum())
    if floor < min_patients or windows[:floor].sum() < min_windows:
        logger.warning("transfer: all %d training patients (%d windows) are below the floor (%d patients, "
                       "%d windows)", len(order), windows.sum(), min_patients, min_windows)
    return rows[np.isin(patient_of_row, order[:floor])], floor


def repeated_subsets(rows: np.ndarray, index: pd.DataFrame, fraction: float, cfg: TransferConfig
                     ) -> list[tuple[int, np.ndarray, int]]:
    """The distinct patient subsets of ``fraction``: ``(repeat, rows, n_patients)`` per repeat.

    Repeat ``r`` draws its patients with seed ``(cfg.engine.seed, r)``; a repeat whose subset
    equals an earlier one's is dropped, so a fraction covering every patient runs once.
    """
    subsets, seen = [], set()
    for repeat in range(cfg.repeats):
        subset, n_patients = patient_subset(rows, index, fraction, (cfg.engine.seed, repeat),
                                            min_patients=cfg.min_patients, min_windows=cfg.min_windows)
        key = subset.tobytes()
        if key not in seen:
            seen.add(key)
            subsets.append((repeat, subset, n_patients))
    return subsets


def _cached_windows(source: Any, rows: np.ndarray, encoder: nn.Module) -> ArrayDataset:
    """The encoder's central crop of each window in memory: ``{input_field} (n, C, used)``, ``target``."""
    chunks, field_name = [], encoder.input_field
    for start in range(0, len(rows), 64):
        signal = source.read(rows[start:start + 64], [field_name])[field_name]
        chunks.append(encoder.crop(torch.from_numpy(np.ascontiguousarray(signal, dtype=np.float32))))
    return ArrayDataset(**{field_name: torch.cat(chunks)}, target=vote_targets(source.index.iloc[rows]))


class _Windows:
    """Train/val windows, in memory when small enough, else read from the stores per batch."""

    def __init__(self, source: Any, encoder: nn.Module, cache_mb: float):
        self.source, self.encoder = source, encoder
        self.cache_mb = cache_mb
        self._cache: dict[int, ArrayDataset] = {}

    def dataset(self, rows: np.ndarray):
        size_mb = len(rows) * self.encoder.n_chans * self.encoder.used_samples * 4 / 2**20
        if size_mb > self.cache_mb:
            return WindowDataset(self.source, rows, (self.encoder.input_field,))
        key = hash(rows.tobytes())
        if key not in self._cache:
            self._cache[key] = _cached_windows(self.source, rows, self.encoder)
        return self._cache[key]


@torch.no_grad()
def _predict(module: nn.Module, data, *, batch_size: int, feature: bool = False) -> np.ndarray:
    """Outputs of ``module`` over ``data`` (probabilities, or features when ``feature``)."""
    device = next(module.parameters()).device
    field_name = module.input_fields[0] if hasattr(module, "input_fields") else module.input_field
    outputs = []
    for start in range(0, len(data), batch_size):
        batch = data.__getitems__(list(range(start, min(start + batch_size, len(data)))))
        out = module(batch[field_name].to(device))
        outputs.append(out.float().cpu() if feature else torch.softmax(out.float(), dim=1).cpu())
    return torch.cat(outputs).numpy()


# ----------------------------------------------------------------------------- runs


def _run_frozen(features: np.ndarray, targets: np.ndarray, val_features: np.ndarray,
                      val_targets: np.ndarray, cfg: TransferConfig, *, feature_stats, checkpoint_dir,
                      run_key: str, repeat: int):
    head = nn.Linear(features.shape[1], contract.N_CLASSES)
    # Standardise with the statistics of every training-fold window (features need no labels):
    # a 10 % subset of a few patients has near-zero spread in some dimensions.
    mean, std = feature_stats
    train = ArrayDataset(x=(features - mean) / std, target=targets)
    val_x = torch.from_numpy((val_features - mean) / std)

    l2 = 1.0 / (2.0 * cfg.probe_c * len(features))

    def loss_fn(model, batch):
        return kl_loss(model(batch["x"]), batch["target"]) + l2 * model.weight.pow(2).sum(), {}

    def eval_fn(model):
        probs = torch.softmax(model(val_x.to(next(model.parameters()).device)).float(), 1).cpu().numpy()
        return {"val_kl": kaggle_kl(val_targets, probs)}

    torch.manual_seed(cfg.engine.seed + repeat)  # the head's initialisation
    engine = cfg.engine_for("frozen", repeat)
    engine.device = "cpu"  # a 6-way linear layer: the GPU would only add transfers
    result = fit(head, loss_fn=loss_fn, train_data=train, eval_fn=eval_fn, cfg=engine,
                 checkpoint_dir=checkpoint_dir, run_key=run_key)
    probs = torch.softmax(result.model(val_x), 1).detach().numpy()
    return probs, [r["val_kl"] for r in result.history]


def _run_finetune(encoder: nn.Module, train, val, cfg: TransferConfig, *, checkpoint_dir, run_key: str,
                  repeat: int):
    torch.manual_seed(cfg.engine.seed + repeat)  # same head initialisation for both encoders
    model = FoundationClassifier(encoder=copy.deepcopy(encoder), n_outputs=contract.N_CLASSES)
    val_targets = val.targets.numpy() if hasattr(val, "targets") else val.arrays["target"].numpy()
    field_name = encoder.input_field

    def loss_fn(module, batch):
        return kl_loss(module(batch[field_name]), batch["target"]), {}

    def eval_fn(module):
        return {"val_kl": kaggle_kl(val_targets, _predict(module, val, batch_size=cfg.engine.batch_size))}

    result = fit(model, loss_fn=loss_fn, train_data=train, eval_fn=eval_fn, cfg=cfg.engine_for("finetune", repeat),
                 checkpoint_dir=checkpoint_dir, run_key=run_key)
    probs = _predict(result.model, val, batch_size=cfg.engine.batch_size)
    return probs, [r["val_kl"] for r in result.history]


def transfer_study(
    store_paths: Any,
    folds_csv,
    pretrained_path,
    cfg: TransferConfig | Mapping | None,
    *,
    out_json,
    checkpoint_dir,
    status_path=None,
) -> dict[str, Any]:
    """Frozen-encoder and fine-tuned validation KL of the pretrained vs a random encoder.

    Parameters
    ----------
    store_paths : path or sequence of paths
        Window stores (or a WindowStore-like object).
    folds_csv : path
        ``data/folds.csv`` (``label_id, fold``, grouped by patient).
    pretrained_path : path
        ``models/final/eeg_foundation_pretrained.pth`` (any encoder of the registry).
    cfg : TransferConfig | Mapping | None
        The ``transfer`` config section.
    out_json : path
        Results, written atomically (a section of ``training_results.json``).
    checkpoint_dir : path
        Parent of one resumable engine directory per run.
    status_path : path | None
        ``status/run.json``; updated after each run (job ``transfer``).

    Returns
    -------
    dict
        ``runs`` (one per fold x init x mode x fraction x distinct seed: ``val_kl`` = Kaggle KL
        of the last epoch on the validation fold, its per-epoch curve, high-vote KL and
        accuracy, the subset's windows and patients), ``folds`` (per validation fold: split
        sizes and ``val_kl_prior``, the KL of predicting the training folds' mean vote
        distribution), ``summary[mode][fraction]`` (see
        :func:`hms_core.foundation.verdict.summarise`), ``pretraining_helps`` (bool) with its
        ``verdict`` evidence, ``conclusion``.

    Raises
    ------
    DataError
        When the encoder was pretrained on windows of a validation fold's patients
        (``pretrain.holdout_folds`` does not cover ``transfer.val_folds``).
    """
    cfg = cfg if isinstance(cfg, TransferConfig) else from_mapping(TransferConfig, cfg, "transfer")
    started = time.time()
    source = open_window_source(store_paths)
    pretrained = load_foundation(pretrained_path)
    device = select_device(cfg.engine.device)
    windows = _Windows(source, pretrained, cfg.cache_mb)
    base_key = make_run_key("transfer", source_fingerprint(source), sha256_file(pretrained_path),
                            sha256_file(folds_csv), dataclasses.asdict(cfg))
    splits = {fold: _split_rows(source, folds_csv, fold) for fold in cfg.val_folds}
    for fold, (_, val_rows, index) in splits.items():
        _check_unseen(pretrained_path, index["patient_id"].to_numpy()[val_rows], fold)
    n_runs = len(cfg.val_folds) * 2 * len(cfg.modes) * cfg.repeats * len(cfg.label_fractions)

    runs: list[dict[str, Any]] = []
    folds: dict[str, dict[str, Any]] = {}
    for fold, (train_rows, val_rows, index) in splits.items():
        pretrained_features: dict[str, np.ndarray] = {}  # the same for every seed
        val_data = windows.dataset(val_rows)
        val_votes = index[list(contract.VOTE_COLUMNS)].to_numpy(dtype=np.float64)[val_rows]
        val_targets = contract.votes_to_targets(val_votes)
        train_targets = contract.votes_to_targets(index[list(contract.VOTE_COLUMNS)].to_numpy(dtype=np.float64)[train_rows])
        prior_kl = kaggle_kl(val_targets, np.broadcast_to(train_targets.mean(0), val_targets.shape))
        folds[str(fold)] = {
            "val_kl_prior": prior_kl, "n_val_windows": int(len(val_rows)),
            "n_val_high_vote": int((val_votes.sum(1) >= contract.HIGH_VOTE_THRESHOLD).sum()),
            "n_train_windows": int(len(train_rows)),
            "n_train_patients": int(len(np.unique(index["patient_id"].to_numpy()[train_rows]))),
        }
        # The same subsets for both inits: the pretrained - random difference is paired per seed.
        subsets = {float(f): {r: (rows, n) for r, rows, n in repeated_subsets(train_rows, index, float(f), cfg)}
                   for f in cfg.label_fractions}
        for repeat in range(cfg.repeats):
            torch.manual_seed(cfg.engine.seed + repeat)
            encoders = {"pretrained": pretrained,
                        "random": build_encoder(pretrained.encoder_name, **pretrained.init_kwargs()).eval()}
            for init, encoder in encoders.items():
                encoder = encoder.to(device).eval()
                features = pretrained_features if init == "pretrained" else {}
                if "frozen" in cfg.modes and not features and any(repeat in s for s in subsets.values()):
                    features["val"] = _predict(encoder, val_data, batch_size=cfg.engine.batch_size, feature=True)
                    features["train"] = _predict(encoder, windows.dataset(train_rows),
                                                 batch_size=cfg.engine.batch_size, feature=True)
                for mode in cfg.modes:
                    for fraction, by_repeat in subsets.items():
                        if repeat not in by_repeat:
                            continue  # this seed's subset equals an earlier one's (fraction 1.0)
                        rows, n_patients = by_repeat[repeat]
                        t_run = time.time()
                        name = f"f{fold}_{init}_{mode}_{fraction:g}_r{repeat}"
                        run_key = make_run_key(base_key, name)
                        if mode == "frozen":
                            positions = np.searchsorted(train_rows, rows)
                            probs, curve = _run_frozen(
                                features["train"][positions], vote_targets(index.iloc[rows]), features["val"],
                                val_targets, cfg,
                                feature_stats=(features["train"].mean(0, keepdims=True),
                                               features["train"].std(0, keepdims=True) + 1e-6),
                                checkpoint_dir=Path(checkpoint_dir) / name, run_key=run_key, repeat=repeat)
                        else:
                            probs, curve = _run_finetune(encoder, windows.dataset(rows), val_data, cfg,
                                                         checkpoint_dir=Path(checkpoint_dir) / name,
                                                         run_key=run_key, repeat=repeat)
                        scores = score_predictions(val_votes, probs)
                        runs.append({
                            "val_fold": int(fold), "init": init, "mode": mode, "label_fraction": fraction,
                            "repeat": repeat, "seed": cfg.engine.seed + repeat,
                            "n_train_windows": int(len(rows)), "n_train_patients": int(n_patients),
                            "train_patient_ids": sorted(int(p) for p in np.unique(index["patient_id"].to_numpy()[rows])),
                            "val_kl": scores["kl_all"], "val_kl_prior": prior_kl, "val_kl_per_epoch": curve,
                            "val_kl_high_vote": scores["kl_high_vote"], "val_acc_high_vote": scores["acc_high_vote"],
                            "seconds": time.time() - t_run,
                        })
                        logger.info("transfer %s: val KL %.4f (%d windows of %d patients)", name, scores["kl_all"],
                                    len(rows), n_patients)
                        update_status(status_path, "transfer", stage="transfer", done=len(runs), total=n_runs,
                                      last_run=name, elapsed_s=time.time() - started)
                encoder.cpu()

    summary = summarise(runs)
    decision = verdict(summary, cfg.decisive_fraction(), cfg.modes)
    result = {
        "encoder": pretrained.encoder_name,
        "val_folds": [int(f) for f in cfg.val_folds],
        "folds": folds,
        "label_fractions": [float(f) for f in cfg.label_fractions],
        "repeats": cfg.repeats,
        "floor": {"min_patients": cfg.min_patients, "min_windows": cfg.min_windows},
        "epochs": {"finetune": cfg.engine.epochs, "frozen": cfg.probe_epochs},
        "runs": runs,
        "summary": summary,
        "pretraining_helps": decision["pretraining_helps"],
        "verdict": decision,
        "conclusion": conclusion(summary, decision),
        "notes": (f"validation folds {list(cfg.val_folds)}, whose patients the encoder was not pretrained on "
                  "(pretrain.holdout_folds); each seed draws its own patient subset, random initialisation and "
                  "training seed, shared by both inits; std is the sample standard deviation; the last epoch "
                  "is scored"),
        "seconds": time.time() - started,
    }
    atomic.write_json(out_json, result)
    logger.info("transfer study: %s", result["conclusion"])
    return result


def _check_unseen(pretrained_path, val_patients: np.ndarray, val_fold: int) -> None:
    """Raise DataError when pretraining read a window of a validation patient."""
    holdout = read_holdout(pretrained_path)
    held = set(holdout["patient_ids"]) if holdout else set()
    seen = sorted({int(p) for p in val_patients} - held)
    if seen:
        folds = "no fold" if not holdout else f"folds {holdout.get('folds', holdout.get('fold'))}"
        raise DataError(pretrained_path, f"the encoder was pretrained on windows of {len(seen)} validation "
                                         f"patient(s) of transfer.val_folds' fold {val_fold} (e.g. {seen[:3]}); it "
                                         f"held out {folds}: add {val_fold} to pretrain.holdout_folds")
