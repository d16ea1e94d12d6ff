"""The searched space, the tuning config section and how tuned parameters reach train_fold."""
from __future__ import annotations

import pytest

from hms_core.atomic import write_json
from hms_core.config import from_mapping
from hms_core.errors import ConfigError, DataError
from hms_core.train.fold import resolve_model_config
from hms_core.tune.config import TuningConfig
from hms_core.tune.space import (apply_params, apply_tuned_params, configured_values, default_space,
                                 resolve_space, suggest_params)

CFG = {
    "training": {"steps": 480, "lr": 2e-3, "weight_decay": 0.01, "batch_size": 16,
                 "augment": {"mixup_alpha": 0.2, "time_mask_p": 0.3}},
    "models": {
        "resnet1d_gru": {"enabled": True, "dropout": 0.2, "training": {"lr": 1e-3}},
        "qeeg": {"enabled": True, "training": {"steps": 0, "epochs": 6, "weight_decay": 0.0}},
    },
}


def test_tuned_params_override_the_merged_training_config(tmp_path):
    params = {"training.lr": 3e-4, "training.steps": 960, "training.augment.mixup_alpha": 0.6,
              "dropout": 0.35}
    write_json(tmp_path / "p.json", {"model": "resnet1d_gru", "fold": 0, "params": params})
    cfg = apply_tuned_params(CFG, "resnet1d_gru", tmp_path / "p.json")
    training, kwargs, _ = resolve_model_config(cfg, "resnet1d_gru")
    assert training.engine.lr == 3e-4  # over the model's own override (1e-3) and the shared 2e-3
    assert training.engine.steps == 960
    assert training.augment.mixup_alpha == 0.6
    assert training.augment.time_mask_p == 0.3  # the rest of the shared augment section stays
    assert training.engine.weight_decay == 0.01 and kwargs["dropout"] == 0.35
    # The caller's config is not modified, and no file means tuning is off.
    assert CFG["models"]["resnet1d_gru"] == {"enabled": True, "dropout": 0.2, "training": {"lr": 1e-3}}
    assert resolve_model_config(apply_tuned_params(CFG, "resnet1d_gru", None),
                                "resnet1d_gru")[0].engine.lr == 1e-3


def test_tuned_params_of_another_model_or_bad_keys_are_refused(tmp_path):
    write_json(tmp_path / "p.json", {"model": "qeeg", "fold": 0, "params": {"training.lr": 0.1}})
    with pytest.raises(DataError, match="tuned for model 'qeeg', not 'resnet1d_gru'"):
        apply_tuned_params(CFG, "resnet1d_gru", tmp_path / "p.json")
    with pytest.raises(ConfigError, match="'enabled' cannot be tuned"):
        apply_params(CFG, "resnet1d_gru", {"enabled": False})
    with pytest.raises(ConfigError, match="unknown key 'lrr'"):
        resolve_model_config(apply_params(CFG, "resnet1d_gru", {"training.lrr": 0.1}), "resnet1d_gru")


def test_default_space_follows_the_merged_config():
    training, kwargs, _ = resolve_model_config(CFG, "resnet1d_gru")
    space = default_space("resnet1d_gru", training, kwargs)
    assert set(space) == {"training.lr", "training.weight_decay", "training.steps", "dropout",
                          "training.augment.mixup_alpha"}
    assert space["training.lr"].low == pytest.approx(1e-3 / 3) and space["training.lr"].log
    assert (space["training.steps"].low, space["training.steps"].high) == (240, 960)
    assert space["training.steps"].integer
    training, kwargs, _ = resolve_model_config(CFG, "qeeg")
    space = default_space("qeeg", training, kwargs)
    assert set(space) == {"training.lr", "training.weight_decay", "training.epochs"}
    assert (space["training.epochs"].low, space["training.epochs"].high) == (3, 12)
    assert space["training.weight_decay"].low == 1e-5  # no decay configured: a fixed log range
    # The search starts from the configured values (0 decay lies outside the log range).
    assert configured_values(CFG, "qeeg", space) == {"training.lr": 2e-3, "training.epochs": 6}
    training, kwargs, _ = resolve_model_config(CFG, "resnet1d_gru")
    assert configured_values(CFG, "resnet1d_gru", default_space("resnet1d_gru", training, kwargs)) == {
        "training.lr": 1e-3, "training.weight_decay": 0.01, "training.steps": 480, "dropout": 0.2,
        "training.augment.mixup_alpha": 0.2}
    # eeg_image searches the same regularisation as the other timm backbone
    cfg = {**CFG, "models": {"eeg_image": {"enabled": True, "drop_rate": 0.3}}}
    training, kwargs, _ = resolve_model_config(cfg, "eeg_image")
    space = default_space("eeg_image", training, kwargs)
    assert {"drop_rate", "drop_path_rate", "training.augment.mixup_alpha"} <= set(space)
    assert configured_values(cfg, "eeg_image", space)["drop_rate"] == 0.3


def test_configured_space_replaces_the_built_in_one_and_is_checked():
    tuning = from_mapping(TuningConfig, {"space": {"qeeg": {
        "training.lr": {"low": 1e-3, "high": 1e-1, "log": True},
        "training.epochs": {"low": 2, "high": 8, "integer": True}}}}, "tuning")
    training, kwargs, _ = resolve_model_config(CFG, "qeeg")
    space = resolve_space(tuning, "qeeg", training, kwargs)
    assert set(space) == {"training.lr", "training.epochs"}

    class FixedTrial:  # what suggest_params asks of an Optuna trial
        def suggest_int(self, name, low, high, log=False):
            return ("int", name, low, high, log)

        def suggest_float(self, name, low, high, log=False):
            return ("float", name, low, high, log)

    assert suggest_params(FixedTrial(), space) == {
        "training.lr": ("float", "training.lr", 1e-3, 1e-1, True),
        "training.epochs": ("int", "training.epochs", 2, 8, False)}
    with pytest.raises(ConfigError, match=r"tuning.space.qeeg.training.lr: low \(0.1\) must be <= high"):
        from_mapping(TuningConfig, {"space": {"qeeg": {"training.lr": {"low": 0.1, "high": 0.01}}}},
                     "tuning")
    with pytest.raises(ConfigError, match="a log range needs low > 0"):
        from_mapping(TuningConfig, {"space": {"qeeg": {"dropout": {"low": 0, "high": 1, "log": True}}}},
                     "tuning")
    with pytest.raises(ConfigError, match="tuning.space.qeeg.dropout: unknown key 'hi'"):
        from_mapping(TuningConfig, {"space": {"qeeg": {"dropout": {"low": 0, "high": 1, "hi": 1}}}},
                     "tuning")
    with pytest.raises(ConfigError, match="tuning.pruner: invalid value 'hyperband'"):
        from_mapping(TuningConfig, {"pruner": "hyperband"}, "tuning")


def test_tuning_models_must_be_enabled_models():
    from hms_core.config.sections import load_config

    with pytest.raises(ConfigError, match="tuning.models: 'resnet' is not an enabled model"):
        load_config(overrides={"tuning": {"enabled": True, "models": ["resnet"]}})
    assert load_config()["tuning"]["enabled"] is False
