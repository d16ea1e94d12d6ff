"""Self-supervised pretraining of the EEG foundation encoder.

Three objectives, each switchable and weighted in the ``pretrain.objectives`` config:

masked
    Masked EEG modelling (LaBraM-style): a fraction of the (chain, patch) tokens is
    replaced by a learned mask token; a linear decoder reconstructs the masked patches'
    time signal and/or their Fourier log-amplitude and phase (as cos/sin). The loss is a
    mean squared error over the masked patches only.
contrastive
    Two augmented views of each window (time shift, chain dropout, Gaussian noise,
    left/right hemisphere swap via ``contract.CHAIN_HEMISPHERE_SWAP``); a projector MLP
    and the symmetric InfoNCE (NT-Xent) loss pull the two views of a window together
    and push other windows in the batch away.
temporal
    Forecasting: the last ``n_future`` patches of every chain are hidden (mask token) and
    a linear head predicts their Fourier log-amplitude from the past patches alone (MSE
    over the hidden patches). A fixed per-patch target, so the objective cannot collapse.
    (A shuffled-segment order classifier was tried first: on the synthetic demo data it
    stayed at chance, ln 6, after 8 epochs, so it was replaced.)

Every window of the stores is used, labelled or not (low-vote rows included); labels
are never read. The loop is :mod:`hms_core.train.engine` (epoch/step checkpoints,
emergency save on SIGTERM, exact resume).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hms_core import contract
from hms_core.errors import ConfigError
from hms_core.config import dataclass_from_dict
from hms_core.models.foundation import (
    EEGFoundationEncoder,
    FoundationModelConfig,
    n_parameters,
    save_foundation,
)
from hms_core.train.checkpoint import make_run_key
from hms_core.train.data import identity_collate
from hms_core.train.engine import EngineConfig, fit

logger = logging.getLogger(__name__)

MASK_TARGETS = ("time", "fourier", "both")


@dataclass
class MaskedConfig:
    """Masked EEG modelling (``pretrain.objectives.masked``).

    Parameters
    ----------
    enabled : bool
        Use this objective (default True).
    weight : float
        Weight of its loss in the total (default 1.0).
    mask_ratio : float
        Fraction of (chain, patch) tokens masked per window (default 0.5).
    target : str
        ``"time"`` (scaled samples), ``"fourier"`` (log-amplitude and phase) or ``"both"``
        (default).
    """

    enabled: bool = True
    weight: float = 1.0
    mask_ratio: float = 0.5
    target: str = "both"

    def validate(self) -> None:
        if not 0 < self.mask_ratio < 1:
            raise ConfigError(f"pretrain.objectives.masked.mask_ratio: expected 0 < ratio < 1, got {self.mask_ratio!r}")
        if self.target not in MASK_TARGETS:
            raise ConfigError(f"pretrain.objectives.masked.target: {self.target!r} is not one of {list(MASK_TARGETS)}")


@dataclass
class ContrastiveConfig:
    """Two-view contrastive learning (``pretrain.objectives.contrastive``).

    Parameters
    ----------
    enabled : bool
        Use this objective (default True).
    weight : float
        Weight of its loss (default 1.0).
    temperature : float
        InfoNCE temperature (default 0.1).
    projection_dim : int
        Output width of the projector MLP (default 64).
    max_shift_s : float
        The second view's crop is shifted by up to this many s (default 2.0).
    chain_drop_prob : float
        Probability that a chain is zeroed in a view (default 0.1).
    noise_uv : float
        Standard deviation of added Gaussian noise in uV (default 5.0).
    swap_prob : float
        Probability that a view's hemispheres are swapped (default 0.5).
    """

    enabled: bool = True
    weight: float = 1.0
    temperature: float = 0.1
    projection_dim: int = 64
    max_shift_s: float = 2.0
    chain_drop_prob: float = 0.1
    noise_uv: float = 5.0
    swap_prob: float = 0.5

    def validate(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"pretrain.objectives.contrastive.temperature: expected > 0, got {self.temperature!r}")
        for key in ("chain_drop_prob", "swap_prob"):
            value = getattr(self, key)
            if not 0 <= value <= 1:
                raise ConfigError(f"pretrain.objectives.contrastive.{key}: expected 0..1, got {value!r}")
        if self.max_shift_s < 0 or self.noise_uv < 0:
            raise ConfigError("pretrain.objectives.contrastive: max_shift_s and noise_uv must be >= 0")


@dataclass
class TemporalConfig:
    """Temporal prediction of the next patches (``pretrain.objectives.temporal``).

    Parameters
    ----------
    enabled : bool
        Use this objective (default True).
    weight : float
        Weight of its loss (default 1.0).
    n_future : int
        Patches (s, with 1 s patches) at the end of the crop that are forecast from the
        ones before (default 2).
    """

    enabled: bool = True
    weight: float = 1.0
    n_future: int = 2

    def validate(self) -> None:
        if not isinstance(self.n_future, int) or self.n_future < 1:
            raise ConfigError(f"pretrain.objectives.temporal.n_future: expected an integer >= 1, got {self.n_future!r}")


@dataclass
class ObjectivesConfig:
    """The three pretraining objectives (``pretrain.objectives``)."""

    masked: MaskedConfig = field(default_factory=MaskedConfig)
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    temporal: TemporalConfig = field(default_factory=TemporalConfig)

    @classmethod
    def from_dict(cls, d: Mapping | None) -> "ObjectivesConfig":
        d = dict(d or {})
        unknown = sorted(set(d) - {"masked", "contrastive", "temporal"})
        if unknown:
            raise ConfigError(f"pretrain.objectives: unknown key(s) {unknown}; allowed: ['contrastive', 'masked', 'temporal']")
        cfg = cls(
            masked=dataclass_from_dict(MaskedConfig, d.get("masked"), section="pretrain.objectives.masked"),
            contrastive=dataclass_from_dict(ContrastiveConfig, d.get("contrastive"), section="pretrain.objectives.contrastive"),
            temporal=dataclass_from_dict(TemporalConfig, d.get("temporal"), section="pretrain.objectives.temporal"),
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for name in ("masked", "contrastive", "temporal"):
            sub = getattr(self, name)
            sub.validate()
            if sub.weight < 0:
                raise ConfigError(f"pretrain.objectives.{name}.weight: expected >= 0, got {sub.weight!r}")
        if not self.enabled_names():
            raise ConfigError("pretrain.objectives: enable at least one of masked, contrastive, temporal")

    def enabled_names(self) -> tuple[str, ...]:
        return tuple(n for n in ("masked", "contrastive", "temporal") if getattr(self, n).enabled)


# ----------------------------------------------------------------------------- objective pieces


def random_patch_mask(batch: int, n_chans: int, n_patches: int, ratio: float, *, device=None) -> torch.Tensor:
    """Boolean ``(batch, n_chans, n_patches)``: exactly ``round(ratio * n_chans * n_patches)`` True per row."""
    n_tokens = n_chans * n_patches
    n_masked = min(n_tokens - 1, max(1, int(round(ratio * n_tokens))))
    ranks = torch.rand(batch, n_tokens, device=device).argsort(dim=1).argsort(dim=1)
    return (ranks < n_masked).view(batch, n_chans, n_patches)


def fourier_targets(patches: torch.Tensor) -> torch.Tensor:
    """Log-amplitude, cos and sin of the phase of each patch: ``(..., L) -> (..., 3 * (L // 2 + 1))``."""
    spectrum = torch.fft.rfft(patches.float(), dim=-1)
    phase = torch.angle(spectrum)
    return torch.cat([torch.log1p(spectrum.abs()), torch.cos(phase), torch.sin(phase)], dim=-1)


def masked_reconstruction_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked patches only.

    Parameters
    ----------
    prediction, target : torch.Tensor
        ``(B, C, P, F)`` per-patch vectors.
    mask : torch.Tensor
        Boolean ``(B, C, P)``; unmasked patches do not enter the loss.
    """
    per_patch = (prediction - target).pow(2).mean(dim=-1)  # (B, C, P)
    weights = mask.to(per_patch.dtype)
    return (per_patch * weights).sum() / weights.sum().clamp_min(1.0)


def info_nce(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE (NT-Xent): ``z_a[i]`` and ``z_b[i]`` are positives, all else negatives."""
    z = F.normalize(torch.cat([z_a, z_b]), dim=1)  # (2B, D)
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), float("-inf"))
    batch = len(z_a)
    positives = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)]).to(z.device)
    return F.cross_entropy(logits, positives)


