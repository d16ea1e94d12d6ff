"""The stacking meta-learner: a small residual MLP on the members' log-probabilities."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from hms_core.contract import N_CLASSES
from hms_core.ensemble.averaging import PROB_FLOOR


class MetaLearner(nn.Module):
    """Blend of the members plus a learned correction.

    ``logits = log(sum_m w_m * (p_m + p_swap_m) / 2) + MLP([logp, logp_swap])``. The blend
    weights ``w = softmax(blend_logits)`` start at the selection's weights and the MLP's last
    layer starts at zero, so an untrained meta-learner is exactly the selected blend.

    Parameters
    ----------
    n_members : int
        Number of members M.
    hidden : int
        Width of the hidden layer.
    dropout : float
        Dropout on the input features.
    init_weights : sequence of float or None
        Starting blend weights (default uniform).

    Notes
    -----
    ``forward(logp (B, M, 6), logp_swap (B, M, 6)) -> logits (B, 6)``.
    """

    def __init__(self, n_members: int, *, hidden: int = 32, dropout: float = 0.1,
                 init_weights: Sequence[float] | None = None):
        super().__init__()
        self.n_members = n_members
        w = torch.full((n_members,), 1.0 / n_members) if init_weights is None else torch.as_tensor(
            list(init_weights), dtype=torch.float32)
        self.blend_logits = nn.Parameter(torch.log(w.clamp_min(1e-6)))
        n_in = 2 * n_members * N_CLASSES
        self.correction = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, N_CLASSES))
        nn.init.zeros_(self.correction[-1].weight)
        nn.init.zeros_(self.correction[-1].bias)

    def parts(self, logp: torch.Tensor, logp_swap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(base, correction)``, each ``(B, 6)``: the blend's log-probabilities and the MLP output."""
        w = torch.softmax(self.blend_logits, dim=0).reshape(1, -1, 1)  # (1, M, 1)
        tta = 0.5 * (torch.exp(logp) + torch.exp(logp_swap))  # (B, M, 6)
        base = torch.log((w * tta).sum(dim=1).clamp_min(PROB_FLOOR))  # (B, 6)
        features = torch.cat([logp, logp_swap], dim=1).flatten(1)  # (B, 2 * M * 6)
        features = features.clamp_min(math.log(PROB_FLOOR))
        return base, self.correction(features)

    def forward(self, logp: torch.Tensor, logp_swap: torch.Tensor) -> torch.Tensor:
        base, correction = self.parts(logp, logp_swap)
        return base + correction

    def blend_weights(self) -> torch.Tensor:
        return torch.softmax(self.blend_logits.detach(), dim=0)

    def correction_l2(self) -> torch.Tensor:
        """Sum of squared weights of the correction MLP (what ``residual_l2`` multiplies)."""
        return sum(layer.weight.pow(2).sum() for layer in self.correction if isinstance(layer, nn.Linear))

    @torch.no_grad()
    def shrink_correction(self, factor: float) -> None:
        """Scale the correction by ``factor`` in [0, 1] (exact: its last layer is linear); 0 is the blend."""
        self.correction[-1].weight.mul_(float(factor))
        self.correction[-1].bias.mul_(float(factor))
