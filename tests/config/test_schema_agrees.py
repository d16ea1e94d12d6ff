"""The generated schema and from_mapping accept exactly the same option values (every Literal)."""
from __future__ import annotations

import copy
import dataclasses
import typing
from typing import Literal, Union

import pytest

from hms_core.config import from_mapping, validate_config
from hms_core.config.sections import SECTIONS
from hms_core.config.schema import build_schema
from hms_core.data.validate import ON_BAD_CHOICES
from hms_core.errors import ConfigError
from hms_core.preprocess import PreprocessConfig
from hms_core.store import DTYPES


def _literal_fields(cls: type, path: list[str]):
    """(key path, Literal args, whether the value sits in a list) of every Literal field."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        where = path if f.metadata.get("flatten") else path + [f.name]
        if dataclasses.is_dataclass(hint):
            yield from _literal_fields(hint, where)
            continue
        in_list = typing.get_origin(hint) is list
        if in_list:
            hint = typing.get_args(hint)[0]
        if typing.get_origin(hint) in (Union, getattr(__import__("types"), "UnionType")):
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        if typing.get_origin(hint) is Literal:
            yield where, typing.get_args(hint), in_list


CASES = [(section, keys, allowed, in_list) for section in SECTIONS
         for keys, allowed, in_list in _literal_fields(SECTIONS[section], [section])]


# Other keys an option needs to be accepted by the code's cross-key checks.
NEEDS = {("data", "source"): {"dir": "/data/hms"}}


def _nest(keys: list[str], value) -> dict:
    out = value
    for key in reversed(keys):
        out = {key: out}
    return out


@pytest.mark.parametrize("section,keys,allowed,in_list", CASES, ids=[".".join(c[1]) for c in CASES])
def test_schema_and_code_agree_on_every_option(section, keys, allowed, in_list):
    schema = build_schema()
    assert len(CASES) >= 15
    for value in (*allowed, "not-an-option"):
        given = [value] if in_list else value
        doc = {**_nest(keys[1:], given), **NEEDS.get(tuple(keys), {})}
        try:  # as Snakemake's validate(): defaults filled, then checked
            validate_config({section: copy.deepcopy(doc)}, schema)
            schema_ok = True
        except ConfigError:
            schema_ok = False
        try:
            from_mapping(SECTIONS[section], doc, section)
            code_ok = True
        except ConfigError:
            code_ok = False
        assert schema_ok == code_ok == (value in allowed), (keys, value, schema_ok, code_ok)


def test_foundation_mode_enum_comes_from_the_literal():
    from hms_core.models.foundation import FoundationMode

    entry = build_schema()["properties"]["models"]["additionalProperties"]["properties"]["foundation_mode"]
    assert entry["enum"] == [*typing.get_args(FoundationMode), None]


def test_the_two_on_bad_options_share_one_vocabulary():
    hints = typing.get_type_hints(PreprocessConfig)
    assert typing.get_args(hints["on_bad_recording"]) == ON_BAD_CHOICES == ("error", "skip")
    assert typing.get_args(hints["dtype"]) == DTYPES
