"""Transfer study on the tiny store: every arm runs on paired patient subsets and seeds over two
validation folds, the prior is the reference, the verdict follows its rule, and the encoder
it assesses never saw a validation fold."""
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
    """An encoder pretrained without folds 0 and 1 (the study's validation folds)."""
    out = tmp_path_factory.mktemp("transfer_pretrain")
    pretrain([tiny_store.store], PRETRAIN, out_path=out / "enc.pth", checkpoint_dir=out / "ckpt",
             folds_csv=tiny_store.folds_csv)
    return out / "enc.pth"


def _prior_kl(tiny_store, fold: int) -> float:
    """KL of the training folds' mean vote distribution on ``fold``, computed here from the stores."""
    index = open_window_source([tiny_store.store]).index
    joined = index.merge(pd.read_csv(tiny_store.folds_csv)[["label_id", "fold"]], on="label_id")
    votes = joined[list(contract.VOTE_COLUMNS)].to_numpy(dtype=np.float64)
    joined, votes = joined[votes.sum(1) > 0], votes[votes.sum(1) > 0]
    targets = votes / votes.sum(1, keepdims=True)
    val = (joined["fold"] == fold).to_numpy()
    return kaggle_kl(targets[val], np.broadcast_to(targets[~val].mean(0), targets[val].shape))


def test_transfer_study_pairs_folds_and_seeds_and_gives_a_verdict(tiny_store, encoder_path, tmp_path):
    out_json = tmp_path / "transfer.json"
    result = transfer_study([tiny_store.store], tiny_store.folds_csv, encoder_path, TRANSFER,
                            out_json=out_json, checkpoint_dir=tmp_path / "ckpt", status_path=tmp_path / "run.json")
    saved = json.loads(out_json.read_text())
    assert saved["summary"] == result["summary"] and saved["pretraining_helps"] == result["pretraining_helps"]
    folds = pd.read_csv(tiny_store.folds_csv)
    assert sorted({r["val_fold"] for r in result["runs"]}) == [0, 1]
    for fold in (0, 1):
        assert result["folds"][str(fold)]["n_val_windows"] == int((folds["fold"] == fold).sum())
        assert result["folds"][str(fold)]["val_kl_prior"] == pytest.approx(_prior_kl(tiny_store, fold), rel=1e-6)
    for run in result["runs"]:
        assert np.isfinite(run["val_kl"]) and run["val_kl"] >= 0
        assert len(run["val_kl_per_epoch"]) == (1 if run["mode"] == "finetune" else 3)
        assert run["val_kl_per_epoch"][-1] == pytest.approx(run["val_kl"], rel=1e-5)
        assert not set(run["train_patient_ids"]) & set(folds.loc[folds["fold"] == run["val_fold"], "patient_id"])
        assert run["seed"] == run["repeat"]  # training seed = transfer.seed (0) + repeat
    # Paired: both inits train on the same patients in each (fold, mode, fraction, seed) ...
    by_arm = {(r["init"], r["val_fold"], r["mode"], r["label_fraction"], r["repeat"]): r["train_patient_ids"]
              for r in result["runs"]}
    assert {k[1:] for k in by_arm if k[0] == "pretrained"} == {k[1:] for k in by_arm if k[0] == "random"}
    for (init, *rest), patients in by_arm.items():
        assert by_arm[("random", *rest)] == patients
    # ... each seed of a fraction draws its own subset, and the whole set runs once per fold.
    half = {tuple(p) for (init, fold, mode, f, r), p in by_arm.items()
            if init == "pretrained" and fold == 0 and mode == "frozen" and f == 0.5}
    assert len(half) == result["summary"]["frozen"]["0.5"]["n_seeds"] == 3
    assert result["summary"]["frozen"]["0.5"]["n_folds"] == 2
    assert result["summary"]["frozen"]["1"]["n_seeds"] == 1
    # The summary: means over folds x seeds, seed spread within folds, paired differences, the prior.
    for mode in ("frozen", "finetune"):
        cell = result["summary"][mode]["0.5"]
        runs = {(r["init"], r["val_fold"], r["repeat"]): r for r in result["runs"]
                if r["mode"] == mode and r["label_fraction"] == 0.5}
        keys = sorted({k[1:] for k in runs})
        diffs = [runs[("pretrained", *k)]["val_kl"] - runs[("random", *k)]["val_kl"] for k in keys]
        assert cell["paired_diff"]["values"] == pytest.approx(diffs) and cell["paired_diff"]["n"] == 6
        for init in ("pretrained", "random"):
            kls = {k: runs[(init, *k)]["val_kl"] for k in keys}
            assert cell[init]["mean"] == pytest.approx(np.mean(list(kls.values())))
            within = [np.std([v for (f, _), v in kls.items() if f == fold], ddof=1) for fold in (0, 1)]
            assert cell[init]["seed_std"] == pytest.approx(float(np.mean(within)))
            priors = [runs[(init, *k)]["val_kl_prior"] for k in keys]
            assert cell[init]["vs_prior"] == pytest.approx(cell[init]["mean"] - np.mean(priors))
    # The verdict at the smallest fraction follows its rule from these numbers.
    decision = result["verdict"]
    assert decision["label_fraction"] == 0.5 and decision["enough_runs"]
    for mode, evidence in decision["modes"].items():
        cell = result["summary"][mode]["0.5"]
        assert evidence["margin"] == pytest.approx(cell["random"]["mean"] - cell["pretrained"]["mean"])
        assert evidence["helps"] == (evidence["margin"] > evidence["spread"])
    assert result["pretraining_helps"] == all(e["helps"] for e in decision["modes"].values())
    assert f"pretraining_helps: {str(result['pretraining_helps']).lower()}" in result["conclusion"]
    status = json.loads((tmp_path / "run.json").read_text())["jobs"]["transfer"]
    assert status["done"] == len(result["runs"]) == 2 * 2 * 2 * (3 + 1)


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


