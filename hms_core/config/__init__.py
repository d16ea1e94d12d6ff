"""The one config system: typed sections built from mappings, the workflow config checked.

Each config section is a stdlib dataclass in the module that uses it; its type hints are the
one source of keys, types and allowed values (``Literal[...]``), its numpydoc ``Parameters``
section of the descriptions. :func:`from_mapping` builds a section from a (YAML) mapping and
reports errors with the full key path; :mod:`hms_core.config.schema` turns the same
dataclasses into ``config/schema.yaml``. The Snakefile calls :func:`coerce_config`,
``validate`` and :func:`hms_core.config.sections.check_config` at parse time, so every
config error shows in ``snakemake -n`` before a job starts.

Field metadata understood by :func:`from_mapping` and the schema:

- ``FLATTEN``: a nested dataclass whose keys sit flat in the parent section (the engine
  settings of ``training``, ``pretrain`` and ``transfer``); its defaults come from the
  field's ``default_factory``, so each section keeps its own.
- ``{"synonyms": {"old": "new"}}``: deprecated words accepted (and logged) for an option.
- ``{"minimum": m}``: the smallest allowed number (also the schema's ``minimum``).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import re
import types
import typing
from typing import Any, Literal, Mapping, Sequence, Union

import yaml

from hms_core.errors import ConfigError
from hms_core.paths import SCHEMA_PATH

logger = logging.getLogger(__name__)

FLATTEN = {"flatten": True}
NULL_WORDS = ("null", "~", "None")

def _show(value: Any) -> str:
    return "null" if value is None else repr(value)


def check_option(key: str, value: Any, allowed: Sequence[Any]) -> Any:
    """Return ``value`` if it is one of ``allowed``, else raise ConfigError naming all three.

    Parameters
    ----------
    key : str
        Full config key, e.g. ``"training.scheduler"``.
    value : object
        The value given.
    allowed : sequence
        The allowed values.
    """
    if value not in allowed:
        raise ConfigError(f"{key}: invalid value {_show(value)}; allowed values are "
                          f"{', '.join(_show(a) for a in allowed)}")
    return value


def field_keys(cls: type) -> list[str]:
    """The config keys of dataclass ``cls``, with ``FLATTEN`` fields replaced by their keys."""
    hints = typing.get_type_hints(cls)
    keys: list[str] = []
    for f in dataclasses.fields(cls):
        if f.init:
            keys += field_keys(hints[f.name]) if f.metadata.get("flatten") else [f.name]
    return keys


def _default_instance(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else copy.deepcopy(f.default)


def from_mapping(cls: type, data: Mapping[str, Any] | None, path: str, *, base: Any = None) -> Any:
    """Build config dataclass ``cls`` from ``data``, checking every key against the type hints.

    Nested dataclass fields recurse (key path ``path.field``); ``Literal`` fields go through
    :func:`check_option`; strings are coerced to the declared type (``"0"`` -> 0,
    ``"true"`` -> True, ``"null"`` -> None, a YAML list or mapping string parsed), as
    Snakemake's ``--config`` hands nested values over as strings. Values of the right type
    are kept as given (an int for a float field stays an int). After construction the
    instance's ``validate(path)`` runs when the class defines one.

    Parameters
    ----------
    cls : type
        A config dataclass.
    data : Mapping or None
        The section; None or {} gives the defaults.
    path : str
        Full key of the section, used in every error (``"preprocessing.filter"``).
    base : cls instance, optional
        Defaults to start from instead of the class defaults.

    Returns
    -------
    cls instance

    Raises
    ------
    ConfigError
        Unknown key, wrong type or a value outside the allowed set, naming the full key.
    """
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping of keys, got {data!r}")
    allowed = field_keys(cls)
    unknown = [key for key in data if key not in allowed]
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (allowed: {', '.join(allowed)})")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        hint = hints[f.name]
        key = f"{path}.{f.name}"
        if f.metadata.get("flatten"):
            own = {k: data[k] for k in field_keys(hint) if k in data}
            values[f.name] = from_mapping(hint, own, path, base=_default_instance(f))
        elif f.name not in data:
            continue
        elif dataclasses.is_dataclass(hint):
            values[f.name] = from_mapping(hint, data[f.name], key, base=_default_instance(f))
        else:
            values[f.name] = _check_minimum(parse_value(_replace_synonym(data[f.name], f, key), hint, key), f, key)
    cfg = dataclasses.replace(base, **values) if base is not None else cls(**values)
    if callable(getattr(cfg, "validate", None)):
        cfg.validate(path)
    return cfg


def _check_minimum(value: Any, f: dataclasses.Field, key: str) -> Any:
    minimum = f.metadata.get("minimum")
    if minimum is not None and value is not None and value < minimum:
        raise ConfigError(f"{key}: must be >= {minimum}, got {value!r}")
    return value


def _replace_synonym(value: Any, f: dataclasses.Field, key: str) -> Any:
    synonyms = f.metadata.get("synonyms", {})
    if isinstance(value, str) and value in synonyms:
        logger.warning("%s: %r is deprecated; use %r", key, value, synonyms[value])
        return synonyms[value]
    return value


def _parse_text(value: str, key: str) -> Any:
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: cannot parse {value!r}: {exc}") from None


def parse_value(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against type ``hint``, coercing strings; raise ConfigError naming ``key``.

    Parameters
    ----------
    value : object
        A value from the config mapping.
    hint : type
        The declared type: bool, int, float, str, None, ``Literal``, ``X | None``,
        ``list[X]``, ``tuple[X, ...]``, ``dict[K, V]`` or ``Any``.
    key : str
        Full config key for messages.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin is Literal:
        return check_option(key, _literal_value(value, args), args)
    if origin in (Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str) and value in NULL_WORDS)):
            return None
        arms = [a for a in args if a is not type(None)]
        for arm in arms[:-1]:
            try:
                return parse_value(value, arm, key)
            except ConfigError:
                pass
        return parse_value(value, arms[-1], key)
    if hint is type(None):
        if value is None or value in NULL_WORDS:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
            value = int(value)
        if isinstance(value, bool) or not (isinstance(value, int)
                                           or isinstance(value, float) and value.is_integer()):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if origin in (list, tuple) or hint in (list, tuple):
        return _parse_sequence(value, hint, key)
    if origin is dict or hint is dict:
        if isinstance(value, str):
            value = _parse_text(value, key)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        if not args:
            return value
        return {k: parse_value(v, args[1], f"{key}.{k}") for k, v in value.items()}
    return value


def _parse_sequence(value: Any, hint: Any, key: str) -> Any:
    if isinstance(value, str):
        value = _parse_text(value, key)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key}: expected a list, got {value!r}")
    args = typing.get_args(hint)
    if not args:
        return value
    if typing.get_origin(hint) is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} items, got {value!r}")
        item_hints = list(args)
    else:
        item_hints = [args[0]] * len(value)
    items = [parse_value(v, h, f"{key}[{i}]") for i, (v, h) in enumerate(zip(value, item_hints))]
    return type(value)(items)


def _literal_value(value: Any, allowed: tuple) -> Any:
    """The allowed value a string stands for (``"null"`` -> None, ``"60"`` -> 60.0), else ``value``."""
    if not isinstance(value, str) or value in allowed:
        return value
    for option in allowed:
        if option is None and value in NULL_WORDS:
            return None
        if isinstance(option, bool) and value.lower() == str(option).lower():
            return option
        if isinstance(option, (int, float)) and not isinstance(option, bool):
            try:
                if float(value) == option:
                    return option
            except ValueError:
                pass
    return value


# ----------------------------------------------------------------------------- the workflow config


def deep_update(base: dict, override: Mapping) -> dict:
    """Merge ``override`` into ``base`` recursively, as Snakemake merges config files."""
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def load_schema() -> dict:
    """``config/schema.yaml`` as a dict."""
    return yaml.safe_load(SCHEMA_PATH.read_text())


def coerce_config(config: dict, schema: Mapping | None = None) -> dict:
    """Coerce string values to the schema's types in place (``"0"`` -> 0 for an integer key).

    Snakemake parses ``--config 'compute={"gpus_per_job": 0}'`` with YAML's BaseLoader, so
    every nested value arrives as a string; this turns them into what the same text in a
    config file would give, before ``validate``. Strings of string-typed keys are left alone;
    values without a declared type (a model's keyword arguments) are read as JSON scalars
    or lists when they parse as such (``"64"`` -> 64, ``"efficientnet_b5"`` stays).

    Parameters
    ----------
    config : dict
        The merged workflow config (modified in place).
    schema : Mapping, optional
        The JSON schema; default ``config/schema.yaml``.

    Returns
    -------
    dict
        ``config``.
    """
    schema = load_schema() if schema is None else schema
    for key, value in list(config.items()):
        config[key] = _coerce_by_schema(value, schema.get("properties", {}).get(key), key)
    return config


def _coerce_by_schema(value: Any, schema: Mapping | None, key: str) -> Any:
    if schema is None:
        return _coerce_untyped(value)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for k, v in list(value.items()):
            sub = props.get(k, extra if isinstance(extra, Mapping) else None)
            value[k] = _coerce_by_schema(v, sub, f"{key}.{k}")
        return value
    if isinstance(value, list):
        items = schema.get("items")
        return [_coerce_by_schema(v, items, f"{key}[{i}]") if isinstance(items, Mapping) else _coerce_untyped(v)
                for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    kinds = schema.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    if "null" in kinds and value in NULL_WORDS:
        return None
    if "string" in kinds or not kinds:
        return value
    for kind, parse in (("boolean", lambda s: parse_value(s, bool, key)),
                        ("integer", lambda s: parse_value(s, int, key)),
                        ("number", lambda s: parse_value(s, float, key)),
                        ("array", lambda s: _coerce_by_schema(parse_value(s, list, key), schema, key)),
                        ("object", lambda s: _coerce_by_schema(parse_value(s, dict, key), schema, key))):
        if kind in kinds:
            try:
                return parse(value)
            except ConfigError:
                pass
    return value  # validate() names the key and the expected type


def _coerce_untyped(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _coerce_untyped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_coerce_untyped(v) for v in value]
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        return value if isinstance(parsed, str) else _coerce_untyped(parsed)
    return value


def validate_config(config: dict, schema: Mapping | None = None) -> dict:
    """Validate in place against the schema, filling defaults; raise ConfigError naming the key."""
    import jsonschema
    from jsonschema import validators

    schema = load_schema() if schema is None else schema
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

