"""``resnet1d_gru``: a 1-D residual conv stack over EEG signals, then a bidirectional GRU.

The input montage is an option: the 18 bipolar chains (default), the 19 referential
channels, their average reference (each channel minus the mean of the 19, formed here from
the stored ``referential`` field), or chains and average reference side by side (37 rows).
The signals (uV) are scaled, average-pooled by ``input_downsample``, and passed through a
strided stem and residual stages that shorten time (each stage by its stride) while
widening channels; a bidirectional GRU reads the remaining sequence; mean- and max-pooled
GRU outputs form the feature vector. An optional pretrained foundation encoder
(``hms_core.models.foundation``) contributes its window features, concatenated before
the head.
"""
from __future__ import annotations

import inspect
import typing
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from hms_core import contract
from hms_core.config import check_option
from hms_core.errors import ConfigError
from hms_core.models.foundation import FoundationMode
from hms_core.models.registry import register_model

FOUNDATION_MODES = typing.get_args(FoundationMode)
Montage = typing.Literal["chains", "referential", "average", "chains+average"]
MONTAGES = typing.get_args(Montage)
# Store fields each montage reads, in forward() argument order.
MONTAGE_FIELDS = {"chains": ("chains",), "referential": ("referential",), "average": ("referential",),
                  "chains+average": ("chains", "referential")}
_MONTAGE_CHANNELS = {"chains": contract.N_CHAINS, "referential": contract.N_EEG_CHANNELS,
                     "average": contract.N_EEG_CHANNELS,
                     "chains+average": contract.N_CHAINS + contract.N_EEG_CHANNELS}


