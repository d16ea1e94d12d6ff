"""``efficientnet``: a timm EfficientNet on one image tiled from three spectrogram sources.

Inside ``forward`` each source (``eeg_spec (B, 4, F, T)``, ``eeg_mel (B, 4, M, T)``,
``kaggle_spec (B, 4, 100, 300)``, log power) is optionally cut to its central ``crop_s``
seconds (the experts labelled the central 10 s; the 10-minute spectrogram mostly shows other
moments), optionally averaged down to ``time_bins`` columns (cells at the log floor left
out), standardised per window over all four
regions together (so left/right power differences survive), with cells at the window's
minimum (the log floor of zero power or filled NaN stretches) left out of the statistics and
set to 0; its four regions (LL, RL, LP, RP) are stacked vertically, and it is resized to
``image_size`` high and ``image_size // 3`` wide; the three are placed side by side. Two
position channels (frequency within a region tile, height in the image) are added because
a CNN with global pooling cannot otherwise tell low from high frequency or left from right
tiles. Building the image in the
model keeps preprocessing identical in training and in the exported ONNX graph.
Progressive resizing: the trainer changes ``image_size`` between epochs
(:func:`image_size_for_epoch`).
"""
from __future__ import annotations

import inspect
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hms_core import contract
from hms_core.errors import ConfigError
from hms_core.models.registry import register_model
from hms_core.models.timm_backbone import create_timm_backbone

SPEC_FIELDS = ("eeg_spec", "eeg_mel", "kaggle_spec")
SOURCE_SPAN_S = {"eeg_spec": float(contract.WINDOW_S), "eeg_mel": float(contract.WINDOW_S),
                 "kaggle_spec": float(contract.SPEC_WINDOW_S)}
N_POSITION_CHANNELS = 2
_CLIP_STD = 6.0  # standardised log power beyond +-6 std is an artifact, not brain activity


