"""The shipped configs validate and build, the schema is current and fully documented."""
from __future__ import annotations

from pathlib import Path

import pytest

from hms_core.config.sections import check_config, load_config
from hms_core.config import schema as config_schema
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
        assert "default" in prop, f"{key} has no default"
        assert "{" not in prop["description"] or "default" not in prop["description"].split("{")[1][:40], (
            f"{key}: the numpydoc type line leaked into the description")
        if prop.get("type") == "object" and "properties" in prop:
            assert "required" in prop, f"{key} has no required list"
            _check_schema_level(prop, key)


def test_every_key_has_type_description_default():
    _check_schema_level(config_schema.build_schema(), "")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_shipped_config_builds_every_section(name):
    config = load_config(*CONFIGS[name])
    built = check_config(config)
    assert set(built["models"]) >= {"resnet1d_gru", "efficientnet"}


def test_defaults_are_filled():
    config = load_config(REPO / "config/demo.yaml")
    assert config["preprocessing"]["ica"]["method"] in ("picard", "fastica")
    assert config["folds"]["n_folds"] == 3
    assert config["pretrain"]["epochs"] == 4 and config["pretrain"]["weight_decay"] == 0.05


def test_bad_value_names_key_and_allowed_values():
    with pytest.raises(ConfigError, match=r"data\.source.*'floppy'.*synthetic"):
        load_config(overrides={"data": {"source": "floppy"}})
    with pytest.raises(ConfigError, match=r"preprocessing\.on_bad_recording"):
        load_config(overrides={"preprocessing": {"on_bad_recording": "ignore"}})
    with pytest.raises(ConfigError, match="unknown_key"):
        load_config(overrides={"training": {"unknown_key": 1}})
    with pytest.raises(ConfigError, match=r"models\.efficientnet\.training\.augment: unknown key 'flip'"):
        load_config(overrides={"models": {"efficientnet": {"training": {"augment": {"flip": 0.5}}}}})


@pytest.mark.parametrize("name", [n for n in sorted(CONFIGS) if n != "full"])
def test_offline_configs_load_no_pretrained_weights(name):
    """The demo and test configs run without the internet: no model asks for downloaded weights."""
    config = load_config(*CONFIGS[name])
    for model, entry in config["models"].items():
        if entry.get("enabled", True) and entry.get("pretrained"):
            assert entry.get("pretrained_path"), f"{name}: models.{model} would download weights"
