"""Batch augmentations on device tensors (main process, global torch RNG, so resume is exact).

- hemisphere swap: left/right mirror of the montage (chains by ``contract.CHAIN_HEMISPHERE_SWAP``,
  referential channels by ``contract.REFERENTIAL_HEMISPHERE_SWAP`` (midline unchanged),
  spectrogram regions LL<->RL, LP<->RP); labels unchanged. Also the test-time augmentation.
- time shift: circular shift of the signal fields (chains, referential) along time, the same
  shift for every signal field of a window.
- channel masking (signal fields) and time / frequency masking (all fields; SpecAugment style;
  spectrogram cells are set to the window's mean log power, signal samples to 0 uV).
- mixup of inputs and soft targets.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import torch

from hms_core import contract
from hms_core.errors import ConfigError

_REGION_MIRROR = {"LL": "RL", "RL": "LL", "LP": "RP", "RP": "LP"}
REGION_HEMISPHERE_SWAP = tuple(contract.SPEC_REGIONS.index(_REGION_MIRROR[r])
                               for r in contract.SPEC_REGIONS)
CHAIN_FIELD = "chains"
REFERENTIAL_FIELD = "referential"
SIGNAL_FIELDS = (CHAIN_FIELD, REFERENTIAL_FIELD)  # (B, channels, samples) in uV
SIGNAL_SWAPS = {CHAIN_FIELD: contract.CHAIN_HEMISPHERE_SWAP,
                REFERENTIAL_FIELD: contract.REFERENTIAL_HEMISPHERE_SWAP}


@dataclasses.dataclass
class AugmentConfig:
    """Augmentation settings (config ``training.augment``); probabilities are per window.

    Parameters
    ----------
    hemisphere_swap_p : float, default 0.5
        Probability that a window's left and right hemispheres are swapped.
    time_shift_max_s : float, default 5.0
        Largest circular shift of the signal fields (chains, referential), in s (0 disables).
    channel_mask_p : float, default 0.05
        Probability that each channel of a window's signal fields (chains, referential) is zeroed.
    time_mask_p : float, default 0.3
        Probability that a window gets one zeroed time stretch (every field).
    time_mask_max_frac : float, default 0.1
        Longest masked stretch as a fraction of the time axis.
    freq_mask_p : float, default 0.3
        Probability of one zeroed frequency band in each spectrogram field.
    freq_mask_max_frac : float, default 0.1
        Widest masked band as a fraction of the frequency axis.
    mixup_alpha : float, default 0.0
        Beta(alpha, alpha) mixup of inputs and targets per batch; 0 disables.
    mixup_p : float, default 0.5
        Probability that a batch is mixed.
    """

    hemisphere_swap_p: float = 0.5
    time_shift_max_s: float = 5.0
    channel_mask_p: float = 0.05
    time_mask_p: float = 0.3
    time_mask_max_frac: float = 0.1
    freq_mask_p: float = 0.3
    freq_mask_max_frac: float = 0.1
    mixup_alpha: float = 0.0
    mixup_p: float = 0.5

    def validate(self, path: str = "training.augment") -> None:
        """Every probability, fraction and length must be >= 0."""
        for f in dataclasses.fields(self):
            if float(getattr(self, f.name)) < 0:
                raise ConfigError(f"{path}.{f.name}: must be >= 0")


def swap_hemispheres(x: torch.Tensor, field: str) -> torch.Tensor:
    """Mirror left and right: chains ``(B, 18, T)``, referential channels ``(B, 19, T)`` or
    region spectrograms ``(B, 4, F, T)``."""
    perm = SIGNAL_SWAPS.get(field, REGION_HEMISPHERE_SWAP)
    if x.shape[1] != len(perm):
        raise ValueError(f"{field}: expected {len(perm)} channels on axis 1, got {tuple(x.shape)}")
    return x[:, list(perm)]


def swap_hemispheres_where(x: torch.Tensor, field: str, swap: torch.Tensor) -> torch.Tensor:
    """:func:`swap_hemispheres` of the windows where ``swap (B,)`` is true, the others kept:
    one gather of channels (not a mirrored copy and a select)."""
    perm = SIGNAL_SWAPS.get(field, REGION_HEMISPHERE_SWAP)
    if x.shape[1] != len(perm):
        raise ValueError(f"{field}: expected {len(perm)} channels on axis 1, got {tuple(x.shape)}")
    mirrored = torch.tensor(perm, device=x.device)
    channels = torch.where(swap[:, None], mirrored, torch.arange(len(perm), device=x.device))  # (B, C)
    return x[torch.arange(x.shape[0], device=x.device)[:, None], channels]


def _stretch_mask(n: int, length: int, max_frac: float, device) -> torch.Tensor:
    """``(n, length)`` bool: one random stretch of up to ``max_frac * length`` per row."""
    span = (torch.rand(n, device=device) * max_frac * length).long()
    start = (torch.rand(n, device=device) * (length - span + 1).float()).long()
    pos = torch.arange(length, device=device)
    return (pos >= start[:, None]) & (pos < (start + span)[:, None])


def _neutral(x: torch.Tensor, field: str) -> torch.Tensor:
    """Fill value of masked cells: 0 uV for signal fields, each window's mean for log-power images
    (a 0 in log power would be an extreme outlier after the model's normalisation)."""
    if field in SIGNAL_FIELDS:
        return torch.zeros((), dtype=x.dtype, device=x.device)
    return x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)