def image_size_for_epoch(epoch: int, epochs: int, sizes: Sequence[int]) -> int:
    """Image size (pixels) at ``epoch`` when ``sizes`` are spread evenly over ``epochs``.

    ``sizes=(192, 256)`` over 10 epochs: epochs 0-4 at 192 px, 5-9 at 256 px.
    """
    if not sizes:
        raise ConfigError("models.efficientnet.image_sizes: needs at least one size")
    return int(sizes[min(len(sizes) - 1, epoch * len(sizes) // max(epochs, 1))])


def standardise_log_power(spec: torch.Tensor) -> torch.Tensor:
    """Standardise log power ``(B, 4, F, T)`` per window over all regions, robust to gaps.

    Cells at the window's minimum (the log floor of zero power, filled NaN stretches) are
    excluded from the mean and std and set to 0; the rest is clipped to +-6 std.
    A window without such cells loses only its single lowest cell.
    """
    dims = (1, 2, 3)
    valid = spec > spec.amin(dim=dims, keepdim=True) + 1e-3
    count = valid.sum(dim=dims, keepdim=True).to(spec.dtype).clamp_min(1.0)
    mean = torch.where(valid, spec, 0.0).sum(dim=dims, keepdim=True) / count
    centred = torch.where(valid, spec - mean, 0.0)  # the excluded cells are 0 from here on
    var = centred.square().sum(dim=dims, keepdim=True) / count
    return (centred / (var.sqrt() + 1e-6)).clamp(-_CLIP_STD, _CLIP_STD)


def central_crop(spec: torch.Tensor, keep_s: float, span_s: float) -> torch.Tensor:
    """The central ``keep_s`` seconds of ``spec (..., T)`` whose time axis spans ``span_s`` s.

    At least one column is kept; ``keep_s >= span_s`` returns ``spec`` unchanged.
    """
    n_cols = int(spec.shape[-1])  # a fixed size, also while tracing for ONNX
    keep = min(n_cols, max(1, int(round(n_cols * keep_s / span_s))))
    start = (n_cols - keep) // 2
    return spec[..., start:start + keep]


def pool_time(spec: torch.Tensor, bins: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Average ``spec (B, R, F, T)`` into ``bins`` equal time columns (``T // bins`` each,
    the remainder at the end dropped).

    ``valid`` (same shape, bool) restricts each mean to the valid cells; a column without
    any takes the window's minimum, so it still reads as a gap. Reshapes and sums only,
    so it exports to any ONNX opset.
    """
    # Fixed sizes as ints and -1 for the batch, so a traced ONNX graph keeps a dynamic batch.
    regions, freqs, n_cols = (int(n) for n in spec.shape[1:])
    bins = min(int(bins), n_cols)
    width = n_cols // bins
    cols = spec[..., :bins * width].reshape(-1, regions, freqs, bins, width)
    if valid is None:
        return cols.mean(dim=-1)
    w = valid[..., :bins * width].reshape(-1, regions, freqs, bins, width).to(spec.dtype)
    count = w.sum(dim=-1)
    floor = spec.amin(dim=(1, 2, 3), keepdim=True)
    return torch.where(count > 0, (cols * w).sum(dim=-1) / count.clamp_min(1.0), floor)


def _position_channels(image: torch.Tensor, regions: int) -> torch.Tensor:
    """``(B, 2, S, W)``: frequency position within each of ``regions`` stacked tiles, and
    height in the image, each from -1 to 1 (built from shapes, so they export as constants;
    a broadcast view, nothing is copied per window)."""
    height, width = image.shape[2], image.shape[3]
    rows = torch.arange(height, dtype=image.dtype, device=image.device)
    tile = height / regions
    within = (rows % tile) / max(tile - 1.0, 1.0) * 2.0 - 1.0
    overall = rows / max(height - 1.0, 1.0) * 2.0 - 1.0
    ramps = torch.stack([within, overall]).view(1, 2, height, 1)
    return ramps.expand(image.shape[0], 2, height, width)


class SpectrogramEfficientNet(nn.Module):
    """EfficientNet classifier of tiled spectrogram images.

    Parameters
    ----------
    n_outputs : int, default 6
    backbone : str, default "efficientnet_b0"
        timm model name (``efficientnet_b5`` in the full run, ``test_efficientnet`` in tests).
    image_size : int, default 256
        Height of the tiled image in pixels (width ``3 * (image_size // 3)``).
    in_chans : int, default 1
        Copies of the grey image given to the backbone.
    position_channels : bool, default True
        Append the two position channels (frequency within each region tile and height in
        the image, both -1..1) to the image.
    crop_s : dict of str to float, optional
        Seconds kept around the centre of each named source (``{"kaggle_spec": 60}`` keeps
        the central minute of the 10-minute spectrogram); unnamed sources are kept whole.
    time_bins : int, default 0
        Average each source's time axis into this many columns before resizing; 0 keeps
        every column. Few bins give a model that sees spectra, not their time course:
        on small data sets it memorises recordings less.
    drop_rate : float, default 0.2
        Dropout before the classifier.
    drop_path_rate : float, default 0.0
        Stochastic depth.
    input_fields : sequence of str, default ("eeg_spec", "eeg_mel", "kaggle_spec")
        Which spectrogram sources to tile (any non-empty subset, in this order).
    pretrained : bool, default False
        Start the backbone from timm's pretrained (ImageNet) weights, as every top HMS
        solution did; the classifier is new (6 outputs). Without ``pretrained_path`` timm
        fetches them from the Hugging Face hub (needs the internet once, then its cache).
    pretrained_path : str or None, default None
        A local file of the backbone's timm weights (``.pth``/``.bin`` state dict, read with
        ``weights_only=True``, or ``.safetensors``) for machines without the internet, e.g.
        ``hf download timm/efficientnet_b5.sw_in12k_ft_in1k model.safetensors``. Needs
        ``pretrained: true``. Neither key is kept in the trained model's weights file
        (:meth:`portable_kwargs`): the fine-tuned weights are all it needs.
    """

    def __init__(self, n_outputs: int = contract.N_CLASSES, *, backbone: str = "efficientnet_b0",
                 image_size: int = 256, in_chans: int = 1, position_channels: bool = True,
                 crop_s: Mapping[str, float] | None = None, time_bins: int = 0,
                 drop_rate: float = 0.2,
                 drop_path_rate: float = 0.0, input_fields: Sequence[str] = SPEC_FIELDS,
                 pretrained: bool = False, pretrained_path: str | None = None):
        super().__init__()
        bad = [f for f in input_fields if f not in SPEC_FIELDS]
        if bad or not input_fields:
            raise ConfigError(f"models.efficientnet.input_fields: {list(input_fields)} must be a "
                              f"non-empty subset of {', '.join(SPEC_FIELDS)}")
        crop_s = dict(crop_s or {})
        bad = [f"{k}={v!r}" for k, v in crop_s.items()
               if k not in input_fields or not isinstance(v, (int, float)) or v <= 0]
        if bad:
            raise ConfigError(f"models.efficientnet.crop_s: {', '.join(bad)}; keys must be input "
                              f"fields ({', '.join(input_fields)}) and values seconds > 0")
        if int(time_bins) < 0:
            raise ConfigError(f"models.efficientnet.time_bins: {time_bins} must be >= 0")
        self.crop_s = {k: float(v) for k, v in crop_s.items()}
        self.time_bins = int(time_bins)
        self.input_fields = tuple(input_fields)
        self.image_size = int(image_size)
        self.in_chans = int(in_chans)
        self.position_channels = bool(position_channels)
        stem_chans = self.in_chans + (N_POSITION_CHANNELS if self.position_channels else 0)
        # timm adapts the stem to in_chans (3 here: grey image + 2 position channels) and
        # leaves the new classifier randomly initialised.
        self.backbone = create_timm_backbone(
            "models.efficientnet", backbone, pretrained=pretrained, pretrained_path=pretrained_path,
            in_chans=stem_chans, num_classes=n_outputs, drop_rate=drop_rate,
            drop_path_rate=drop_path_rate)
        self.feature_dim = int(self.backbone.num_features)

    def portable_kwargs(self, kwargs: dict) -> dict:
        """``kwargs`` to rebuild this model from its trained weights: no pretrained load
        (predicting and exporting must neither read the ImageNet file nor download it)."""
        return {k: v for k, v in kwargs.items() if k not in ("pretrained", "pretrained_path")}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    def build_image(self, *specs: torch.Tensor) -> torch.Tensor:
        """Tile the sources ``(B, 4, H_i, W_i)`` into one image ``(B, C, S, n * (S // n))``.

        ``C`` is ``in_chans`` plus the position channels; ``n`` is the number of sources.
        :meth:`tile_image`, then :meth:`image_channels`.
        """
        return self.image_channels(self.tile_image(*specs), regions=specs[0].shape[1])

    def tile_image(self, *specs: torch.Tensor) -> torch.Tensor:
        """The grey image ``(B, 1, S, n * (S // n))`` of the sources: everything of the model's
        image that depends on the window (a data loader worker can build it)."""
        height = self.image_size
        width = max(1, height // len(specs))
        tiles = []
        for field, spec in zip(self.input_fields, specs):
            if field in self.crop_s:
                spec = central_crop(spec, self.crop_s[field], SOURCE_SPAN_S[field])
            x = spec.float()
            if self.time_bins:  # before standardising, so the scale is that of the spectra
                x = pool_time(x, self.time_bins, valid=x > x.amin(dim=(1, 2, 3), keepdim=True) + 1e-3)
            x = standardise_log_power(x)
            regions, h, w = x.shape[1:]
            x = x.reshape(-1, 1, regions * h, w)
            tiles.append(F.interpolate(x, size=(height, width), mode="bilinear",
                                       align_corners=False))
        return torch.cat(tiles, dim=3)

    def image_channels(self, grey: torch.Tensor, regions: int = len(contract.SPEC_REGIONS)) -> torch.Tensor:
        """The model's input from :meth:`tile_image`'s ``grey (B, 1, S, W)``: ``in_chans``
        copies, then the position channels of ``regions`` stacked tiles (constants), in the
        stem's memory format."""
        parts = [grey.expand(-1, self.in_chans, -1, -1) if self.in_chans > 1 else grey]
        if self.position_channels:
            parts.append(_position_channels(grey, regions))
        image = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        first_conv = self.backbone.conv_stem.weight
        if first_conv.is_contiguous(memory_format=torch.channels_last) and first_conv.shape[2] > 1:
            image = image.contiguous(memory_format=torch.channels_last)
        return image

    def forward_features(self, *specs: torch.Tensor) -> torch.Tensor:
        """Spectrograms in ``input_fields`` order -> pooled features ``(B, feature_dim)``."""
        image = self.build_image(*specs)
        return self.backbone.forward_head(self.backbone.forward_features(image), pre_logits=True)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.backbone.get_classifier()(features)

    def forward(self, *specs: torch.Tensor) -> torch.Tensor:
        """Spectrograms in ``input_fields`` order -> logits ``(B, 6)``."""
        return self.forward_head(self.forward_features(*specs))


@register_model
def efficientnet(**kwargs) -> SpectrogramEfficientNet:
    """Factory of :class:`SpectrogramEfficientNet` (see its parameters)."""
    return SpectrogramEfficientNet(**kwargs)


efficientnet.__signature__ = inspect.signature(SpectrogramEfficientNet)  # lets create_model check kwargs
