"""The shipped configs validate, every section is accepted by its dataclass, the schema is current."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from hms_core.config import schema as config_schema
from hms_core.config import load_config
from hms_core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "full": (),
    "demo": (REPO / "config/demo.yaml",),
    "tiny": (REPO / "tests/workflow/tiny.yaml",),
}


def test_schema_file_is_generated_from_the_dataclasses():
    assert (REPO / "config/schema.yaml").read_text() == config_schema.render(), (
        "config/schema.yaml is stale: run python -m hms_core.config.schema")


def _check_schema_level(schema: dict, where: str) -> None:
    for name, prop in schema.get("properties", {}).items():
        key = f"{where}.{name}".lstrip(".")
        assert "description" in prop and prop["description"], f"{key} has no description"
        assert "type" in prop, f"{key} has no type"
        if prop.get("type") == "object" and "properties" in prop:
            assert "required" in prop, f"{key} has no required list"
            _check_schema_level(prop, key)
        elif where:
            assert "default" in prop, f"{key} has no default"


def test_every_key_has_type_description_default():
    _check_schema_level(config_schema.build_schema(), "")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_shipped_config_is_accepted_by_every_section(name):
    config = load_config(*CONFIGS[name])
    for section, (module, cls_name) in config_schema.SECTIONS.items():
        cls = getattr(importlib.import_module(module), cls_name)
        cls.from_dict(config[section])
    from hms_core.data.synthetic import SyntheticConfig

    SyntheticConfig.from_dict(config["data"]["synthetic"])
    assert set(config["models"]) >= {"resnet1d_gru", "efficientnet"}


def test_defaults_are_filled():
    config = load_config(REPO / "config/demo.yaml")
    assert config["preprocessing"]["ica"]["method"] in ("picard", "fastica", "infomax")
    assert config["folds"]["n_folds"] == 3


def test_bad_value_names_key_and_allowed_values():
    with pytest.raises(ConfigError, match=r"data\.source.*'floppy'.*synthetic"):
        load_config(overrides={"data": {"source": "floppy"}})
    with pytest.raises(ConfigError, match=r"preprocessing\.on_bad_recording"):
        load_config(overrides={"preprocessing": {"on_bad_recording": "ignore"}})
    with pytest.raises(ConfigError, match="unknown_key"):
        load_config(overrides={"training": {"unknown_key": 1}})
