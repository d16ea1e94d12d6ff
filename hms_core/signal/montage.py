"""The double-banana bipolar montage: 18 chains from the 19 referential EEG channels."""
from __future__ import annotations

import numpy as np
import torch

from hms_core.contract import BIPOLAR_PAIRS, CHANNEL_INDEX

ANODE_INDEX = tuple(CHANNEL_INDEX[a] for a, _ in BIPOLAR_PAIRS)
CATHODE_INDEX = tuple(CHANNEL_INDEX[b] for _, b in BIPOLAR_PAIRS)


def bipolar_montage(raw_uv: np.ndarray) -> np.ndarray:
    """Chains ``(..., 18, T)`` in ``BIPOLAR_PAIRS`` order from ``raw_uv (..., 20 or 19, T)`` in uV
    (``RAW_CHANNELS`` order; the EKG channel, last, is not used)."""
    return raw_uv[..., ANODE_INDEX, :] - raw_uv[..., CATHODE_INDEX, :]


class BipolarMontage(torch.nn.Module):
    """Torch form of :func:`bipolar_montage`: ``(B, 20 or 19, T) -> (B, 18, T)`` (two gathers, one subtraction)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("anode", torch.tensor(ANODE_INDEX, dtype=torch.long))
        self.register_buffer("cathode", torch.tensor(CATHODE_INDEX, dtype=torch.long))

    def forward(self, raw_uv: torch.Tensor) -> torch.Tensor:
        return raw_uv.index_select(1, self.anode) - raw_uv.index_select(1, self.cathode)
