"""from_mapping: full key paths, check_option messages, coercion of every type, engine sections."""
from __future__ import annotations

import dataclasses
from typing import Literal

import pytest

from hms_core.config import FLATTEN, check_option, from_mapping
from hms_core.errors import ConfigError
from hms_core.foundation.pretrain import ENGINE_DEFAULTS, PretrainConfig
from hms_core.foundation.transfer import TransferConfig
from hms_core.preprocess import PreprocessConfig
from hms_core.train.engine_config import EngineConfig
from hms_core.train.fold import TrainingConfig


@dataclasses.dataclass
class _Inner:
    mode: Literal["a", "b"] = "a"


@dataclasses.dataclass
class _Typed:
    n: int = 1
    x: float = 0.5
    flag: bool = False
    name: str = "s"
    maybe: float | None = None
    items: list[float] = dataclasses.field(default_factory=list)
    pair: tuple[int, int] = (1, 2)
    table: dict[str, int] = dataclasses.field(default_factory=dict)
    inner: _Inner = dataclasses.field(default_factory=_Inner)


def test_nested_typo_names_the_full_key_and_the_allowed_keys():
    with pytest.raises(ConfigError, match=r"^preprocessing\.filter: unknown key 'notch_hzz' \(allowed: l_freq_hz, "):
        from_mapping(PreprocessConfig, {"filter": {"notch_hzz": 50.0}}, "preprocessing")
    with pytest.raises(ConfigError, match=r"^preprocessing\.ica\.method: invalid value 'jade'"):
        from_mapping(PreprocessConfig, {"ica": {"method": "jade"}}, "preprocessing")
    with pytest.raises(ConfigError, match=r"^preprocessing\.filter\.numtaps: 800 must be an odd integer"):
        from_mapping(PreprocessConfig, {"filter": {"numtaps": 800}}, "preprocessing")
    with pytest.raises(ConfigError, match=r"^preprocessing\.dtype: invalid value 'int8'"):
        from_mapping(PreprocessConfig, {"dtype": "int8"}, "preprocessing")


def test_check_option_names_key_value_and_allowed_set():
    assert check_option("a.b", "x", ("x", "y")) == "x"
    with pytest.raises(ConfigError, match=r"^a\.b: invalid value 'z'; allowed values are 'x', 'y', null$"):
        check_option("a.b", "z", ("x", "y", None))


def test_strings_are_coerced_to_the_declared_type():
    cfg = from_mapping(_Typed, {"n": "0", "x": "1e-3", "flag": "true", "name": "7", "maybe": "null",
                                "items": "[0.1, 1]", "pair": ["3", "4"], "table": '{"a": 1}',
                                "inner": {"mode": "b"}}, "t")
    assert (cfg.n, cfg.x, cfg.flag, cfg.name, cfg.maybe) == (0, 1e-3, True, "7", None)
    assert cfg.items == [0.1, 1] and cfg.pair == [3, 4] and cfg.table == {"a": 1}
    assert cfg.inner.mode == "b"
    assert from_mapping(_Typed, {"maybe": "2.5", "flag": "False", "items": ["0.5"]}, "t").maybe == 2.5
    for key, value, message in (("n", "1.5", "expected an integer"), ("x", "abc", "expected a number"),
                                ("flag", "yes please", "expected true or false"), ("name", 3, "expected a string"),
                                ("items", "7", "expected a list"), ("pair", [1], "expected a list of 2 items"),
                                ("n", True, "expected an integer")):
        with pytest.raises(ConfigError, match=rf"^t\.{key}: {message}"):
            from_mapping(_Typed, {key: value}, "t")
    with pytest.raises(ConfigError, match=r"^t\.inner\.mode: invalid value 'c'"):
        from_mapping(_Typed, {"inner": {"mode": "c"}}, "t")
    with pytest.raises(ConfigError, match=r"^t\.inner: expected a mapping"):
        from_mapping(_Typed, {"inner": 3}, "t")


def test_values_of_the_right_type_are_kept_as_given():
    cfg = from_mapping(TrainingConfig, {"lr": 1, "weight_decay": 0, "inner_val_frac": 0.2}, "training")
    assert type(cfg.engine.lr) is int and cfg.engine.lr == 1  # as the old from_dict left it
    assert type(cfg.inner_val_frac) is float


def test_engine_keys_sit_flat_in_each_section_with_its_own_defaults():
    training = from_mapping(TrainingConfig, {"epochs": 3, "two_stage": {"epochs": 1}}, "training")
    assert training.engine == dataclasses.replace(EngineConfig(), epochs=3)
    pretrain = from_mapping(PretrainConfig, {"lr": 5e-4}, "pretrain")
    assert pretrain.engine == dataclasses.replace(EngineConfig(**ENGINE_DEFAULTS), lr=5e-4)
    transfer = from_mapping(TransferConfig, {"epochs": 3}, "transfer")
    assert (transfer.engine.epochs, transfer.engine.lr, transfer.engine.select_best) == (3, 5e-4, False)
    for section, cls in (("training", TrainingConfig), ("pretrain", PretrainConfig), ("transfer", TransferConfig)):
        with pytest.raises(ConfigError, match=rf"^{section}\.scheduler: invalid value 'onecycle'"):
            from_mapping(cls, {"scheduler": "onecycle"}, section)
        with pytest.raises(ConfigError, match=rf"^{section}\.ema_decay: must be in \[0, 1\)"):
            from_mapping(cls, {"ema_decay": 1.0}, section)


def test_flatten_fields_are_declared_the_same_way():
    for cls in (TrainingConfig, PretrainConfig, TransferConfig):
        engine = next(f for f in dataclasses.fields(cls) if f.name == "engine")
        assert dict(engine.metadata) == dict(FLATTEN)
