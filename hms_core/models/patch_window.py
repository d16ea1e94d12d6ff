"""What every foundation encoder does alike: cut the central patches of a window.

An encoder sees ``n_patches`` patches of ``patch_samples`` samples per channel, taken from
the middle of a ``(batch, n_chans, time)`` window in uV and divided by ``input_scale_uv``.
The encoders of :mod:`hms_core.models.encoder_registry` derive from :class:`PatchWindowEncoder`
and set those four attributes (plus ``n_times``, ``sfreq`` and, for :meth:`init_kwargs`,
``_kwargs``: their own size arguments).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class PatchWindowEncoder(nn.Module):
    """Base of the foundation encoders: central crop, patches, token count, rebuild kwargs and
    the forward passes built on the subclass's ``encode_patches``."""

    n_chans: int
    n_times: int
    sfreq: float
    n_patches: int
    patch_samples: int
    input_scale_uv: float

    def init_kwargs(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this encoder (plain Python types only)."""
        return {"n_chans": self.n_chans, "n_times": self.n_times, "sfreq": self.sfreq, **self._kwargs}

    @property
    def n_tokens(self) -> int:
        return self.n_chans * self.n_patches

    @property
    def used_samples(self) -> int:
        """Samples per channel that the encoder reads (the central ones)."""
        return self.n_patches * self.patch_samples

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """Central ``used_samples`` of ``x (B, C, T)`` -> ``(B, C, used_samples)``."""
        if x.ndim != 3 or x.shape[1] != self.n_chans:
            raise ValueError(f"{type(self).__name__} expects (batch, {self.n_chans}, time), "
                             f"got {tuple(x.shape)}")
        if x.shape[2] < self.used_samples:
            raise ValueError(f"{type(self).__name__} needs at least {self.used_samples} samples "
                             f"({self.n_patches} patches of {self.patch_samples}), got {x.shape[2]}")
        start = (x.shape[2] - self.used_samples) // 2
        return x[:, :, start:start + self.used_samples]

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, C, T)`` in uV -> scaled patches ``(B, C, n_patches, patch_samples)`` of the
        central crop."""
        x = self.crop(x) / self.input_scale_uv
        return x.reshape(x.shape[0], self.n_chans, self.n_patches, self.patch_samples)

    def forward_tokens(self, x: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, C, T)`` in uV -> tokens ``(B, C*P, dim)``, channel-major; True in
        ``mask (B, C, P)`` hides a patch."""
        return self.encode_patches(self.patchify(x), mask=mask)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, C, T)`` in uV -> window features ``(B, dim)``: the mean of the tokens."""
        return self.forward_tokens(x).mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)
