"""Generate ``config/schema.yaml`` from the config dataclasses, so the two never drift.

The dataclasses (with numpydoc ``Parameters`` sections) are the one source of every key,
type, default and description; this module turns them into the JSON schema that the
Snakefile validates against. ``python -m hms_core.config.schema`` rewrites the file;
a test fails when the committed schema is out of date.
"""
from __future__ import annotations

import dataclasses
import importlib
import re
import sys
import typing
from pathlib import Path
from typing import Any

import yaml

from hms_core.paths import SCHEMA_PATH


# section path -> (module, dataclass); "training" flattens its ``engine`` field.
SECTIONS = {
    "preprocessing": ("hms_core.preprocess", "PreprocessConfig"),
    "folds": ("hms_core.data.folds", "FoldsConfig"),
    "training": ("hms_core.train.fold", "TrainingConfig"),
    "pretrain": ("hms_core.foundation.pretrain", "PretrainConfig"),
    "transfer": ("hms_core.foundation.transfer", "TransferConfig"),
    "ensemble": ("hms_core.ensemble.config", "EnsembleConfig"),
    "export": ("hms_core.export.config", "ExportConfig"),
    "ops": ("hms_core.ops.config", "OpsConfig"),
}
FLATTENED = {("TrainingConfig", "engine"), ("PretrainConfig", "engine")}

# Keys whose values come from a fixed set (the dataclasses check them in from_dict too).
ENUMS = {
    "data.source": ["synthetic", "kaggle", "local"],
    "data.validation.on_bad": ["error", "report"],
    "preprocessing.on_bad_recording": ["error", "skip"],
    "preprocessing.dtype": ["float16", "float32"],
    "preprocessing.ica.method": ["picard", "fastica", "infomax"],
    "training.precision": ["fp32", "bf16", "fp16"],
    "training.optimizer": ["adamw", "adam", "sgd"],
    "training.scheduler": ["cosine", "constant", "onecycle"],
    "training.device": ["auto", "cpu", "cuda"],
    "training.select_mode": ["min", "max"],
    "pretrain.precision": ["fp32", "bf16", "fp16"],
    "pretrain.device": ["auto", "cpu", "cuda"],
    "pretrain.objectives.masked.target": ["time", "fourier", "both"],
    "transfer.precision": ["fp32", "bf16", "fp16"],
    "transfer.device": ["auto", "cpu", "cuda"],
    "export.provider": ["auto", "cpu", "cuda"],
}

_HAND_WRITTEN = {
    "data": {
        "type": "object",
        "description": "Where the Kaggle-layout data set comes from.",
        "default": {},
        "properties": {
            "source": {"type": "string", "default": "synthetic",
                       "description": "synthetic: generate one; kaggle: download the competition "
                                      "with the Kaggle CLI; local: use data.dir in place."},
            "dir": {"type": ["string", "null"], "default": None,
                    "description": "Folder in the Kaggle layout (local), or where to download (kaggle)."},
            "kaggle": {
                "type": "object", "default": {}, "description": "Kaggle download.",
                "properties": {"competition": {
                    "type": "string", "default": "hms-harmful-brain-activity-classification",
                    "description": "Competition slug passed to `kaggle competitions download -c`."}},
                "required": ["competition"], "additionalProperties": False,
            },
        },
        "required": ["source", "dir", "synthetic", "kaggle", "validation"],
        "additionalProperties": False,
    },
    "compute": {
        "type": "object",
        "description": "How jobs share the machine.",
        "default": {},
        "properties": {
            "gpus_per_job": {"type": "integer", "minimum": 0, "default": 1,
                             "description": "GPUs a training job asks for (Snakemake resource gpu); "
                                            "0 on a CPU-only machine lets training jobs run side by side."},
            "preprocess_threads": {"type": "integer", "minimum": 1, "default": 4,
                                   "description": "Threads of one preprocessing job (one per batch)."},
            "train_threads": {"type": "integer", "minimum": 1, "default": 8,
                              "description": "Threads of one training, pretraining, ensemble or export job."},
        },
        "required": ["gpus_per_job", "preprocess_threads", "train_threads"],
        "additionalProperties": False,
    },
    "models": {
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
                "image_sizes": {"type": ["array", "null"], "default": None,
                                "description": "Progressive resizing: [height, width] per stage of epochs."},
                "foundation_mode": {"type": ["string", "null"], "enum": ["frozen", "finetune", None],
                                    "default": None,
                                    "description": "Use the pretrained foundation encoder's features "
                                                   "(frozen or fine-tuned); null: not at all."},
            },
            "required": ["enabled"],
        },
    },
}


