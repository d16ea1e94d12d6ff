"""Transfer study on the tiny store: every arm runs on paired patient subsets, the prior is the
reference, and the encoder it assesses never saw the validation fold."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from hms_core import contract
from hms_core.config import from_mapping
from hms_core.config.sections import load_config
from hms_core.errors import ConfigError, DataError
from hms_core.metrics import kaggle_kl
from hms_core.models.foundation import FoundationClassifier, load_foundation
from hms_core.models.registry import create_model
from hms_core.foundation.pretrain import pretrain
from hms_core.foundation.transfer import TransferConfig, patient_subset, repeated_subsets, transfer_study
from hms_core.store import open_window_source

torch.set_num_threads(1)

PRETRAIN = {
    "epochs": 1, "batch_size": 8, "progress": False, "device": "cpu",
    "model": {"dim": 16, "depth": 1, "heads": 2, "max_patches": 4},
}
# Tiny store: 4 training patients; no floor, so 0.5 draws 2 of them per repeat.
TRANSFER = {"epochs": 1, "probe_epochs": 3, "batch_size": 8, "progress": False, "device": "cpu",
            "label_fractions": [0.5, 1.0], "repeats": 3, "min_patients": 1, "min_windows": 0}


@pytest.fixture(scope="module")
def encoder_path(tiny_store, tmp_path_factory):
    """An encoder pretrained without fold 0 (the study's validation fold)."""
    out = tmp_path_factory.mktemp("transfer_pretrain")
    pretrain([tiny_store.store], PRETRAIN, out_path=out / "enc.pth", checkpoint_dir=out / "ckpt",
             folds_csv=tiny_store.folds_csv)
    return out / "enc.pth"


def _prior_kl(tiny_store) -> float:
    """KL of the training folds' mean vote distribution on fold 0, computed here from the stores."""
    index = open_window_source([tiny_store.store]).index
    joined = index.merge(pd.read_csv(tiny_store.folds_csv)[["label_id", "fold"]], on="label_id")
    votes = joined[list(contract.VOTE_COLUMNS)].to_numpy(dtype=np.float64)
    joined, votes = joined[votes.sum(1) > 0], votes[votes.sum(1) > 0]
    targets = votes / votes.sum(1, keepdims=True)
    val = (joined["fold"] == 0).to_numpy()
    return kaggle_kl(targets[val], np.broadcast_to(targets[~val].mean(0), targets[val].shape))


def test_transfer_study_pairs_subsets_and_reports_the_prior(tiny_store, encoder_path, tmp_path):
    out_json = tmp_path / "transfer.json"
    result = transfer_study([tiny_store.store], tiny_store.folds_csv, encoder_path, TRANSFER,
                            out_json=out_json, checkpoint_dir=tmp_path / "ckpt", status_path=tmp_path / "run.json")
    assert json.loads(out_json.read_text())["summary"] == result["summary"]
    folds = pd.read_csv(tiny_store.folds_csv)
    assert result["n_val_windows"] == int((folds["fold"] == 0).sum())
    val_patients = set(folds.loc[folds["fold"] == 0, "patient_id"])
    for run in result["runs"]:
        assert np.isfinite(run["val_kl"]) and run["val_kl"] >= 0
        assert len(run["val_kl_per_epoch"]) == (1 if run["mode"] == "finetune" else 3)
        assert run["val_kl_per_epoch"][-1] == pytest.approx(run["val_kl"], rel=1e-5)
        assert not set(run["train_patient_ids"]) & val_patients
    # Paired: both inits train on the same patients in each (mode, fraction, repeat) ...
    by_arm = {(r["init"], r["mode"], r["label_fraction"], r["repeat"]): r["train_patient_ids"] for r in result["runs"]}
    assert {k[1:] for k in by_arm if k[0] == "pretrained"} == {k[1:] for k in by_arm if k[0] == "random"}
    for (init, mode, fraction, repeat), patients in by_arm.items():
        assert by_arm[("random", mode, fraction, repeat)] == patients
    # ... the repeats of a fraction are different subsets, and the whole set runs once.
    half = {tuple(p) for (init, mode, f, r), p in by_arm.items() if init == "pretrained" and mode == "frozen" and f == 0.5}
    assert len(half) == result["summary"]["frozen"]["0.5"]["n_repeats"] >= 2
    assert all(len(p) == 2 for p in half)
    assert result["summary"]["frozen"]["1"]["n_repeats"] == 1
    # The summary: means over repeats, the paired difference per repeat, the prior as the reference.
    prior = _prior_kl(tiny_store)
    assert result["val_kl_prior"] == pytest.approx(prior, rel=1e-6)
    for mode in ("frozen", "finetune"):
        cell = result["summary"][mode]["0.5"]
        runs = {(r["init"], r["repeat"]): r["val_kl"] for r in result["runs"]
                if r["mode"] == mode and r["label_fraction"] == 0.5}
        repeats = sorted({rep for _, rep in runs})
        diffs = [runs[("pretrained", rep)] - runs[("random", rep)] for rep in repeats]
        assert cell["paired_diff"]["values"] == pytest.approx(diffs)
        assert cell["paired_diff"]["std"] == pytest.approx(float(np.std(diffs, ddof=1)))
        for init in ("pretrained", "random"):
            assert cell[init]["mean"] == pytest.approx(np.mean([runs[(init, rep)] for rep in repeats]))
            assert cell[init]["vs_prior"] == pytest.approx(cell[init]["mean"] - prior)
    assert f"prior {prior:.3f}" in result["conclusion"] and "vs prior" in result["conclusion"]
    assert "not pretrained on" in result["notes"]
    status = json.loads((tmp_path / "run.json").read_text())["jobs"]["transfer"]
    assert status["done"] == status["total"] == len(result["runs"]) == 2 * 2 * (len(half) + 1)


def test_patient_subset_keeps_whole_patients():
    index = pd.DataFrame({"patient_id": np.repeat(np.arange(20), 3)})
    rows = np.arange(60)
    subset, n_patients = patient_subset(rows, index, 0.1, seed=0)
    assert n_patients == 2 and len(subset) == 6
    assert len(np.unique(index["patient_id"].to_numpy()[subset])) == 2
    assert patient_subset(rows, index, 1.0, seed=0)[0].tolist() == rows.tolist()


def test_patient_subset_floor_grows_the_subset(caplog):
    index = pd.DataFrame({"patient_id": np.repeat(np.arange(20), 3)})  # 3 windows per patient
    rows = np.arange(60)
    small, _ = patient_subset(rows, index, 0.1, seed=4)
    with caplog.at_level("WARNING", logger="hms_core.foundation.transfer"):
        by_patients, n_p = patient_subset(rows, index, 0.1, seed=4, min_patients=5)
    assert "below the floor" in caplog.text
    by_windows, n_w = patient_subset(rows, index, 0.1, seed=4, min_windows=20)
    assert (n_p, len(by_patients)) == (5, 15) and (n_w, len(by_windows)) == (7, 21)
    assert set(small) <= set(by_patients) <= set(by_windows)  # grown in the same seeded order
    everything, n_all = patient_subset(rows, index, 0.1, seed=4, min_windows=1000)
    assert n_all == 20 and len(everything) == 60
    unfloored, n_big = patient_subset(rows, index, 0.5, seed=4, min_patients=5, min_windows=20)
    assert n_big == 10 and len(unfloored) == 30  # a fraction above the floor is left alone


def test_repeated_subsets_differ_across_repeats_and_collapse_when_equal():
    index = pd.DataFrame({"patient_id": np.repeat(np.arange(30), 4)})
    rows = np.arange(120)
    cfg = from_mapping(TransferConfig, {"repeats": 4, "min_patients": 1, "min_windows": 0, "seed": 3}, "transfer")
    subsets = repeated_subsets(rows, index, 0.2, cfg)
    patients = [frozenset(index["patient_id"].to_numpy()[r]) for _, r, _ in subsets]
    assert [rep for rep, _, _ in subsets] == [0, 1, 2, 3] and len(set(patients)) == 4
    assert all(n == 6 for _, _, n in subsets)
    again = repeated_subsets(rows, index, 0.2, cfg)  # seeded: the same subsets on a rerun
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(subsets, again))
    assert len(repeated_subsets(rows, index, 1.0, cfg)) == 1


