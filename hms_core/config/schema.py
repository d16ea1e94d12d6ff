"""Generate ``config/schema.yaml`` from the config dataclasses, so the two never drift.

The dataclasses of :data:`hms_core.config.sections.SECTIONS` are the one source of every key, type,
default, allowed value (``Literal``) and description (numpydoc ``Parameters``); this
module turns them into the JSON schema that the Snakefile validates against.
``python -m hms_core.config.schema`` rewrites the file; a test fails when the committed
schema is out of date.
"""
from __future__ import annotations

import dataclasses
import logging
import re
import types
import typing
from typing import Any, Literal, Union

import yaml

from hms_core.config.sections import SECTIONS
from hms_core.paths import SCHEMA_PATH

logger = logging.getLogger(__name__)

_JSON_TYPES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
               (type(None), "null"))
_ANY_TYPE = ["string", "number", "integer", "boolean", "array", "object", "null"]


def parameter_descriptions(cls: type) -> dict[str, str]:
    """Description text of each name in the numpydoc ``Parameters`` section of ``cls``.

    Only the indented lines under ``name : type`` are taken (the type line itself, with its
    ``{...}, default x`` part, is not); ``a, b : float`` gives both names the same text.
    """
    doc = (cls.__doc__ or "").expandtabs()
    match = re.search(r"Parameters\n\s*-+\n(.*?)(?:\n\s*\n\s*[A-Z][a-z]+\n\s*-+\n|\Z)", doc, re.S)
    out: dict[str, str] = {}
    if not match:
        return out
    lines = match.group(1).splitlines()
    indent = min((len(l) - len(l.lstrip()) for l in lines if l.strip()), default=0)
    names: list[str] = []
    text: list[str] = []

    def flush() -> None:
        for name in names:
            out[name] = " ".join(text).replace("``", "`").strip()

    for line in lines:
        if line.strip() and len(line) - len(line.lstrip()) == indent:
            flush()
            names = [n.strip() for n in line.split(":", 1)[0].split(",")]
            text = []
        elif line.strip():
            text.append(line.strip())
    flush()
    return out


def type_schema(hint: Any) -> dict:
    """JSON-schema ``type`` (and ``enum`` / ``items``) of one type hint."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        kinds = [_json_type(type(a)) for a in args]
        return {"type": _one_or_list(kinds), "enum": list(args)}
    if origin in (Union, types.UnionType):
        kinds: list[str] = []
        enum: list[Any] | None = []
        for arm in args:
            sub = type_schema(arm)
            kinds += sub["type"] if isinstance(sub["type"], list) else [sub["type"]]
            if enum is not None and "enum" in sub:
                enum += sub["enum"]
            elif arm is type(None) and enum is not None:
                enum.append(None)
            else:
                enum = None
        out = {"type": _one_or_list(kinds)}
        if enum and any(e is not None for e in enum):
            out["enum"] = enum
        return out
    if origin in (list, tuple) or hint in (list, tuple):
        out = {"type": "array"}
        items = [a for a in args if a is not Ellipsis]
        if items and all(a == items[0] for a in items):
            out["items"] = type_schema(items[0])
        return out
    if origin is dict or hint is dict:
        return {"type": "object"}
    for cls, name in _JSON_TYPES:
        if hint is cls:
            return {"type": name}
    return {"type": _ANY_TYPE}


def _json_type(cls: type) -> str:
    return next(name for c, name in _JSON_TYPES if c is cls)


def _one_or_list(kinds: list[str]) -> str | list[str]:
    kinds = sorted(set(kinds), key=kinds.index)
    return kinds[0] if len(kinds) == 1 else kinds


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def dataclass_schema(cls: type, *, base: Any = None, description: str | None = None) -> dict:
    """JSON schema of config dataclass ``cls``; defaults from ``base`` (an instance) or the class."""
    base = cls() if base is None else base
    hints = typing.get_type_hints(cls)
    docs = parameter_descriptions(cls)
    properties: dict[str, dict] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        hint, value = hints[f.name], getattr(base, f.name)
        if f.metadata.get("flatten"):
            properties.update(dataclass_schema(hint, base=value)["properties"])
        elif dataclasses.is_dataclass(hint):
            properties[f.name] = dataclass_schema(hint, base=value, description=docs.get(f.name))
        else:
            prop = type_schema(hint)
            if "enum" in prop and f.metadata.get("synonyms"):
                prop["enum"] = prop["enum"] + list(f.metadata["synonyms"])
            if "minimum" in f.metadata:
                prop["minimum"] = f.metadata["minimum"]
            properties[f.name] = {**prop, "default": _plain(value),
                                  "description": docs.get(f.name) or _missing(cls, f.name)}
    summary = " ".join((cls.__doc__ or cls.__name__).strip().split("\n\n")[0].split())
    return {"type": "object", "description": description or summary, "default": {},
            "properties": properties, "required": list(properties), "additionalProperties": False}


def _missing(cls: type, name: str) -> str:
    raise ValueError(f"{cls.__qualname__}: parameter {name!r} has no description in the docstring")


def models_schema() -> dict:
    """The ``models`` section: one entry per registered model; only the reserved keys are typed."""
    from hms_core.models.foundation import FoundationMode

    return {
        "type": "object",
        "description": "Main models by registered name; each entry's other keys are the model's "
                       "keyword arguments.",
        "default": {},
        "additionalProperties": {
            "type": "object",
            "properties": {
                "enabled": {"type": "boolean", "default": True, "description": "Train this model."},
                "training": {"type": "object", "default": {},
                             "description": "Per-model overrides of the training section."},
                "image_sizes": {"type": ["array", "null"], "items": {"type": "integer"}, "default": None,
                                "description": "Progressive resizing: the image size per stage of epochs."},
                "foundation_mode": {**type_schema(FoundationMode | None), "default": None,
                                    "description": "Use the pretrained foundation encoder's features "
                                                   "(frozen or fine-tuned); null: not at all."},
            },
            "required": ["enabled"],
        },
    }


def build_schema() -> dict:
    """The whole workflow config schema: every section of ``SECTIONS`` plus ``models``."""
    properties = {section: dataclass_schema(cls) for section, cls in SECTIONS.items()}
    properties["models"] = models_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "description": "hms workflow configuration (generated by hms_core.config.schema from the "
                       "config dataclasses; do not edit by hand).",
        "type": "object",
        "properties": properties,
        "required": sorted(properties),
        "additionalProperties": False,
    }


def render() -> str:
    """``config/schema.yaml`` as text."""
    header = "# Generated by `python -m hms_core.config.schema` from the config dataclasses.\n"
    return header + yaml.safe_dump(build_schema(), sort_keys=False, width=100)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    SCHEMA_PATH.write_text(render())
    logger.info("wrote %s", SCHEMA_PATH)
