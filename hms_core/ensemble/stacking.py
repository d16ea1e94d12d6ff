"""The deployed ensemble head and its loader.

:class:`StackedHead` averages the logits of the fold meta-learners (trained by
:func:`hms_core.ensemble.nested.train_meta_learners`), or holds one zero-correction
meta-learner carrying the blend weights when the blend is deployed, then divides by the
temperature. :func:`hms_core.ensemble.build.build_ensemble` writes ``ensemble.pth``;
:func:`load_ensemble` rebuilds the head from it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from hms_core.ensemble.meta_learner import MetaLearner
from hms_core.errors import DataError

ENSEMBLE_FORMAT = 1


class StackedHead(nn.Module):
    """The deployed head: mean logits of the fold meta-learners, divided by the temperature.

    ``forward(logp (B, M, 6), logp_swap (B, M, 6)) -> calibrated logits (B, 6)``. A deployed
    blend is one meta-learner whose correction is zero (:meth:`for_blend`).
    """

    def __init__(self, meta_learners: Sequence[MetaLearner], temperature: float):
        super().__init__()
        self.meta_learners = nn.ModuleList(meta_learners)
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, logp: torch.Tensor, logp_swap: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([m(logp, logp_swap) for m in self.meta_learners]).mean(dim=0)
        return logits / self.temperature

    @classmethod
    def for_blend(cls, weights: Sequence[float], temperature: float) -> "StackedHead":
        """``log(sum_m w_m (p_m + p_swap_m) / 2) / T``: the weighted blend as a head."""
        learner = MetaLearner(len(weights), hidden=1, dropout=0.0, init_weights=weights)
        learner.shrink_correction(0.0)
        return cls([learner.eval()], temperature)


def load_ensemble(path: str | os.PathLike) -> dict[str, Any]:
    """Read ``ensemble.pth`` and rebuild its stacker.

    Returns
    -------
    dict
        The saved fields plus ``head``: a :class:`StackedHead` in eval mode, the stacker or
        the blend as ``deployed`` says (files without that field hold a stacker).

    Raises
    ------
    DataError
        The file is missing or not an ensemble of this format.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "ensemble file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DataError(path, f"cannot read the ensemble: {err}") from err
    if not isinstance(state, dict) or state.get("format") != ENSEMBLE_FORMAT:
        raise DataError(path, f"not an ensemble.pth of format {ENSEMBLE_FORMAT}")
    deployed = state.setdefault("deployed", "stacked")
    if deployed == "blend":
        return {**state, "head": StackedHead.for_blend(state["member_weights"], state["temperature"]).eval()}
    if deployed != "stacked":
        raise DataError(path, f"unknown deployed head {deployed!r} (expected 'blend' or 'stacked')")
    meta = state["meta_learner"]
    learners = []
    for sd in meta["state_dicts"]:
        m = MetaLearner(meta["n_members"], hidden=meta["hidden"], dropout=meta["dropout"])
        m.load_state_dict(sd)
        learners.append(m.eval())
    head = StackedHead(learners, state["temperature"]).eval()
    return {**state, "head": head}
