"""The torch modules that become the ONNX graphs.

- :class:`FoldAverage`: one model's k fold networks, probabilities averaged
  (``models/onnx/{model}.onnx``; inputs are that model's store fields).
- :class:`EnsembleGraph`: raw 50 s windows and the Kaggle spectrogram in, calibrated
  probabilities and uncertainty out (``models/onnx/ensemble.onnx``). Window preprocessing
  (:class:`~hms_core.signal.frontend.WindowFrontend`) and the hemisphere-swap TTA are inside;
  recording-level cleaning (:func:`hms_core.signal.ica.clean_recording`) is not.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from hms_core.ensemble.averaging import PROB_FLOOR, predictive_uncertainty
from hms_core.ensemble.stacking import StackedHead
from hms_core.signal.frontend import FRONTEND_FIELDS, WindowFrontend, kaggle_spec_image
from hms_core.train.augment import swap_hemispheres

KAGGLE_FIELD = "kaggle_spec"
ENSEMBLE_INPUTS = ("raw_uv", "spec_power")
ENSEMBLE_OUTPUTS = ("probs", "entropy", "member_spread")


class FoldAverage(nn.Module):
    """Mean class probabilities of one model's fold networks.

    Parameters
    ----------
    fold_models : sequence of nn.Module
        Trained networks sharing ``input_fields``; each maps the fields to logits ``(B, 6)``.

    Notes
    -----
    ``forward(*fields) -> probs (B, 6)``; :meth:`fold_probs` gives ``(k, B, 6)``.
    """

    def __init__(self, fold_models: Sequence[nn.Module]):
        super().__init__()
        fields = {tuple(m.input_fields) for m in fold_models}
        if len(fields) != 1:
            raise ValueError(f"fold models disagree on their input fields: {sorted(fields)}")
        self.input_fields = next(iter(fields))
        self.folds = nn.ModuleList(fold_models)

    def fold_probs(self, *inputs: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.softmax(m(*inputs).float(), dim=-1) for m in self.folds])

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.fold_probs(*inputs).mean(dim=0)


class EnsembleGraph(nn.Module):
    """Raw windows to calibrated probabilities and uncertainty.

    Parameters
    ----------
    frontend : WindowFrontend
        The preprocessing the members were trained on.
    members : sequence of FoldAverage
        In the order of the stacker's member axis.
    head : StackedHead
        Meta-learners and temperature (from ``ensemble.pth``); :func:`load_ensemble` builds
        the stacker or the blend, as the file's ``deployed`` field says, so this graph runs
        whichever the ensemble stage deployed.
    bma_weights : sequence of float
        Per-member BMA weights, split evenly over each member's folds for the spread.

    Notes
    -----
    ``forward(raw_uv (B, 20, 10000) uV in RAW_CHANNELS order, spec_power (B, 300, 400) in
    SPEC_COLUMNS order) -> (probs (B, 6), entropy (B,) nats, member_spread (B,))``.
    """

    def __init__(self, frontend: WindowFrontend, members: Sequence[FoldAverage], head: StackedHead,
                 bma_weights: Sequence[float]):
        super().__init__()
        if len(members) != len(bma_weights):
            raise ValueError(f"{len(members)} members but {len(bma_weights)} BMA weights")
        self.frontend = frontend
        self.members = nn.ModuleList(members)
        self.head = head
        needed = {f for m in members for f in m.input_fields}
        unknown = needed - set(FRONTEND_FIELDS) - {KAGGLE_FIELD}
        if unknown:
            raise ValueError(f"no way to compute input fields {sorted(unknown)} from a raw window")
        self.frontend_fields = tuple(f for f in FRONTEND_FIELDS if f in needed)
        self.needs_kaggle = KAGGLE_FIELD in needed
        weights = [torch.full((len(m.folds),), float(w) / len(m.folds)) for m, w in zip(members, bma_weights)]
        self.register_buffer("sample_weights", torch.cat(weights))

    def _fields(self, raw_uv: torch.Tensor, spec_power: torch.Tensor) -> dict[str, torch.Tensor]:
        fields = self.frontend.fields(raw_uv, self.frontend_fields)
        if self.needs_kaggle:
            fields[KAGGLE_FIELD] = kaggle_spec_image(spec_power)
        return fields

    def forward(self, raw_uv: torch.Tensor, spec_power: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fields = self._fields(raw_uv, spec_power)
        batch = raw_uv.shape[0]
        # Plain and hemisphere-swapped windows in one batch of 2B: one pass per fold network.
        both = {name: torch.cat([x, swap_hemispheres(x, name)], dim=0) for name, x in fields.items()}
        logp, logp_swap, samples = [], [], []
        for member in self.members:
            probs_2b = member.fold_probs(*[both[f] for f in member.input_fields])  # (k, 2B, 6)
            plain, mirror = probs_2b[:, :batch], probs_2b[:, batch:]
            logp.append(torch.log(plain.mean(dim=0).clamp_min(PROB_FLOOR)))
            logp_swap.append(torch.log(mirror.mean(dim=0).clamp_min(PROB_FLOOR)))
            samples.append(0.5 * (plain + mirror))
        logits = self.head(torch.stack(logp, dim=1), torch.stack(logp_swap, dim=1))  # (B, 6)
        probs = torch.softmax(logits, dim=-1)
        entropy, spread = predictive_uncertainty(torch.cat(samples, dim=0), self.sample_weights, probs)
        return probs, entropy, spread
