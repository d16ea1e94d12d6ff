"""``eeg_image``: the bipolar chains drawn as a 2-D image (rows x time) into a timm backbone.

The family top HMS solutions used most on raw EEG. Inside ``forward`` the window's
``chains (B, 18, 10000)`` (uV, 200 Hz, 50 s), optionally with the average reference
(formed from ``referential`` as :func:`~hms_core.models.resnet1d_gru.montage_signals` does),
are

1. cut to their central ``crop_s`` seconds (the experts labelled the central 10 s),
2. averaged down in time by ``downsample``,
3. scaled per window: each row's mean is removed, then every row is divided by one median
   absolute value of the whole window (so left/right amplitude differences survive) and
   clipped to ``+-clip`` (electrode pops and muscle bursts),
4. stacked as rows, grouped by region: chains LL (rows 0-3), RL (4-7), LP (8-11), RP (12-15),
   central (16-17); with ``chains+average`` then the average reference, left temporal
   (Fp1 F7 T3 T5 O1, rows 18-22), right temporal (23-27), left parasagittal (F3 C3 P3,
   28-30), right parasagittal (31-33), midline (Fz Cz Pz, 34-36) (:data:`AVERAGE_ROW_ORDER`),
5. cut along time into ``n_strips`` consecutive strips stacked top to bottom (strip ``k``
   holds time segment ``k``; image row ``k * n_rows + r`` is signal row ``r``), so the
   image is roughly square, and
6. resized (bilinear) to ``image_size`` x ``image_size``; an optional second channel gives
   each pixel its row's position within its strip (-1 .. 1), because a CNN with global
   pooling cannot otherwise tell a left from a right chain.

All of it is torch on fixed shapes, so it exports to ONNX with the backbone.
"""
from __future__ import annotations

import inspect
import math
import typing

import torch
import torch.nn.functional as F
from torch import nn

from hms_core import contract
from hms_core.config import check_option
from hms_core.errors import ConfigError
from hms_core.models.efficientnet import central_crop
from hms_core.models.registry import register_model
from hms_core.models.resnet1d_gru import MONTAGE_FIELDS, montage_signals
from hms_core.models.timm_backbone import create_timm_backbone

ImageMontage = typing.Literal["chains", "chains+average"]
IMAGE_MONTAGES = typing.get_args(ImageMontage)
# Average-reference rows grouped like the chains' regions: left temporal, right temporal,
# left parasagittal, right parasagittal, midline (indices into contract.EEG_CHANNELS).
AVERAGE_ROW_ORDER = tuple(contract.EEG_CHANNELS.index(name) for name in (
    "Fp1", "F7", "T3", "T5", "O1", "Fp2", "F8", "T4", "T6", "O2",
    "F3", "C3", "P3", "F4", "C4", "P4", "Fz", "Cz", "Pz"))
_N_ROWS = {"chains": contract.N_CHAINS, "chains+average": contract.N_CHAINS + contract.N_EEG_CHANNELS}
_SCALE_FLOOR_UV = 1e-3  # a flat (all-zero) window stays 0 instead of dividing by 0


