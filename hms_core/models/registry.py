"""Model registry: ``@register_model`` on a factory, ``create_model(name, **kwargs)`` to build.

Adding a model family is one file with a registered factory plus a config entry; the
tests are parametrised over :func:`list_models`, so a new model is tested the day it is
registered. Model modules are imported by :func:`_import_builtin_models` on first use.
"""
from __future__ import annotations

import importlib
import inspect
import logging
from typing import Any, Callable

from torch import nn

from hms_core.errors import ConfigError

logger = logging.getLogger(__name__)

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_BUILTIN_MODULES = ("hms_core.models.resnet1d_gru", "hms_core.models.efficientnet",
                    "hms_core.models.foundation", "hms_core.models.qeeg",
                    "hms_core.models.eeg_image")


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register the factory ``fn`` under its function name (decorator)."""
    name = fn.__name__
    if name in _REGISTRY and _REGISTRY[name] is not fn:
        raise ValueError(f"model {name!r} is registered twice")
    _REGISTRY[name] = fn
    return fn


def _import_builtin_models() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    _import_builtin_models()
    return sorted(_REGISTRY)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``.

    Keyword arguments that are None are dropped, so unset CLI/config values never
    override a model's own defaults.

    Raises
    ------
    ConfigError
        ``name`` is not registered (the message lists the registered models) or the
        factory rejects a keyword.
    """
    _import_builtin_models()
    if name not in _REGISTRY:
        raise ConfigError(f"model {name!r} is not registered; registered models: "
                          f"{', '.join(sorted(_REGISTRY))}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    factory = _REGISTRY[name]
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"models.{name}: {exc}") from exc
    return factory(**kwargs)
