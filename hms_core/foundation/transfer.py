"""Transfer study: does the pretrained foundation encoder help a classifier?

For each encoder initialisation (``pretrained`` from the pretraining step, ``random``:
the same architecture freshly initialised), each mode (``frozen``: the encoder frozen,
a linear head trained on its features; ``finetune``: encoder and head trained together)
and each label fraction (patient-grouped subsets of the training folds), a classifier is
trained with the engine on the vote distributions (KL loss) of folds != ``val_fold`` and
scored by Kaggle's KL on ``val_fold``. The last epoch's score is reported: no epoch is
picked on the validation fold, so the comparison is not tuned to it.

Each fraction below the whole set is drawn ``repeats`` times (a different seeded patient
subset per repeat; both inits train on the same subset, so their difference is paired) and
grown to at least ``min_patients`` patients and ``min_windows`` windows. The summary gives
each arm's mean and spread over repeats, the paired difference (pretrained - random) and
each arm's distance to the prior (the training folds' mean vote distribution) on the same
validation rows. The encoder must not have been pretrained on a validation window
(``pretrain.holdout_fold`` = ``val_fold``); the study refuses an encoder that was.

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
from hms_core.models.foundation import EEGFoundationEncoder, FoundationClassifier, FoundationMode, load_foundation
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
        Patient subsets drawn per fraction (default 3), each with its own seed
        (``seed``, repeat); a fraction whose subsets coincide (1.0: every patient) runs once.
    min_patients : int
        Floor on a subset's patients (default 5): a fraction giving fewer is grown, with a
        warning, by the next patients of the same seeded order; the run reports what it used.
    min_windows : int
        Floor on a subset's windows (default 100), applied the same way.
    modes : list of {"frozen", "finetune"}
        The ways the encoders are trained on the labels (default both).
    val_fold : int
        Fold scored; all other folds train (default 0).
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
    val_fold: int = 0
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
        if not self.modes:
            raise ConfigError(f"{path}.modes: choose at least one of {', '.join(MODES)}")
        for i, mode in enumerate(self.modes):
            check_option(f"{path}.modes[{i}]", mode, MODES)
        if not self.probe_c > 0:
            raise ConfigError(f"{path}.probe_c: must be > 0, got {self.probe_c!r}")
        if int(self.probe_epochs) < 1:
            raise ConfigError(f"{path}.probe_epochs: must be >= 1, got {self.probe_epochs!r}")
        self.engine.validate(path)

    def engine_for(self, mode: str) -> EngineConfig:
        """The engine settings of a ``"finetune"`` or ``"frozen"`` run."""
        if mode != "frozen":
            return self.engine
        return dataclasses.replace(self.engine, epochs=self.probe_epochs, lr=self.probe_lr, precision="fp32",
                                   warmup_frac=0.0, num_workers=0)


# ----------------------------------------------------------------------------- data


def _split_rows(source: Any, folds_csv, cfg: TransferConfig) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Store rows of the training folds and of ``val_fold``, and the joined index."""
    folds_path = Path(folds_csv)
    folds = read_folds(folds_path, ("label_id", "fold"))
    index = source.index.reset_index(drop=True).copy()
    index["_row"] = np.arange(len(index))
    joined = index.merge(folds[["label_id", "fold"]], on="label_id", how="inner")
    votes = joined[list(contract.VOTE_COLUMNS)].to_numpy().sum(axis=1)
    joined = joined[votes > 0]
    val_rows = joined.loc[joined["fold"] == cfg.val_fold, "_row"].to_numpy()
    train_rows = joined.loc[joined["fold"] != cfg.val_fold, "_row"].to_numpy()
    if len(val_rows) == 0 or len(train_rows) == 0:
        raise DataError(folds_path, f"fold {cfg.val_fold} leaves {len(train_rows)} training and "
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


def _cached_windows(source: Any, rows: np.ndarray, encoder: EEGFoundationEncoder) -> ArrayDataset:
    """The encoder's central crop of each window in memory: ``chains (n, C, used)``, ``target``."""
    chunks = []
    for start in range(0, len(rows), 64):
        chains = source.read(rows[start:start + 64], ["chains"])["chains"]
        chunks.append(encoder.crop(torch.from_numpy(np.ascontiguousarray(chains, dtype=np.float32))))
    return ArrayDataset(chains=torch.cat(chunks), target=vote_targets(source.index.iloc[rows]))


class _Windows:
    """Train/val windows, in memory when small enough, else read from the stores per batch."""

    def __init__(self, source: Any, encoder: EEGFoundationEncoder, cache_mb: float):
        self.source, self.encoder = source, encoder
        self.cache_mb = cache_mb
        self._cache: dict[int, ArrayDataset] = {}

    def dataset(self, rows: np.ndarray):
        size_mb = len(rows) * self.encoder.n_chans * self.encoder.used_samples * 4 / 2**20
        if size_mb > self.cache_mb:
            return WindowDataset(self.source, rows, ("chains",))
        key = hash(rows.tobytes())
        if key not in self._cache:
            self._cache[key] = _cached_windows(self.source, rows, self.encoder)
        return self._cache[key]


@torch.no_grad()
def _predict(module: nn.Module, data, *, batch_size: int, feature: bool = False) -> np.ndarray:
    """Outputs of ``module`` over ``data`` (probabilities, or features when ``feature``)."""
    device = next(module.parameters()).device
    outputs = []
    for start in range(0, len(data), batch_size):
        batch = data.__getitems__(list(range(start, min(start + batch_size, len(data)))))
        out = module(batch["chains"].to(device))
        outputs.append(out.float().cpu() if feature else torch.softmax(out.float(), dim=1).cpu())
    return torch.cat(outputs).numpy()


# ----------------------------------------------------------------------------- runs


def _run_frozen(features: np.ndarray, targets: np.ndarray, val_features: np.ndarray,
                      val_targets: np.ndarray, cfg: TransferConfig, *, feature_stats, checkpoint_dir,
                      run_key: str):
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

    engine = cfg.engine_for("frozen")
    engine.device = "cpu"  # a 6-way linear layer: the GPU would only add transfers
    result = fit(head, loss_fn=loss_fn, train_data=train, eval_fn=eval_fn, cfg=engine,
                 checkpoint_dir=checkpoint_dir, run_key=run_key)
    probs = torch.softmax(result.model(val_x), 1).detach().numpy()
    return probs, [r["val_kl"] for r in result.history]


def _run_finetune(encoder: EEGFoundationEncoder, train, val, cfg: TransferConfig, *, checkpoint_dir, run_key: str):
    torch.manual_seed(cfg.engine.seed)  # same head initialisation for both encoders
    model = FoundationClassifier(encoder=copy.deepcopy(encoder), n_outputs=contract.N_CLASSES)
    val_targets = val.targets.numpy() if hasattr(val, "targets") else val.arrays["target"].numpy()

    def loss_fn(module, batch):
        return kl_loss(module(batch["chains"]), batch["target"]), {}

    def eval_fn(module):
        return {"val_kl": kaggle_kl(val_targets, _predict(module, val, batch_size=cfg.engine.batch_size))}

    result = fit(model, loss_fn=loss_fn, train_data=train, eval_fn=eval_fn, cfg=cfg.engine_for("finetune"),
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
        ``models/final/eeg_foundation_pretrained.pth``.
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
        ``runs`` (one per init x mode x fraction x distinct repeat: ``val_kl`` = Kaggle KL of
        the last epoch on the validation fold, its per-epoch curve, high-vote KL and accuracy,
        the subset's windows and patients), ``summary[mode][fraction]`` (per init ``{mean,
        std, values}`` over repeats and ``vs_prior`` = mean KL - prior KL; ``paired_diff`` =
        pretrained - random KL per repeat, ``{mean, std, values}``, negative when pretraining
        helped; subset sizes), ``val_kl_prior`` (KL of predicting the training folds' mean
        vote distribution on the same validation rows), split sizes, ``conclusion``.

    Raises
    ------
    DataError
        When the encoder was pretrained on windows of the validation fold's patients
        (``pretrain.holdout_fold`` unset or not ``transfer.val_fold``).
    """
    cfg = cfg if isinstance(cfg, TransferConfig) else from_mapping(TransferConfig, cfg, "transfer")
    started = time.time()
    source = open_window_source(store_paths)
    train_rows, val_rows, index = _split_rows(source, folds_csv, cfg)
    _check_unseen(pretrained_path, index["patient_id"].to_numpy()[val_rows], cfg.val_fold)
    pretrained = load_foundation(pretrained_path)
    torch.manual_seed(cfg.engine.seed)
    encoders = {"pretrained": pretrained, "random": EEGFoundationEncoder(**pretrained.init_kwargs()).eval()}
    device = select_device(cfg.engine.device)
    windows = _Windows(source, pretrained, cfg.cache_mb)
    val_data = windows.dataset(val_rows)
    val_votes = index[list(contract.VOTE_COLUMNS)].to_numpy(dtype=np.float64)[val_rows]
    val_targets = contract.votes_to_targets(val_votes)
    train_targets_all = contract.votes_to_targets(index[list(contract.VOTE_COLUMNS)].to_numpy(dtype=np.float64)[train_rows])
    prior = np.broadcast_to(train_targets_all.mean(0), val_targets.shape)
    prior_kl = kaggle_kl(val_targets, prior)
    base_key = make_run_key("transfer", source_fingerprint(source), sha256_file(pretrained_path),
                            sha256_file(folds_csv), dataclasses.asdict(cfg))

    # The same subsets for both inits: the pretrained - random difference is paired per repeat.
    subsets = {float(f): repeated_subsets(train_rows, index, float(f), cfg) for f in cfg.label_fractions}

    runs: list[dict[str, Any]] = []
    n_runs = len(encoders) * len(cfg.modes) * sum(len(s) for s in subsets.values())
    features: dict[tuple[str, str], np.ndarray] = {}
    for init, encoder in encoders.items():
        encoder = encoder.to(device).eval()
        if "frozen" in cfg.modes:
            features[(init, "val")] = _predict(encoder, val_data, batch_size=cfg.engine.batch_size, feature=True)
            features[(init, "train")] = _predict(encoder, windows.dataset(train_rows), batch_size=cfg.engine.batch_size,
                                                 feature=True)
        for mode in cfg.modes:
            for fraction, repeats in subsets.items():
                for repeat, rows, n_patients in repeats:
                    t_run = time.time()
                    name = f"{init}_{mode}_{fraction:g}_r{repeat}"
                    run_key = make_run_key(base_key, name)
                    if mode == "frozen":
                        positions = np.searchsorted(train_rows, rows)
                        probs, curve = _run_frozen(
                            features[(init, "train")][positions], vote_targets(index.iloc[rows]),
                            features[(init, "val")], val_targets, cfg,
                            feature_stats=(features[(init, "train")].mean(0, keepdims=True),
                                           features[(init, "train")].std(0, keepdims=True) + 1e-6),
                            checkpoint_dir=Path(checkpoint_dir) / name, run_key=run_key)
                    else:
                        probs, curve = _run_finetune(encoder, windows.dataset(rows), val_data, cfg,
                                                     checkpoint_dir=Path(checkpoint_dir) / name, run_key=run_key)
                    scores = score_predictions(val_votes, probs)
                    runs.append({
                        "init": init, "mode": mode, "label_fraction": fraction, "repeat": repeat,
                        "n_train_windows": int(len(rows)), "n_train_patients": int(n_patients),
                        "train_patient_ids": sorted(int(p) for p in np.unique(index["patient_id"].to_numpy()[rows])),
                        "val_kl": scores["kl_all"], "val_kl_per_epoch": curve,
                        "val_kl_high_vote": scores["kl_high_vote"], "val_acc_high_vote": scores["acc_high_vote"],
                        "seconds": time.time() - t_run,
                    })
                    logger.info("transfer %s: val KL %.4f (%d windows of %d patients)", name, scores["kl_all"],
                                len(rows), n_patients)
                    update_status(status_path, "transfer", stage="transfer", done=len(runs), total=n_runs,
                                  last_run=name, elapsed_s=time.time() - started)
        encoder.cpu()

    summary = _summarise(runs, prior_kl)
    result = {
        "val_fold": cfg.val_fold,
        "n_val_windows": int(len(val_rows)),
        "n_val_high_vote": int((val_votes.sum(1) >= contract.HIGH_VOTE_THRESHOLD).sum()),
        "n_train_windows": int(len(train_rows)),
        "n_train_patients": int(len(np.unique(index["patient_id"].to_numpy()[train_rows]))),
        "val_kl_prior": prior_kl,
        "label_fractions": [float(f) for f in cfg.label_fractions],
        "repeats": cfg.repeats,
        "floor": {"min_patients": cfg.min_patients, "min_windows": cfg.min_windows},
        "epochs": {"finetune": cfg.engine.epochs, "frozen": cfg.probe_epochs},
        "runs": runs,
        "summary": summary,
        "conclusion": _conclusion(summary, prior_kl),
        "notes": (f"one validation fold (fold {cfg.val_fold}), whose patients the encoder was not pretrained on "
                  "(pretrain.holdout_fold); repeats differ in their patient subset only (one training seed); "
                  "std is the sample standard deviation over repeats; the last epoch is scored"),
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
        fold = "no fold" if not holdout else f"fold {holdout['fold']}"
        raise DataError(pretrained_path, f"the encoder was pretrained on windows of {len(seen)} validation "
                                         f"patient(s) of transfer.val_fold {val_fold} (e.g. {seen[:3]}); it held "
                                         f"out {fold}: set pretrain.holdout_fold to {val_fold}")


def _stats(values: Sequence[float]) -> dict[str, Any]:
    """``{mean, std, values}``; std is the sample standard deviation (None for one value)."""
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else None,
            "values": [float(v) for v in arr]}


def _summarise(runs: list[dict[str, Any]], prior_kl: float) -> dict[str, dict[str, dict[str, Any]]]:
    """Per mode and fraction: each init's KL over repeats, the paired difference, the prior distance."""
    cells: dict[tuple[str, str], dict[str, dict[int, dict[str, Any]]]] = {}
    for run in runs:
        key = (run["mode"], f"{run['label_fraction']:g}")
        cells.setdefault(key, {}).setdefault(run["init"], {})[run["repeat"]] = run
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for (mode, fraction), by_init in cells.items():
        cell: dict[str, Any] = {}
        for init, by_repeat in by_init.items():
            cell[init] = {**_stats([r["val_kl"] for r in by_repeat.values()])}
            cell[init]["vs_prior"] = cell[init]["mean"] - prior_kl
        any_init = next(iter(by_init.values()))
        cell["n_repeats"] = len(any_init)
        cell["n_train_windows"] = _stats([r["n_train_windows"] for r in any_init.values()])
        cell["n_train_patients"] = _stats([r["n_train_patients"] for r in any_init.values()])
        if "pretrained" in by_init and "random" in by_init:
            paired = sorted(set(by_init["pretrained"]) & set(by_init["random"]))
            cell["paired_diff"] = _stats([by_init["pretrained"][r]["val_kl"] - by_init["random"][r]["val_kl"]
                                          for r in paired])
        summary.setdefault(mode, {})[fraction] = cell
    return summary


def _pm(stats: Mapping[str, Any]) -> str:
    return f"{stats['mean']:.3f}" + ("" if stats["std"] is None else f" +- {stats['std']:.3f}")


def _conclusion(summary: Mapping[str, Mapping[str, Mapping[str, Any]]], prior_kl: float) -> str:
    """One factual sentence per mode and fraction from the measured numbers."""
    parts = [f"validation KL (lower is better; mean +- sd over patient subsets); prior {prior_kl:.3f}"]
    for mode, cells in summary.items():
        for fraction, cell in cells.items():
            arms = [f"{init} {_pm(cell[init])} ({cell[init]['vs_prior']:+.3f} vs prior)"
                    for init in ("pretrained", "random") if init in cell]
            text = (f"{mode} at fraction {fraction} ({cell['n_repeats']} subset(s), "
                    f"~{cell['n_train_windows']['mean']:.0f} windows of ~{cell['n_train_patients']['mean']:.0f} "
                    f"patients): {', '.join(arms)}")
            if "paired_diff" in cell:
                diff = cell["paired_diff"]
                verdict = ""
                if diff["std"] is not None:
                    verdict = ("; pretraining helped" if diff["mean"] + diff["std"] < 0 else
                               "; pretraining hurt" if diff["mean"] - diff["std"] > 0 else
                               "; no difference beyond the spread")
                text += f"; paired pretrained - random {_pm(diff)}{verdict}"
            parts.append(text)
    return "; ".join(parts[:1]) + ". " + ". ".join(parts[1:]) + "."