def _descriptions(cls: type) -> dict[str, str]:
    """Parameter descriptions from a numpydoc ``Parameters`` section."""
    doc = cls.__doc__ or ""
    match = re.search(r"Parameters\n\s*-+\n(.*?)(\n\s*\n\s*[A-Z][a-z]+\n\s*-+\n|\Z)", doc, re.S)
    out: dict[str, str] = {}
    if not match:
        return out
    names: list[str] = []
    lines: list[str] = []

    def flush() -> None:
        for n in names:
            out[n] = " ".join(lines).strip()

    for line in match.group(1).splitlines():
        head = re.match(r"^\s{0,4}(\w+(?:\s*,\s*\w+)*)\s*:(.*)$", line)
        if head and not line.startswith(" " * 8):
            flush()
            names = [n.strip() for n in head.group(1).split(",")]
            lines = []
            rest = head.group(2)
            if "," in rest and "default" in rest:
                lines.append("(" + rest.split(",", 1)[1].strip() + ")")
        elif names:
            lines.append(line.strip())
    flush()
    return out


def _json_type(hint: Any) -> dict:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        types = []
        for arg in args:
            t = _json_type(arg)["type"]
            types.extend(t if isinstance(t, list) else [t])
        return {"type": sorted(set(types), key=types.index)}
    if hint is type(None):
        return {"type": "null"}
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        return {"type": "integer"}
    if hint is float:
        return {"type": "number"}
    if hint is str:
        return {"type": "string"}
    if origin in (list, tuple, typing.Sequence) or hint in (list, tuple):
        return {"type": "array"}
    if origin is dict or hint is dict:
        return {"type": "object"}
    return {"type": ["string", "number", "integer", "boolean", "array", "object", "null"]}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def dataclass_schema(cls: type, path: str) -> dict:
    """JSON schema of one config dataclass (nested dataclasses become nested objects)."""
    hints = typing.get_type_hints(cls)
    docs = _descriptions(cls)
    properties: dict[str, dict] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if (cls.__name__, f.name) in FLATTENED:
            if dataclasses.is_dataclass(hint):
                properties.update(dataclass_schema(hint, path)["properties"])
            else:  # a plain dict of engine defaults: keys documented by EngineConfig
                properties.update(_engine_dict_schema(f.default_factory(), path))
            continue
        key = f"{path}.{f.name}"
        if dataclasses.is_dataclass(hint):
            sub = dataclass_schema(hint, key)
            sub["description"] = docs.get(f.name) or (hint.__doc__ or "").strip().splitlines()[0]
            properties[f.name] = sub
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        prop = {**_json_type(hint), "default": _plain(default),
                "description": docs.get(f.name) or _fallback_description(cls, f.name)}
        if key in ENUMS:
            prop["enum"] = ENUMS[key]
        properties[f.name] = prop
    return {"type": "object", "default": {}, "properties": properties,
            "required": sorted(properties), "additionalProperties": False}


def _engine_dict_schema(defaults: dict, path: str) -> dict:
    from hms_core.train.engine import EngineConfig

    engine_docs = _descriptions(EngineConfig)
    hints = typing.get_type_hints(EngineConfig)
    out = {}
    for name, value in defaults.items():
        hint = hints.get(name, type(value))
        prop = {**_json_type(hint), "default": _plain(value),
                "description": engine_docs.get(name) or _fallback_description(EngineConfig, name)}
        if f"{path}.{name}" in ENUMS:
            prop["enum"] = ENUMS[f"{path}.{name}"]
        out[name] = prop
    return out


def _fallback_description(cls: type, name: str) -> str:
    summary = " ".join((cls.__doc__ or cls.__name__).split("\n\n")[0].split())
    return f"{name.replace('_', ' ')}; see {summary}"


def build_schema() -> dict:
    data = dict(_HAND_WRITTEN["data"])
    from hms_core.data.synthetic import SyntheticConfig

    synthetic = dataclass_schema(SyntheticConfig, "data.synthetic")
    synthetic["description"] = "The built-in synthetic data set (data.source: synthetic)."
    from hms_core.data.validate import ValidationConfig

    validation = dataclass_schema(ValidationConfig, "data.validation")
    validation["description"] = "Checks of the data set before preprocessing."
    data["properties"] = {**data["properties"], "synthetic": synthetic, "validation": validation}
    data["properties"]["source"]["enum"] = ENUMS["data.source"]
    properties = {"data": data, "compute": _HAND_WRITTEN["compute"]}
    for section, (module, name) in SECTIONS.items():
        cls = getattr(importlib.import_module(module), name)
        sub = dataclass_schema(cls, section)
        sub["description"] = (cls.__doc__ or section).strip().splitlines()[0]
        properties[section] = sub
    properties["models"] = _HAND_WRITTEN["models"]
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
    header = "# Generated by `python -m hms_core.config.schema` from the config dataclasses.\n"
    return header + yaml.safe_dump(build_schema(), sort_keys=False, width=100)


if __name__ == "__main__":
    SCHEMA_PATH.write_text(render())
    print(f"wrote {SCHEMA_PATH}", file=sys.stderr)
