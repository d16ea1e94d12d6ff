"""The training length read off the mean cross-validation learning curve."""
import json

import pytest
import torch

from hms_core import cli
from hms_core.errors import ConfigError, DataError
from hms_core.train.curves import best_length, mean_curve, read_histories


def _weights(path, curve, model="resnet1d_gru", steps_per_epoch=20):
    history = [{"epoch": e, "step": (e + 1) * steps_per_epoch, "train_loss": 1.0, "oof_kl": v,
                "oof_kl_high_vote": v - 0.1} for e, v in enumerate(curve)]
    torch.save({"model_name": model, "history": history, "state_dict": {}}, path)
    return path


def test_best_length_is_where_the_mean_curve_is_lowest(tmp_path):
    # Fold 0 alone is best at epoch 2, fold 1 at epoch 4; their mean is lowest after 3 epochs.
    files = [_weights(tmp_path / "a.pth", [1.0, 0.5, 0.7, 0.9], steps_per_epoch=20),
             _weights(tmp_path / "b.pth", [1.0, 0.9, 0.55, 0.5], steps_per_epoch=22),
             _weights(tmp_path / "c.pth", [1.0, 0.8, 0.6, 0.7, 0.1], steps_per_epoch=21)]
    result = best_length(files)
    assert result["best_epochs"] == 3 and result["best_steps"] == 63  # mean of 60, 66, 63
    assert result["best_value"] == pytest.approx((0.7 + 0.55 + 0.6) / 3)
    assert result["n_folds"] == 3 and len(result["curve"]) == 4  # epoch 5: one fold only
    assert result["steps_per_epoch"] == pytest.approx(21.0)
    assert best_length(files, metric="oof_kl_high_vote")["best_epochs"] == 3
    curve = mean_curve(read_histories(files))
    assert curve["std"].iloc[0] == 0.0 and list(curve["epochs"]) == [1, 2, 3, 4]


def test_curves_verb_prints_one_json_line(tmp_path, capsys):
    files = [str(_weights(tmp_path / f"f{k}.pth", [1.0, 0.6 + 0.01 * k, 0.8])) for k in range(3)]
    assert cli.main(["curves", *files]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["best_epochs"] == 2 and out["best_steps"] == 40 and out["model"] == "resnet1d_gru"


def test_curve_errors_name_the_problem(tmp_path):
    a = _weights(tmp_path / "a.pth", [1.0, 0.5])
    b = _weights(tmp_path / "b.pth", [1.0, 0.5], model="efficientnet")
    with pytest.raises(ConfigError, match="several models"):
        best_length([a, b])
    with pytest.raises(ConfigError, match="val_kl"):
        best_length([a], metric="val_kl")
    torch.save({"model_name": "x"}, tmp_path / "bare.pth")
    with pytest.raises(DataError, match="no per-epoch history"):
        read_histories([tmp_path / "bare.pth"])