def augment_view(chains_uv: torch.Tensor, cfg: ContrastiveConfig) -> torch.Tensor:
    """One random view of ``chains_uv (B, C, T)`` in uV: chain dropout, noise, hemisphere swap."""
    batch, n_chans, _ = chains_uv.shape
    device = chains_uv.device
    view = chains_uv
    if cfg.swap_prob > 0 and n_chans == contract.N_CHAINS:
        swap = torch.rand(batch, device=device) < cfg.swap_prob
        swapped = view[:, list(contract.CHAIN_HEMISPHERE_SWAP)]
        view = torch.where(swap[:, None, None], swapped, view)
    if cfg.chain_drop_prob > 0:
        keep = torch.rand(batch, n_chans, 1, device=device) >= cfg.chain_drop_prob
        view = view * keep
    if cfg.noise_uv > 0:
        view = view + cfg.noise_uv * torch.randn(view.shape, device=device)
    return view


def random_crops(chains_uv: torch.Tensor, length: int, *, max_shift: int, center: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Two crops of ``length`` samples per window: the anchor and one shifted by up to ``max_shift``.

    The anchor is the central crop when ``center`` is True, else uniformly random.
    Returns ``(anchor (B, C, length), shifted (B, C, length))``.
    """
    batch, _, n_times = chains_uv.shape
    room = n_times - length
    device = chains_uv.device
    if center:
        start = torch.full((batch,), room // 2, device=device)
    else:
        start = torch.randint(0, room + 1, (batch,), device=device)
    shift = torch.randint(-max_shift, max_shift + 1, (batch,), device=device) if max_shift > 0 else torch.zeros_like(start)
    shifted = (start + shift).clamp(0, room)
    offsets = torch.arange(length, device=device)

    def take(starts):
        index = (starts[:, None] + offsets[None, :])[:, None, :].expand(-1, chains_uv.shape[1], -1)
        return torch.gather(chains_uv, 2, index)

    return take(start), take(shifted)


class PretrainModel(nn.Module):
    """Encoder plus the objectives' heads; ``forward(chains_uv) -> (loss, parts)``.

    Parameters
    ----------
    encoder : EEGFoundationEncoder
        The encoder being pretrained.
    objectives : ObjectivesConfig
        Which objectives run and their weights.
    random_crop : bool
        Anchor crops at random positions in the window (True) or at the centre.
    """

    def __init__(self, encoder: EEGFoundationEncoder, objectives: ObjectivesConfig, *, random_crop: bool = True):
        super().__init__()
        self.encoder = encoder
        self.objectives = objectives
        self.random_crop = random_crop
        dim, length = encoder.dim, encoder.patch_samples
        n_freqs = length // 2 + 1
        masked = objectives.masked
        self.time_decoder = nn.Linear(dim, length) if masked.enabled and masked.target in ("time", "both") else None
        self.fourier_decoder = nn.Linear(dim, 3 * n_freqs) if masked.enabled and masked.target in ("fourier", "both") else None
        contrastive = objectives.contrastive
        self.projector = (
            nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, contrastive.projection_dim))
            if contrastive.enabled else None
        )
        if objectives.temporal.enabled:
            if objectives.temporal.n_future >= encoder.n_patches:
                raise ConfigError(
                    f"pretrain.objectives.temporal.n_future: {objectives.temporal.n_future} future patches "
                    f"leave no past in a crop of {encoder.n_patches} patches; choose fewer"
                )
            self.forecast_head = nn.Linear(dim, n_freqs)
        else:
            self.forecast_head = None

    def forward(self, chains_uv: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total weighted loss and the unweighted loss of each enabled objective.

        Parameters
        ----------
        chains_uv : torch.Tensor
            ``(B, C, T)`` chains in uV, ``T >= encoder.used_samples``.
        """
        enc, obj = self.encoder, self.objectives
        max_shift = int(round(obj.contrastive.max_shift_s * enc.sfreq)) if obj.contrastive.enabled else 0
        room = chains_uv.shape[2] - enc.used_samples
        anchor, shifted = random_crops(
            chains_uv, enc.used_samples, max_shift=min(max_shift, max(room, 0)), center=not self.random_crop
        )
        parts: dict[str, torch.Tensor] = {}
        if obj.masked.enabled:
            parts["masked"] = self._masked_loss(enc.patchify(anchor))
        if obj.contrastive.enabled:
            z_a = self.projector(enc.forward_features(augment_view(anchor, obj.contrastive)))
            z_b = self.projector(enc.forward_features(augment_view(shifted, obj.contrastive)))
            parts["contrastive"] = info_nce(z_a, z_b, obj.contrastive.temperature)
        if obj.temporal.enabled:
            parts["temporal"] = self._temporal_loss(enc.patchify(anchor))
        total = sum(getattr(obj, name).weight * loss for name, loss in parts.items())
        return total, parts

    def _masked_loss(self, patches: torch.Tensor) -> torch.Tensor:
        batch, n_chans, n_patches, _ = patches.shape
        mask = random_patch_mask(batch, n_chans, n_patches, self.objectives.masked.mask_ratio, device=patches.device)
        tokens = self.encoder.encode_patches(patches, mask=mask).view(batch, n_chans, n_patches, -1)
        losses = []
        if self.time_decoder is not None:
            losses.append(masked_reconstruction_loss(self.time_decoder(tokens), patches, mask))
        if self.fourier_decoder is not None:
            losses.append(masked_reconstruction_loss(self.fourier_decoder(tokens), fourier_targets(patches), mask))
        return sum(losses) / len(losses)

    def _temporal_loss(self, patches: torch.Tensor) -> torch.Tensor:
        batch, n_chans, n_patches, _ = patches.shape
        future = torch.zeros(batch, n_chans, n_patches, dtype=torch.bool, device=patches.device)
        future[:, :, n_patches - self.objectives.temporal.n_future:] = True
        tokens = self.encoder.encode_patches(patches, mask=future).view(batch, n_chans, n_patches, -1)
        target = torch.log1p(torch.fft.rfft(patches.float(), dim=-1).abs())
        return masked_reconstruction_loss(self.forecast_head(tokens), target, future)


# ----------------------------------------------------------------------------- config and run

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
    engine : dict
        Training-loop settings (``epochs, batch_size, lr, weight_decay, warmup_frac,
        seed, precision, num_workers, checkpoint_every_steps, grad_clip, device, progress,
        compile``), given at the top level of the section; see ``ENGINE_DEFAULTS``.
    """

    enabled: bool = True
    model: FoundationModelConfig = field(default_factory=FoundationModelConfig)
    objectives: ObjectivesConfig = field(default_factory=ObjectivesConfig)
    random_crop: bool = True
    max_windows: int | None = None
    engine: dict[str, Any] = field(default_factory=lambda: dict(ENGINE_DEFAULTS))

    @classmethod
    def from_dict(cls, d: Mapping | None) -> "PretrainConfig":
        d = dict(d or {})
        own = {"enabled", "model", "objectives", "random_crop", "max_windows"}
        unknown = sorted(set(d) - own - set(ENGINE_DEFAULTS))
        if unknown:
            raise ConfigError(
                f"pretrain: unknown key(s) {unknown}; allowed: {sorted(own | set(ENGINE_DEFAULTS))}"
            )
        engine = {**ENGINE_DEFAULTS, **{k: v for k, v in d.items() if k in ENGINE_DEFAULTS}}
        cfg = cls(
            enabled=bool(d.get("enabled", True)),
            model=FoundationModelConfig.from_dict(d.get("model")),
            objectives=ObjectivesConfig.from_dict(d.get("objectives")),
            random_crop=bool(d.get("random_crop", True)),
            max_windows=d.get("max_windows"),
            engine=engine,
        )
        if cfg.max_windows is not None and (not isinstance(cfg.max_windows, int) or cfg.max_windows < 2):
            raise ConfigError(f"pretrain.max_windows: expected an integer >= 2 or null, got {cfg.max_windows!r}")
        cfg.engine_config()  # validate now
        return cfg

    def engine_config(self) -> EngineConfig:
        try:
            return EngineConfig.from_dict(self.engine)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("training.", "pretrain.")) from exc

    def to_dict(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled, "model": dataclasses.asdict(self.model),
            "objectives": dataclasses.asdict(self.objectives), "random_crop": self.random_crop,
            "max_windows": self.max_windows, **self.engine,
        }


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


def open_source(store_paths: Any) -> Any:
    """A ``WindowStore`` over ``store_paths``, or ``store_paths`` itself when it already is a source."""
    if hasattr(store_paths, "read") and hasattr(store_paths, "index"):
        return store_paths
    from hms_core.store import WindowStore

    paths = [store_paths] if isinstance(store_paths, (str, bytes)) or hasattr(store_paths, "__fspath__") else list(store_paths)
    return WindowStore(paths)


def pretrain(
    store_paths: Any,
    cfg: PretrainConfig | Mapping | None,
    *,
    out_path,
    checkpoint_dir,
    threads: int = 1,
    status_path=None,
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
    threads : int
        torch CPU threads.
    status_path : path | None
        ``status/run.json`` for progress.

    Returns
    -------
    dict
        ``n_windows, n_parameters, epochs, global_step, resumed_from_step, seconds,
        loss_history`` (per epoch: ``total`` and each objective's unweighted loss),
        ``first_epoch_loss``, ``last_epoch_loss``.
    """
    cfg = cfg if isinstance(cfg, PretrainConfig) else PretrainConfig.from_dict(cfg)
    torch.set_num_threads(max(1, int(threads)))
    engine_cfg = cfg.engine_config()
    source = open_source(store_paths)
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
                           {k: v for k, v in cfg.to_dict().items() if k not in ENGINE_DEFAULTS})
    started = time.time()
    result = fit(
        model, loss_fn=loss_fn, train_data=ChainsDataset(source, rows), cfg=engine_cfg,
        checkpoint_dir=checkpoint_dir, run_key=run_key, status_path=status_path,
        status_job="pretrain", status_fields={"model": "eeg_foundation"},
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
