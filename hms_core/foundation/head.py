"""The pretraining model: the foundation encoder plus one head per enabled objective."""
from __future__ import annotations

import torch
from torch import nn

from hms_core.errors import ConfigError
from hms_core.foundation.objectives import (
    ObjectivesConfig,
    augment_view,
    fourier_targets,
    info_nce,
    masked_reconstruction_loss,
    random_crops,
    random_patch_mask,
)


class PretrainModel(nn.Module):
    """Encoder plus the objectives' heads; ``forward(chains_uv) -> (loss, parts)``.

    Parameters
    ----------
    encoder : nn.Module
        The encoder being pretrained (any of :mod:`hms_core.models.encoder_registry`).
    objectives : ObjectivesConfig
        Which objectives run and their weights.
    random_crop : bool
        Anchor crops at random positions in the window (True) or at the centre.
    """

    def __init__(self, encoder: nn.Module, objectives: ObjectivesConfig, *, random_crop: bool = True):
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
            ``(B, C, T)`` in uV of the encoder's ``input_field``, ``T >= encoder.used_samples``.
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
            z_a = self.projector(enc.forward_features(augment_view(anchor, obj.contrastive, enc.hemisphere_swap)))
            z_b = self.projector(enc.forward_features(augment_view(shifted, obj.contrastive, enc.hemisphere_swap)))
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