def downsample_time(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Average ``x (B, R, T)`` over ``factor`` consecutive samples (the remainder dropped)."""
    if factor <= 1:
        return x
    rows, n = int(x.shape[1]), int(x.shape[2]) // factor  # fixed sizes, -1 batch for ONNX
    return x[..., :n * factor].reshape(-1, rows, n, factor).mean(dim=-1)


def robust_scale(x: torch.Tensor, clip: float) -> torch.Tensor:
    """Per window: remove each row's mean, divide by the median absolute value of the whole
    window ``x (B, R, T)``, clip to ``+-clip``. Invariant to the signals' gain."""
    x = x - x.mean(dim=-1, keepdim=True)
    flat = x.abs().flatten(1)
    n = int(flat.shape[1])
    # sort + index (exports as TopK); torch.median has no ONNX opset-17 export
    median = flat.sort(dim=1).values[:, n // 2].view(-1, 1, 1)
    return (x / median.clamp_min(_SCALE_FLOOR_UV)).clamp(-clip, clip)


def auto_strips(n_rows: int, n_times: int) -> int:
    """Strips that make a ``n_rows x n_times`` signal image closest to square."""
    return max(1, round(math.sqrt(n_times / n_rows)))


def stack_strips(x: torch.Tensor, n_strips: int) -> torch.Tensor:
    """``x (B, R, T)`` -> ``(B, 1, n_strips * R, T // n_strips)``: consecutive time segments
    stacked top to bottom (image row ``k * R + r`` is row ``r`` in segment ``k``; the last
    ``T % n_strips`` samples are dropped)."""
    rows, width = int(x.shape[1]), int(x.shape[2]) // n_strips
    x = x[..., :n_strips * width].reshape(-1, rows, n_strips, width)
    return x.permute(0, 2, 1, 3).reshape(-1, 1, n_strips * rows, width)


class EEGImageNet(nn.Module):
    """timm classifier of the bipolar chains (and average reference) drawn as an image.

    Parameters
    ----------
    n_outputs : int, default 6
    backbone : str, default "efficientnet_b0"
        timm model name (``test_efficientnet`` in the CPU demo and tests).
    montage : {"chains", "chains+average"}, default "chains"
        The 18 bipolar chains, or the chains then the 19-channel average reference (formed
        in ``forward`` from the stored ``referential`` field). Sets ``input_fields``.
    crop_s : float, default 20.0
        Central seconds of the 50-s window kept: the labelled 10 s plus 5 s either side, so
        the labelled centre stays in view under the trainer's time shifts (up to 5 s) and
        slow rhythmic patterns (LRDA/GRDA, LPD at 0.5-2 Hz) show 10-40 cycles. ``>= 50``
        keeps the whole window.
    downsample : int, default 4
        Average this many samples into one column (4: 50 Hz, enough for the chains'
        0.5-20 Hz band).
    clip : float, default 10.0
        After dividing by the window's median absolute value, values are clipped to
        ``+-clip``.
    n_strips : int or None, default None
        Time segments stacked top to bottom; None picks the count that makes the signal
        image closest to square (7 for the 18 chains at 20 s and 50 Hz, 5 with the average
        reference).
    image_size : int, default 256
        Side of the square image given to the backbone, in pixels.
    position_channel : bool, default True
        Add a channel with each row's position within its strip (-1 .. 1).
    drop_rate : float, default 0.2
        Dropout before the classifier.
    drop_path_rate : float, default 0.0
        Stochastic depth.
    pretrained : bool, default False
        Start the backbone from timm's pretrained (ImageNet) weights; the stem is adapted
        to the 1-2 input channels and the classifier is new.
    pretrained_path : str or None, default None
        A local file of the backbone's timm weights (as ``efficientnet``); needs
        ``pretrained: true``. Neither key is kept in the trained model's weights file
        (:meth:`portable_kwargs`).
    """

    def __init__(self, n_outputs: int = contract.N_CLASSES, *, backbone: str = "efficientnet_b0",
                 montage: ImageMontage = "chains", crop_s: float = 20.0, downsample: int = 4,
                 clip: float = 10.0, n_strips: int | None = None, image_size: int = 256,
                 position_channel: bool = True, drop_rate: float = 0.2,
                 drop_path_rate: float = 0.0, pretrained: bool = False,
                 pretrained_path: str | None = None):
        super().__init__()
        check_option("models.eeg_image.montage", montage, IMAGE_MONTAGES)
        for name, value in (("crop_s", crop_s), ("clip", clip)):
            if not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"models.eeg_image.{name}: {value!r} must be a number > 0")
        for name, value in (("downsample", downsample), ("image_size", image_size)):
            if int(value) < 1:
                raise ConfigError(f"models.eeg_image.{name}: {value!r} must be >= 1")
        if n_strips is not None and int(n_strips) < 1:
            raise ConfigError(f"models.eeg_image.n_strips: {n_strips!r} must be >= 1 or null")
        self.montage = montage
        self.input_fields = MONTAGE_FIELDS[montage]
        self.crop_s = float(crop_s)
        self.downsample = int(downsample)
        self.clip = float(clip)
        self.n_rows = _N_ROWS[montage]
        # chains as stored (already LL, RL, LP, RP, C), then the average reference by region
        self.register_buffer("row_order", torch.tensor(
            tuple(range(contract.N_CHAINS)) + tuple(contract.N_CHAINS + i for i in AVERAGE_ROW_ORDER)),
            persistent=False)
        keep = min(contract.WINDOW_SAMPLES,
                   max(1, round(contract.WINDOW_SAMPLES * self.crop_s / contract.WINDOW_S)))
        n_times = max(1, keep // self.downsample)
        self.n_strips = min(n_times, int(n_strips) if n_strips is not None
                            else auto_strips(self.n_rows, n_times))
        self.image_size = int(image_size)
        self.position_channel = bool(position_channel)
        self.backbone = create_timm_backbone(
            "models.eeg_image", backbone, pretrained=pretrained, pretrained_path=pretrained_path,
            in_chans=1 + int(self.position_channel), num_classes=n_outputs, drop_rate=drop_rate,
            drop_path_rate=drop_path_rate)
        self.feature_dim = int(self.backbone.num_features)

    def portable_kwargs(self, kwargs: dict) -> dict:
        """``kwargs`` to rebuild this model from its trained weights: no pretrained load."""
        return {k: v for k, v in kwargs.items() if k not in ("pretrained", "pretrained_path")}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    def signal_rows(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Store fields in ``input_fields`` order -> the scaled rows ``(B, n_rows, T')``
        (cropped, downsampled, robustly scaled, in the documented row order)."""
        if len(inputs) != len(self.input_fields):
            raise ValueError(f"expected {len(self.input_fields)} inputs {self.input_fields}, "
                             f"got {len(inputs)}")
        x = montage_signals(self.montage, dict(zip(self.input_fields, inputs))).float()
        if self.montage == "chains+average":
            x = x.index_select(1, self.row_order)
        x = central_crop(x, self.crop_s, float(contract.WINDOW_S))
        x = downsample_time(x, self.downsample)
        return robust_scale(x, self.clip)

    def build_image(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Store fields in ``input_fields`` order -> image ``(B, 1 or 2, S, S)``."""
        image = stack_strips(self.signal_rows(*inputs), self.n_strips)  # (B, 1, strips*R, W)
        if self.position_channel:
            height, width = int(image.shape[2]), int(image.shape[3])
            rows = torch.arange(height, dtype=image.dtype, device=image.device) % self.n_rows
            ramp = (rows / max(self.n_rows - 1, 1) * 2.0 - 1.0).view(1, 1, height, 1)
            image = torch.cat([image, torch.zeros_like(image) + ramp.expand(1, 1, height, width)],
                              dim=1)
        return F.interpolate(image, size=(self.image_size, self.image_size), mode="bilinear",
                             align_corners=False)

    def forward_features(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Store fields in ``input_fields`` order -> pooled features ``(B, feature_dim)``."""
        image = self.build_image(*inputs)
        return self.backbone.forward_head(self.backbone.forward_features(image), pre_logits=True)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.backbone.get_classifier()(features)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Store fields in ``input_fields`` order (``chains (B, 18, 10000)`` uV, and
        ``referential (B, 19, 10000)`` with ``chains+average``) -> logits ``(B, 6)``."""
        return self.forward_head(self.forward_features(*inputs))


@register_model
def eeg_image(**kwargs) -> EEGImageNet:
    """Factory of :class:`EEGImageNet` (see its parameters)."""
    return EEGImageNet(**kwargs)


eeg_image.__signature__ = inspect.signature(EEGImageNet)  # lets create_model check kwargs
