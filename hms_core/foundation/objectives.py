"""The self-supervised pretraining objectives: their config, masks, targets, losses and views.

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

The heads that apply them to the encoder are in :mod:`hms_core.foundation.head`.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch
import torch.nn.functional as F

from hms_core import contract
from hms_core.config import check_option
from hms_core.errors import ConfigError

MaskTarget = Literal["time", "fourier", "both"]
MASK_TARGETS = typing.get_args(MaskTarget)


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
    target : {"time", "fourier", "both"}
        What a masked token reconstructs: ``"time"`` (scaled samples), ``"fourier"``
        (log-amplitude and phase) or ``"both"`` (default).
    """

    enabled: bool = True
    weight: float = 1.0
    mask_ratio: float = 0.5
    target: MaskTarget = "both"

    def validate(self, path: str = "pretrain.objectives.masked") -> None:
        """The mask ratio must lie in (0, 1) and the target be one of ``MASK_TARGETS``."""
        if not 0 < self.mask_ratio < 1:
            raise ConfigError(f"{path}.mask_ratio: expected 0 < ratio < 1, got {self.mask_ratio!r}")
        check_option(f"{path}.target", self.target, MASK_TARGETS)


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

    def validate(self, path: str = "pretrain.objectives.contrastive") -> None:
        """Raise ConfigError naming ``<path>.<key>`` for a setting out of range."""
        if not self.temperature > 0:
            raise ConfigError(f"{path}.temperature: expected > 0, got {self.temperature!r}")
        for key in ("chain_drop_prob", "swap_prob"):
            value = getattr(self, key)
            if not 0 <= value <= 1:
                raise ConfigError(f"{path}.{key}: expected 0..1, got {value!r}")
        if self.max_shift_s < 0 or self.noise_uv < 0:
            raise ConfigError(f"{path}: max_shift_s and noise_uv must be >= 0")


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

    def validate(self, path: str = "pretrain.objectives.temporal") -> None:
        """At least one patch must be forecast."""
        if not isinstance(self.n_future, int) or self.n_future < 1:
            raise ConfigError(f"{path}.n_future: expected an integer >= 1, got {self.n_future!r}")


@dataclass
class ObjectivesConfig:
    """The three pretraining objectives (``pretrain.objectives``)."""

    masked: MaskedConfig = field(default_factory=MaskedConfig)
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    temporal: TemporalConfig = field(default_factory=TemporalConfig)

    def validate(self, path: str = "pretrain.objectives") -> None:
        """Each objective's settings, weights >= 0, and at least one objective enabled."""
        for name in ("masked", "contrastive", "temporal"):
            sub = getattr(self, name)
            sub.validate(f"{path}.{name}")
            if sub.weight < 0:
                raise ConfigError(f"{path}.{name}.weight: expected >= 0, got {sub.weight!r}")
        if not self.enabled_names():
            raise ConfigError(f"{path}: enable at least one of masked, contrastive, temporal")

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


def augment_view(chains_uv: torch.Tensor, cfg: ContrastiveConfig,
                 swap_index: Sequence[int] | None = contract.CHAIN_HEMISPHERE_SWAP) -> torch.Tensor:
    """One random view of ``chains_uv (B, C, T)`` in uV: channel dropout, noise, hemisphere swap.

    ``swap_index`` is the channel order of the mirrored head (the encoder's
    ``hemisphere_swap``: chains or referential channels); None or another length: no swap.
    """
    batch, n_chans, _ = chains_uv.shape
    device = chains_uv.device
    view = chains_uv
    if cfg.swap_prob > 0 and swap_index is not None and len(swap_index) == n_chans:
        swap = torch.rand(batch, device=device) < cfg.swap_prob
        swapped = view[:, list(swap_index)]
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