def test_study_refuses_an_encoder_pretrained_on_its_validation_fold(tiny_store, tmp_path):
    pretrain([tiny_store.store], {**PRETRAIN, "holdout_fold": 1}, out_path=tmp_path / "enc.pth",
             checkpoint_dir=tmp_path / "pre", folds_csv=tiny_store.folds_csv)
    with pytest.raises(DataError, match="pretrained on windows of 2 validation patient.*holdout_fold to 0"):
        transfer_study([tiny_store.store], tiny_store.folds_csv, tmp_path / "enc.pth", TRANSFER,
                       out_json=tmp_path / "t.json", checkpoint_dir=tmp_path / "c")
    assert not (tmp_path / "t.json").exists()


def test_config_requires_the_study_to_validate_on_the_held_out_fold():
    with pytest.raises(ConfigError, match="transfer.val_fold 1 must be pretrain.holdout_fold"):
        load_config(overrides={"transfer": {"val_fold": 1}})
    with pytest.raises(ConfigError, match="pretrain.holdout_fold: 7 is not a fold"):
        load_config(overrides={"pretrain": {"holdout_fold": 7}, "transfer": {"enabled": False}})
    config = load_config(overrides={"pretrain": {"holdout_fold": None}, "transfer": {"enabled": False}})
    assert config["pretrain"]["holdout_fold"] is None


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
    with pytest.raises(ConfigError, match="transfer.repeats.*0"):
        from_mapping(TransferConfig, {"repeats": 0}, "transfer")
    with pytest.raises(ConfigError, match="transfer.min_patients"):
        from_mapping(TransferConfig, {"min_patients": 0}, "transfer")
    bad = tmp_path / "folds.csv"
    pd.DataFrame({"label_id": [1]}).to_csv(bad, index=False)
    with pytest.raises(DataError, match="folds.csv.*fold"):
        transfer_study([tiny_store.store], bad, encoder_path, TRANSFER, out_json=tmp_path / "t.json",
                       checkpoint_dir=tmp_path / "c")
