"""Registry of the foundation encoders: ``pretrain.encoder`` name -> encoder class.

Every encoder takes the braindecode signal arguments (``n_chans``, ``n_times``, ``sfreq``)
plus the ``pretrain.model`` sizes, and exposes the interface the pretraining objectives and
the transfer into classifiers use: ``input_field`` (the store field it reads), ``n_chans``,
``sfreq``, ``dim`` = ``feature_dim``, ``patch_samples``, ``n_patches``, ``used_samples``,
``hemisphere_swap`` (channel order of the mirrored head), ``masking_parameters`` (names of
the parameters only masking uses; a classifier freezes them), ``crop``, ``patchify``,
``encode_patches(patches, mask=None) -> (B, C*P, dim)``, ``forward_features -> (B, dim)``,
``init_kwargs()`` and ``load_init_weights(path)``. Encoder modules are imported on first use
(as :mod:`hms_core.models.registry` does), so this module imports none of them.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

from torch import nn

from hms_core.config import check_option

_ENCODERS: dict[str, type[nn.Module]] = {}
# name -> module that registers it
_BUILTIN = {"hms": "hms_core.models.foundation", "cbramod": "hms_core.models.cbramod_encoder",
            "biot": "hms_core.models.biot_encoder", "labram": "hms_core.models.labram_encoder"}
ENCODER_NAMES = tuple(_BUILTIN)


def register_encoder(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: register an encoder class under ``name`` (and set ``encoder_name``)."""

    def decorate(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _ENCODERS and _ENCODERS[name] is not cls:
            raise ValueError(f"encoder {name!r} is registered twice")
        cls.encoder_name = name
        _ENCODERS[name] = cls
        return cls

    return decorate


def encoder_class(name: str, key: str = "pretrain.encoder") -> type[nn.Module]:
    """The encoder class registered as ``name``; ConfigError naming ``key`` for an unknown one."""
    check_option(key, name, ENCODER_NAMES)
    if name not in _ENCODERS:
        importlib.import_module(_BUILTIN[name])
    return _ENCODERS[name]


def build_encoder(name: str, **kwargs: Any) -> nn.Module:
    """A freshly initialised encoder ``name`` built with ``kwargs``."""
    return encoder_class(name)(**kwargs)


def encoder_spec(encoder: nn.Module) -> dict[str, Any]:
    """``{"encoder": name, **init_kwargs}``: what :func:`build_from_spec` rebuilds it from."""
    return {"encoder": encoder.encoder_name, **encoder.init_kwargs()}


def build_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Rebuild an encoder from :func:`encoder_spec`'s mapping (no ``encoder`` key: ``"hms"``)."""
    kwargs = dict(spec)
    return build_encoder(kwargs.pop("encoder", "hms"), **kwargs)