def montage_signals(montage: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The network input ``(B, C, T)`` in uV of ``montage`` from store fields.

    Parameters
    ----------
    montage : {"chains", "referential", "average", "chains+average"}
    inputs : dict
        ``chains (B, 18, T)`` and/or ``referential (B, 19, T)`` in uV, as
        ``MONTAGE_FIELDS[montage]`` names.

    Returns
    -------
    torch.Tensor
        chains: 18 rows; referential: 19; average: 19 (each referential channel minus the
        mean of the 19 at each sample); chains+average: the 18 chains then the 19
        average-reference rows.
    """
    if montage == "chains":
        return inputs["chains"]
    referential = inputs["referential"]
    if montage == "referential":
        return referential
    average = referential - referential.mean(dim=1, keepdim=True)
    if montage == "average":
        return average
    return torch.cat([inputs["chains"], average], dim=1)


class ResBlock1d(nn.Module):
    """Two same-padded convolutions with batch norm and a (strided) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, *, kernel_size: int, stride: int, dropout: float):
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv1d(in_ch, out_ch, kernel_size, stride=stride, padding=pad, bias=False)
        self.bn1 = nn.BatchNorm1d(out_ch)
        self.conv2 = nn.Conv1d(out_ch, out_ch, kernel_size, padding=pad, bias=False)
        self.bn2 = nn.BatchNorm1d(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.shortcut = (nn.Identity() if in_ch == out_ch and stride == 1 else nn.Sequential(
            nn.Conv1d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm1d(out_ch)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(self.dropout(h)))
        return F.silu(h + self.shortcut(x))


class ResNet1dGRU(nn.Module):
    """1-D ResNet + bidirectional GRU classifier of raw EEG (bipolar chains by default).

    Parameters
    ----------
    n_outputs : int, default 6
        Number of classes.
    n_chans : int, optional
        Input rows; default (None) the montage's: 18 chains, 19 referential or average,
        37 for chains+average. A value that disagrees with the montage is an error.
    n_times : int, default 10000
        Samples per window (``contract.WINDOW_SAMPLES``, 50 s at 200 Hz).
    sfreq : float, default 200
        Sampling rate in Hz.
    montage : {"chains", "referential", "average", "chains+average"}, default "chains"
        What the network reads: the stored ``chains``, the stored ``referential`` channels,
        their average reference (formed in ``forward``), or chains and average reference
        concatenated along the channel axis. Sets ``input_fields``.
    input_scale_uv : float, default 100.0
        Signals are divided by this many uV.
    input_downsample : int, default 2
        Average-pooling factor applied first (the chains are band-limited to ~20 Hz).
    stem_width : int, default 32
    widths : sequence of int, default (32, 64, 128, 256)
        Channels of each residual stage.
    strides : sequence of int, default (2, 2, 2, 2)
        Time stride of each stage (same length as ``widths``).
    stem_stride : int, default 2
    kernel_size : int, default 7
    gru_hidden : int, default 128
        Hidden units per GRU direction.
    gru_layers : int, default 1
    dropout : float, default 0.2
    foundation_path : str, optional
        Pretrained foundation encoder file (``load_foundation``).
    foundation_mode : {"frozen", "finetune", None}, default None
        How to use the foundation encoder; None ignores ``foundation_path``. The encoder
        reads its own store field (``chains`` for ``hms`` and ``biot``, ``referential`` for
        ``cbramod`` and ``labram``), so with a montage without it the model also reads that field (last in
        ``input_fields``).
    foundation_kwargs : dict, optional
        Build the encoder from this ``encoder_registry.encoder_spec`` mapping instead of loading
        ``foundation_path`` (used when reloading a trained model whose state_dict already
        holds the encoder weights).
    """

    input_fields = ("chains",)  # the default montage's; each instance sets its own

    def __init__(self, n_outputs: int = contract.N_CLASSES, n_chans: int | None = None,
                 n_times: int = contract.WINDOW_SAMPLES, sfreq: float = contract.SAMPLING_RATE_HZ,
                 *, montage: Montage = "chains", input_scale_uv: float = 100.0, input_downsample: int = 2, stem_width: int = 32,
                 widths: Sequence[int] = (32, 64, 128, 256), strides: Sequence[int] = (2, 2, 2, 2),
                 stem_stride: int = 2, kernel_size: int = 7, gru_hidden: int = 128,
                 gru_layers: int = 1, dropout: float = 0.2, foundation_path: str | None = None,
                 foundation_mode: str | None = None, foundation_kwargs: dict | None = None):
        super().__init__()
        if len(widths) != len(strides) or not widths:
            raise ConfigError(f"models.resnet1d_gru: widths {list(widths)} and strides "
                              f"{list(strides)} must be non-empty and of equal length")
        check_option("models.resnet1d_gru.montage", montage, MONTAGES)
        if n_chans is None:
            n_chans = _MONTAGE_CHANNELS[montage]
        elif int(n_chans) != _MONTAGE_CHANNELS[montage]:
            raise ConfigError(f"models.resnet1d_gru.n_chans: {n_chans!r} does not match montage "
                              f"{montage!r} ({_MONTAGE_CHANNELS[montage]} rows); leave it unset")
        if foundation_mode is not None and foundation_mode not in FOUNDATION_MODES:
            raise ConfigError(f"models.resnet1d_gru.foundation_mode: {foundation_mode!r} is not "
                              f"one of {', '.join(FOUNDATION_MODES)} or null")
        if foundation_mode is not None and foundation_path is None and foundation_kwargs is None:
            raise ConfigError("models.resnet1d_gru.foundation_mode is set but no foundation_path "
                              "(pretrained encoder file) was given")
        self.n_outputs, self.n_chans, self.n_times, self.sfreq = n_outputs, int(n_chans), n_times, sfreq
        self.montage = montage
        fields = MONTAGE_FIELDS[montage]
        self.foundation_mode = foundation_mode
        self.foundation = None
        if foundation_mode is not None:
            from hms_core.models import encoder_registry, foundation as foundation_module

            if foundation_kwargs is not None:
                self.foundation = encoder_registry.build_from_spec(foundation_kwargs)
            else:
                self.foundation = foundation_module.load_foundation(foundation_path)
            if self.foundation.input_field not in fields:
                fields = (*fields, self.foundation.input_field)  # the store field the encoder reads
        self.input_fields = fields
        self.input_scale_uv = float(input_scale_uv)
        self.grad_checkpointing = False
        self.pool = nn.AvgPool1d(input_downsample) if input_downsample > 1 else nn.Identity()
        self.stem = nn.Sequential(
            nn.Conv1d(n_chans, stem_width, kernel_size, stride=stem_stride,
                      padding=kernel_size // 2, bias=False),
            nn.BatchNorm1d(stem_width), nn.SiLU())
        blocks, in_ch = [], stem_width
        for width, stride in zip(widths, strides):
            blocks.append(ResBlock1d(in_ch, width, kernel_size=kernel_size, stride=stride,
                                     dropout=dropout))
            in_ch = width
        self.blocks = nn.ModuleList(blocks)
        self.gru = nn.GRU(in_ch, gru_hidden, num_layers=gru_layers, batch_first=True,
                          bidirectional=True)
        foundation_dim = 0
        if self.foundation is not None:
            foundation_dim = int(self.foundation.feature_dim)
            if foundation_mode == "frozen":
                self.foundation.requires_grad_(False)
            else:  # never masked here: no gradient, which DistributedDataParallel rejects
                for name in self.foundation.masking_parameters:
                    self.foundation.get_parameter(name).requires_grad_(False)
        self.feature_dim = 4 * gru_hidden + foundation_dim
        self.head_dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.feature_dim, n_outputs)

    def train(self, mode: bool = True) -> "ResNet1dGRU":
        super().train(mode)
        if self.foundation is not None and self.foundation_mode == "frozen":
            self.foundation.eval()  # frozen: no dropout, no batch-norm updates
        return self

    def portable_kwargs(self, kwargs: dict) -> dict:
        """``kwargs`` rewritten to rebuild this model without the foundation file."""
        out = {k: v for k, v in kwargs.items() if k != "foundation_path"}
        if self.foundation is not None:
            from hms_core.models.encoder_registry import encoder_spec

            out["foundation_kwargs"] = encoder_spec(self.foundation)
        return out

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the residual blocks' activations in backward (saves memory)."""
        self.grad_checkpointing = enable

    def forward_features(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Store fields in ``input_fields`` order (``(B, 18 or 19, n_times)`` in uV) -> features
        ``(B, feature_dim)``."""
        if len(inputs) != len(self.input_fields):
            raise ValueError(f"expected {len(self.input_fields)} inputs {self.input_fields}, got {len(inputs)}")
        named = dict(zip(self.input_fields, inputs))
        signals = montage_signals(self.montage, named)  # (B, n_chans, n_times)
        x = self.stem(self.pool(signals / self.input_scale_uv))  # (B, stem_width, T')
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        seq, _ = self.gru(x.transpose(1, 2))  # (B, T'', 2 * gru_hidden)
        features = torch.cat([seq.mean(dim=1), seq.amax(dim=1)], dim=1)
        if self.foundation is not None:
            signal = named[self.foundation.input_field]
            if self.foundation_mode == "frozen":
                with torch.no_grad():
                    extra = self.foundation.forward_features(signal)
            else:
                extra = self.foundation.forward_features(signal)
            features = torch.cat([features, extra.to(features.dtype)], dim=1)
        return features

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Features ``(B, feature_dim)`` -> logits ``(B, n_outputs)``."""
        return self.head(self.head_dropout(features))

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Store fields in ``input_fields`` order (default ``chains (B, 18, 10000)`` in uV) ->
        logits ``(B, 6)``."""
        return self.forward_head(self.forward_features(*inputs))


@register_model
def resnet1d_gru(**kwargs) -> ResNet1dGRU:
    """Factory of :class:`ResNet1dGRU` (see its parameters)."""
    return ResNet1dGRU(**kwargs)


resnet1d_gru.__signature__ = inspect.signature(ResNet1dGRU)  # lets create_model check kwargs