def time_shift(x: torch.Tensor, max_shift: int, *, shift: torch.Tensor | None = None) -> torch.Tensor:
    """Circularly shift each row of ``x (B, C, T)`` by a random -max..max samples.

    ``shift (B,)`` (samples) replaces the random draw, so several fields of a window can
    share one shift.
    """
    b, _, t = x.shape
    if shift is None:
        shift = torch.randint(-max_shift, max_shift + 1, (b,), device=x.device)
    idx = (torch.arange(t, device=x.device)[None, :] - shift[:, None]) % t
    return torch.gather(x, 2, idx[:, None, :].expand_as(x))


def mixup(inputs: Mapping[str, torch.Tensor], target: torch.Tensor, lam: float,
          perm: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Convex mix ``lam * a + (1 - lam) * a[perm]`` of every input and the soft targets."""
    mixed = {k: lam * v + (1.0 - lam) * v[perm] for k, v in inputs.items()}
    return mixed, lam * target + (1.0 - lam) * target[perm]


def augment_batch(batch: dict[str, torch.Tensor], fields: tuple[str, ...],
                  cfg: AugmentConfig) -> dict[str, torch.Tensor]:
    """Apply the configured augmentations to ``batch[fields]`` and ``batch["target"]``.

    The random draws come first, in a fixed order (swap, time shift, channel masks, time
    masks, frequency masks, mixup). Then per field: swap, time shift (signal fields), one
    select for the masks (signal fields: channel and time masks, both 0 uV), frequency mask
    (spectrograms).
    """
    out = dict(batch)
    first = out[fields[0]]
    n, device = first.shape[0], first.device
    signals = [f for f in fields if f in SIGNAL_FIELDS]
    swap = torch.rand(n, device=device) < cfg.hemisphere_swap_p if cfg.hemisphere_swap_p > 0 else None
    shift = None
    if signals:
        max_shift = int(cfg.time_shift_max_s * contract.SAMPLING_RATE_HZ)
        max_shift = min(max_shift, min(out[f].shape[-1] for f in signals) - 1)
        if max_shift > 0:
            shift = torch.randint(-max_shift, max_shift + 1, (n,), device=device)
    dropped = ({f: torch.rand(out[f].shape[:2], device=device) < cfg.channel_mask_p for f in signals}
               if cfg.channel_mask_p > 0 else {})
    time_masks = {}
    if cfg.time_mask_p > 0 and cfg.time_mask_max_frac > 0:
        hit = torch.rand(n, device=device) < cfg.time_mask_p
        time_masks = {f: _stretch_mask(n, out[f].shape[-1], cfg.time_mask_max_frac, device) & hit[:, None]
                      for f in fields}
    for f in fields:
        x = out[f]
        if f in SIGNAL_FIELDS:
            if swap is not None:
                x = swap_hemispheres_where(x, f, swap)
            if shift is not None:
                x = time_shift(x, 0, shift=shift)
            masks = ([dropped[f][:, :, None]] if f in dropped else []) + (
                [time_masks[f][:, None, :]] if f in time_masks else [])
            if masks:
                zero = masks[0] if len(masks) == 1 else masks[0] | masks[1]
                x = torch.where(zero, _neutral(x, f), x)
        else:
            if swap is not None:
                x = swap_hemispheres_where(x, f, swap)
            if f in time_masks:
                mask = time_masks[f].view(n, *([1] * (x.ndim - 2)), x.shape[-1])
                x = torch.where(mask, _neutral(x, f), x)
        out[f] = x
    if cfg.freq_mask_p > 0 and cfg.freq_mask_max_frac > 0:
        for f in fields:
            x = out[f]
            if x.ndim != 4:
                continue
            hit = torch.rand(n, device=device) < cfg.freq_mask_p
            mask = _stretch_mask(n, x.shape[2], cfg.freq_mask_max_frac, device) & hit[:, None]
            out[f] = torch.where(mask[:, None, :, None], _neutral(x, f), x)
    if cfg.mixup_alpha > 0 and float(torch.rand(())) < cfg.mixup_p:
        lam = float(torch.distributions.Beta(cfg.mixup_alpha, cfg.mixup_alpha).sample())
        perm = torch.randperm(n, device=device)
        mixed, out["target"] = mixup({f: out[f] for f in fields}, out["target"], lam, perm)
        out.update(mixed)
        if "n_votes" in out:
            out["n_votes"] = lam * out["n_votes"] + (1 - lam) * out["n_votes"][perm]
    return out
