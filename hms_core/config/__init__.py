"""Load and validate the workflow config outside Snakemake (tests, ``hms`` verbs).

Uses the same schema and the same default filling as the Snakefile's
``validate(config, schema="config/schema.yaml")``.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

from hms_core.errors import ConfigError
from hms_core.paths import CONFIG_DIR, REPO_ROOT, SCHEMA_PATH  # noqa: F401  (re-exported)



def dataclass_from_dict(cls, d: Mapping[str, Any] | None, *, section: str,
                        nested: Mapping[str, type] | None = None):
    """Build dataclass ``cls`` from the config mapping ``d``; unknown keys raise ConfigError.

    Parameters
    ----------
    cls : type
        A dataclass.
    d : Mapping or None
        The config section; None or {} gives the defaults.
    section : str
        Dotted name of the section, used in error messages (``"training.augment"``).
    nested : Mapping or None
        ``{key: sub_dataclass}`` for keys that are sections of their own; each is built with
        the sub-dataclass's ``from_dict``.
    """
    if d is not None and not isinstance(d, Mapping):
        raise ConfigError(f"{section}: expected a mapping, got {d!r}")
    d = dict(d or {})
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise ConfigError(f"{section}: unknown key {unknown[0]!r} (allowed: {', '.join(allowed)})")
    for key, sub in (nested or {}).items():
        if key in d:
            if d[key] is not None and not isinstance(d[key], Mapping):
                raise ConfigError(f"{section}.{key}: expected a mapping, got {d[key]!r}")
            d[key] = sub.from_dict(d[key])
    return cls(**d)


def deep_update(base: dict, override: Mapping) -> dict:
    """Merge ``override`` into ``base`` recursively, as Snakemake merges config files."""
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def load_config(*extra: str | os.PathLike, overrides: Mapping | None = None) -> dict:
    """``config/config.yaml``, then each extra file, then ``overrides``; validated, defaults filled."""
    config = yaml.safe_load((CONFIG_DIR / "config.yaml").read_text()) or {}
    for path in extra:
        deep_update(config, yaml.safe_load(Path(path).read_text()) or {})
    if overrides:
        deep_update(config, overrides)
    validate_config(config)
    return config


def validate_config(config: dict) -> dict:
    """Validate in place against the schema, filling defaults; raise ConfigError naming the key."""
    import jsonschema
    from jsonschema import validators

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    base = jsonschema.Draft202012Validator
    set_properties = base.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, schema):
        for name, subschema in properties.items():
            if "default" in subschema and isinstance(instance, dict):
                instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from set_properties(validator, properties, instance, schema)

    validator = validators.extend(base, {"properties": properties_with_defaults})(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        raise ConfigError(f"config key {key}: {err.message}")
    return config
