"""A timm backbone with optional pretrained weights from a local file (shared by image models).

Not a model family (nothing is registered here): :func:`create_timm_backbone` is what the
image models (``efficientnet``, ``eeg_image``) call to build their backbone, so the checks
of ``pretrained`` / ``pretrained_path`` and the offline error are the same for both.
"""
from __future__ import annotations

import os
from typing import Any

from torch import nn

from hms_core.errors import ConfigError


def create_timm_backbone(model_key: str, backbone: str, *, pretrained: bool = False,
                         pretrained_path: str | None = None, **timm_kwargs: Any) -> nn.Module:
    """The timm model ``backbone``, optionally started from pretrained weights.

    Parameters
    ----------
    model_key : str
        The model's config key, for error messages (``"models.efficientnet"``).
    backbone : str
        timm model name; an unknown name is a :class:`ConfigError`.
    pretrained : bool, default False
        Load timm's pretrained weights (from ``pretrained_path`` if given, else timm's
        hub/cache, which needs the internet once).
    pretrained_path : str or None, default None
        A local timm weights file (``.pth``/``.bin`` state dict or ``.safetensors``);
        needs ``pretrained=True``.
    **timm_kwargs
        Passed to ``timm.create_model`` (``in_chans``, ``num_classes``, ``drop_rate``, ...):
        timm adapts the stem to ``in_chans`` and leaves a new classifier randomly initialised.

    Raises
    ------
    ConfigError
        Unknown backbone; ``pretrained_path`` without ``pretrained`` or not a file; the
        pretrained weights could not be fetched (offline, no local file).
    """
    import timm

    if not timm.is_model(backbone):
        raise ConfigError(f"{model_key}.backbone: {backbone!r} is not a timm model "
                          "(e.g. efficientnet_b0, efficientnet_b5, resnet18, test_efficientnet)")
    if pretrained_path is not None:
        if not pretrained:
            raise ConfigError(f"{model_key}.pretrained_path is set but pretrained is "
                              "false; set pretrained: true to load it")
        if not os.path.isfile(pretrained_path):
            raise ConfigError(f"{model_key}.pretrained_path: {pretrained_path!r} is "
                              "not a file (timm weights of the backbone, saved locally)")
    overlay = {"file": str(pretrained_path)} if pretrained_path is not None else None
    try:
        return timm.create_model(backbone, pretrained=bool(pretrained),
                                 pretrained_cfg_overlay=overlay, **timm_kwargs)
    except OSError as exc:  # no network and no local file: say how to fix it
        if not pretrained or pretrained_path is not None:
            raise
        raise ConfigError(
            f"{model_key}.pretrained: the {backbone!r} weights could not be fetched "
            f"({type(exc).__name__}); on an offline machine set pretrained_path to a local "
            "timm weights file, or pretrained: false") from exc
