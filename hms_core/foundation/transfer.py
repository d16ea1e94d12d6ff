"""Transfer study: does the pretrained foundation encoder help a classifier?

For each encoder initialisation (``pretrained`` from the pretraining step, ``random``:
the same architecture freshly initialised), each mode (``frozen``: the encoder frozen,
a linear head trained on its features; ``finetune``: encoder and head trained together)
and each label fraction (patient-grouped subsets of the training folds), a classifier is
trained with the engine on the vote distributions (KL loss) of folds != ``val_fold`` and
scored by Kaggle's KL on ``val_fold``. The last epoch's score is reported: no epoch is
picked on the validation fold, so the comparison is not tuned to it.

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
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn

from hms_core import atomic, contract
from hms_core.config import FLATTEN, check_option, from_mapping
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
from hms_core.train.losses import kl_loss
from hms_core.foundation.pretrain import source_fingerprint

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
    if not folds_path.exists():
        raise DataError(folds_path, "folds file not found")
    folds = pd.read_csv(folds_path)
    missing = {"label_id", "fold"} - set(folds.columns)
    if missing:
        raise DataError(folds_path, f"missing column(s) {sorted(missing)}")
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


def patient_subset(rows: np.ndarray, index: pd.DataFrame, fraction: float, seed: int) -> tuple[np.ndarray, int]:
    """Rows of a random ``fraction`` of the patients among ``rows`` (at least one patient).

    Returns ``(rows, n_patients)``.
    """
    patients = np.unique(index["patient_id"].to_numpy()[rows])
    if fraction >= 1:
        return rows, len(patients)
    n_keep = max(1, int(math.ceil(fraction * len(patients))))
    keep = np.random.default_rng(seed).choice(patients, n_keep, replace=False)
    return rows[np.isin(index["patient_id"].to_numpy()[rows], keep)], n_keep


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
        ``runs`` (one per init x mode x fraction: ``val_kl`` = Kaggle KL of the last epoch
        on the validation fold, its per-epoch curve, high-vote KL and accuracy),
        ``summary[mode][fraction]`` = ``{pretrained, random, gain}`` (gain = random KL -
        pretrained KL; positive means pretraining helped), ``val_kl_prior`` (KL of
        predicting the training folds' mean vote distribution), split sizes, ``conclusion``.
    """
    cfg = cfg if isinstance(cfg, TransferConfig) else from_mapping(TransferConfig, cfg, "transfer")
    started = time.time()
    source = open_window_source(store_paths)
    train_rows, val_rows, index = _split_rows(source, folds_csv, cfg)
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
    base_key = make_run_key("transfer", source_fingerprint(source), sha256_file(pretrained_path),
                            sha256_file(folds_csv), dataclasses.asdict(cfg))

    subsets = {}
    for fraction in cfg.label_fractions:
        rows, n_patients = patient_subset(train_rows, index, float(fraction), cfg.engine.seed)
        subsets[float(fraction)] = (rows, n_patients)

    runs: list[dict[str, Any]] = []
    n_runs = len(encoders) * len(cfg.modes) * len(subsets)
    features: dict[tuple[str, str], np.ndarray] = {}
    for init, encoder in encoders.items():
        encoder = encoder.to(device).eval()
        if "frozen" in cfg.modes:
            features[(init, "val")] = _predict(encoder, val_data, batch_size=cfg.engine.batch_size, feature=True)
            features[(init, "train")] = _predict(encoder, windows.dataset(train_rows), batch_size=cfg.engine.batch_size,
                                                 feature=True)
        for mode in cfg.modes:
            for fraction, (rows, n_patients) in subsets.items():
                t_run = time.time()
                name = f"{init}_{mode}_{fraction:g}"
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
                    "init": init, "mode": mode, "label_fraction": fraction, "n_train_windows": int(len(rows)),
                    "n_train_patients": int(n_patients), "val_kl": scores["kl_all"], "val_kl_per_epoch": curve,
                    "val_kl_high_vote": scores["kl_high_vote"], "val_acc_high_vote": scores["acc_high_vote"],
                    "seconds": time.time() - t_run,
                })
                logger.info("transfer %s: val KL %.4f (%d windows)", name, scores["kl_all"], len(rows))
                update_status(status_path, "transfer", stage="transfer", done=len(runs), total=n_runs,
                              last_run=name, elapsed_s=time.time() - started)
        encoder.cpu()

    summary = _summarise(runs)
    result = {
        "val_fold": cfg.val_fold,
        "n_val_windows": int(len(val_rows)),
        "n_val_high_vote": int((val_votes.sum(1) >= contract.HIGH_VOTE_THRESHOLD).sum()),
        "n_train_windows": int(len(train_rows)),
        "val_kl_prior": kaggle_kl(val_targets, prior),
        "label_fractions": [float(f) for f in cfg.label_fractions],
        "epochs": {"finetune": cfg.engine.epochs, "frozen": cfg.probe_epochs},
        "runs": runs,
        "summary": summary,
        "conclusion": _conclusion(summary, kaggle_kl(val_targets, prior)),
        "notes": ("single seed, one validation fold; pretraining saw every window of the stores "
                  "(the validation fold included) without labels; the last epoch is scored"),
        "seconds": time.time() - started,
    }
    atomic.write_json(out_json, result)
    logger.info("transfer study: %s", result["conclusion"])
    return result


def _summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for run in runs:
        cell = summary.setdefault(run["mode"], {}).setdefault(f"{run['label_fraction']:g}", {})
        cell[run["init"]] = run["val_kl"]
    for cells in summary.values():
        for cell in cells.values():
            if "pretrained" in cell and "random" in cell:
                cell["gain"] = cell["random"] - cell["pretrained"]
    return summary


def _conclusion(summary: Mapping[str, Mapping[str, Mapping[str, float]]], prior_kl: float) -> str:
    """One factual sentence per mode from the measured numbers."""
    parts = []
    for mode, cells in summary.items():
        gains = {frac: cell["gain"] for frac, cell in cells.items() if "gain" in cell}
        better = [frac for frac, gain in gains.items() if gain > 0]
        best = min(cell.get("pretrained", math.inf) for cell in cells.values())
        parts.append(
            f"{mode}: pretrained lower KL than random init at {len(better)} of {len(gains)} label fractions "
            f"(gains {', '.join(f'{f}: {g:+.3f}' for f, g in gains.items())}); "
            f"best pretrained KL {best:.3f} vs prior {prior_kl:.3f}"
        )
    return "; ".join(parts)