def test_study_refuses_an_encoder_pretrained_on_a_validation_fold(tiny_store, tmp_path):
    pretrain([tiny_store.store], {**PRETRAIN, "holdout_folds": [1]}, out_path=tmp_path / "enc.pth",
             checkpoint_dir=tmp_path / "pre", folds_csv=tiny_store.folds_csv)
    with pytest.raises(DataError, match="pretrained on windows of 2 validation patient.*fold 0.*add 0 to "
                                        "pretrain.holdout_folds"):
        transfer_study([tiny_store.store], tiny_store.folds_csv, tmp_path / "enc.pth", TRANSFER,
                       out_json=tmp_path / "t.json", checkpoint_dir=tmp_path / "c")
    assert not (tmp_path / "t.json").exists()


def test_config_requires_the_study_to_validate_on_held_out_folds():
    with pytest.raises(ConfigError, match=r"transfer.val_folds \[0, 2\]: folds \[2\] are not in pretrain.holdout_folds"):
        load_config(overrides={"transfer": {"val_folds": [0, 2]}})
    with pytest.raises(ConfigError, match="pretrain.holdout_folds: 7 is not a fold"):
        load_config(overrides={"pretrain": {"holdout_folds": [0, 7]}, "transfer": {"enabled": False}})
    with pytest.raises(ConfigError, match=r"holdout_folds \[0, 1, 2, 3, 4\] holds out all 5 folds"):
        load_config(overrides={"pretrain": {"holdout_folds": [0, 1, 2, 3, 4]}})
    with pytest.raises(ConfigError, match="transfer.val_folds.*distinct"):
        load_config(overrides={"transfer": {"val_folds": [0, 0]}})
    config = load_config(overrides={"pretrain": {"holdout_folds": None}, "transfer": {"enabled": False}})
    assert config["pretrain"]["holdout_folds"] is None


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
