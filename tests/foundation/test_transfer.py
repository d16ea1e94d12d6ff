"""Transfer study on the tiny store: every arm runs and the JSON has the expected keys."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from hms_core.config import from_mapping
from hms_core.errors import ConfigError, DataError
from hms_core.models.foundation import FoundationClassifier, load_foundation
from hms_core.models.registry import create_model
from hms_core.foundation.pretrain import pretrain
from hms_core.foundation.transfer import TransferConfig, patient_subset, transfer_study

torch.set_num_threads(1)

PRETRAIN = {
    "epochs": 1, "batch_size": 8, "progress": False, "device": "cpu",
    "model": {"dim": 16, "depth": 1, "heads": 2, "max_patches": 4},
}
TRANSFER = {"epochs": 1, "probe_epochs": 3, "batch_size": 8, "progress": False, "device": "cpu"}


@pytest.fixture(scope="module")
def encoder_path(tiny_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("transfer_pretrain")
    pretrain([tiny_store.store], PRETRAIN, out_path=out / "enc.pth", checkpoint_dir=out / "ckpt")
    return out / "enc.pth"


def test_transfer_study_reports_every_arm(tiny_store, encoder_path, tmp_path):
    out_json = tmp_path / "transfer.json"
    result = transfer_study([tiny_store.store], tiny_store.folds_csv, encoder_path, TRANSFER,
                            out_json=out_json, checkpoint_dir=tmp_path / "ckpt", status_path=tmp_path / "run.json")
    assert json.loads(out_json.read_text())["summary"] == result["summary"]
    arms = {(r["init"], r["mode"], r["label_fraction"]) for r in result["runs"]}
    assert arms == {(i, m, f) for i in ("pretrained", "random") for m in ("frozen", "finetune")
                    for f in (0.1, 1.0)}
    folds = pd.read_csv(tiny_store.folds_csv)
    assert result["n_val_windows"] == int((folds["fold"] == 0).sum())
    for run in result["runs"]:
        assert np.isfinite(run["val_kl"]) and run["val_kl"] >= 0
        assert len(run["val_kl_per_epoch"]) == (1 if run["mode"] == "finetune" else 3)
        assert run["val_kl_per_epoch"][-1] == pytest.approx(run["val_kl"], rel=1e-5)
    small = [r for r in result["runs"] if r["label_fraction"] == 0.1]
    full = [r for r in result["runs"] if r["label_fraction"] == 1.0]
    assert max(r["n_train_windows"] for r in small) < min(r["n_train_windows"] for r in full)
    for mode in ("frozen", "finetune"):
        for frac in ("0.1", "1"):
            cell = result["summary"][mode][frac]
            assert cell["gain"] == pytest.approx(cell["random"] - cell["pretrained"])
    assert result["val_kl_prior"] > 0 and "frozen" in result["conclusion"]
    assert "validation fold included" in result["notes"]
    status = json.loads((tmp_path / "run.json").read_text())["jobs"]["transfer"]
    assert status["done"] == status["total"] == 8


def test_patient_subset_keeps_whole_patients():
    index = pd.DataFrame({"patient_id": np.repeat(np.arange(20), 3)})
    rows = np.arange(60)
    subset, n_patients = patient_subset(rows, index, 0.1, seed=0)
    assert n_patients == 2 and len(subset) == 6
    assert len(np.unique(index["patient_id"].to_numpy()[subset])) == 2
    assert patient_subset(rows, index, 1.0, seed=0)[0].tolist() == rows.tolist()


def test_foundation_linear_is_registered_and_loads_the_encoder(encoder_path):
    model = create_model("foundation_linear", n_times=10000, foundation_path=str(encoder_path),
                         foundation_mode="frozen")
    assert isinstance(model, FoundationClassifier) and model.freeze_encoder
    reference = load_foundation(encoder_path)
    x = torch.randn(2, 18, 10000) * 50
    assert torch.equal(model.encoder.forward_features(x), reference.forward_features(x))
    assert model(x).shape == (2, 6)


def test_transfer_errors(tiny_store, encoder_path, tmp_path):
    with pytest.raises(ConfigError, match="transfer.modes"):
        from_mapping(TransferConfig, {"modes": ["probe"]}, "transfer")
    with pytest.raises(ConfigError, match="label_fractions"):
        from_mapping(TransferConfig, {"label_fractions": [0.0]}, "transfer")
    bad = tmp_path / "folds.csv"
    pd.DataFrame({"label_id": [1]}).to_csv(bad, index=False)
    with pytest.raises(DataError, match="folds.csv.*fold"):
        transfer_study([tiny_store.store], bad, encoder_path, TRANSFER, out_json=tmp_path / "t.json",
                       checkpoint_dir=tmp_path / "c")
