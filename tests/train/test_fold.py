"""train_fold end to end on a small real Zarr window store: weights, OOF parquet, reload."""
import numpy as np
import pandas as pd
import pytest
import torch

from hms_core import contract
from hms_core.errors import ConfigError, DataError
from hms_core.store import StoreWriter, WindowStore
from hms_core.contract import LOGP_COLUMNS, LOGP_SWAP_COLUMNS
from hms_core.train.fold import WEIGHTS_KEYS, load_trained, predict_logp, resolve_model_config, train_fold
from hms_core.train.data import WindowDataset

torch.set_num_threads(1)
SHAPES = {"chains": (contract.N_CHAINS, contract.WINDOW_SAMPLES),
          "referential": (contract.N_EEG_CHANNELS, contract.WINDOW_SAMPLES), "eeg_spec": (4, 16, 20),
          "eeg_mel": (4, 8, 20), "kaggle_spec": (4, contract.SPEC_N_FREQS, contract.SPEC_WINDOW_ROWS)}
N_WINDOWS = 30


def _write_store(path, n=N_WINDOWS, seed=0, relabel_fold=None):
    rng = np.random.default_rng(seed)
    votes = np.stack([rng.multinomial(int(k), np.ones(6) / 6) for k in rng.integers(3, 16, n)])
    if relabel_fold is not None:  # other expert votes for that fold's windows only
        hit = (np.arange(n) // 6) % 3 == relabel_fold
        votes[hit] = np.roll(votes[hit], 1, axis=1) + 1
    index = pd.DataFrame({"label_id": np.arange(n) + 100, "eeg_id": np.arange(n) // 3,
                          "patient_id": np.arange(n) // 6,
                          "eeg_label_offset_seconds": 0.0, "spectrogram_id": np.arange(n) // 3,
                          "spectrogram_label_offset_seconds": 0.0})
    for j, col in enumerate(contract.VOTE_COLUMNS):
        index[col] = votes[:, j]
    w = StoreWriter(path, max_windows=n, shapes=SHAPES, windows_per_shard=4)
    fields = {k: (rng.normal(size=(n, *s)) * (30 if k in ("chains", "referential") else 1)).astype(np.float32)
              for k, s in SHAPES.items()}
    w.append(fields, index)
    w.close()
    folds = index[["label_id", "eeg_id", "patient_id"]].copy()
    folds["fold"] = (index["patient_id"] % 3).astype(int)
    return index, folds


CFG = {
    "training": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "progress": False, "eval_batch_size": 16,
                 "two_stage": {"enabled": True, "min_votes": 10, "epochs": 1},
                 "augment": {"mixup_alpha": 0.4}},
    "models": {
        "resnet1d_gru": {"enabled": True, "stem_width": 8, "widths": [8, 16], "strides": [4, 4],
                         "gru_hidden": 8, "input_downsample": 4},
        "efficientnet": {"enabled": True, "backbone": "test_efficientnet", "image_sizes": [32, 48],
                         "training": {"batch_size": 6, "ema_decay": 0.5}},
    },
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("store")
    index, folds = _write_store(d / "batch_0000.zarr")
    folds.to_csv(d / "folds.csv", index=False)
    return d, index


@pytest.mark.parametrize("model_name", ["resnet1d_gru", "efficientnet"])
def test_train_fold_writes_valid_weights_and_oof(store, tmp_path, model_name):
    d, index = store
    status = tmp_path / "status" / "run.json"
    metrics = train_fold([d / "batch_0000.zarr"], d / "folds.csv", model_name, 1, CFG,
                         weights_out=tmp_path / "w.pth", oof_out=tmp_path / "oof.parquet",
                         checkpoint_dir=tmp_path / "ckpt", status_path=status)
    oof = pd.read_parquet(tmp_path / "oof.parquet")
    assert list(oof.columns) == ["label_id", "fold", *contract.VOTE_COLUMNS, *LOGP_COLUMNS,
                                 *LOGP_SWAP_COLUMNS]
    val = index[index["patient_id"] % 3 == 1]
    assert sorted(oof["label_id"]) == sorted(val["label_id"]) and (oof["fold"] == 1).all()
    for cols in (LOGP_COLUMNS, LOGP_SWAP_COLUMNS):
        lse = np.logaddexp.reduce(oof[list(cols)].to_numpy(), axis=1)
        np.testing.assert_allclose(lse, 0.0, atol=1e-5)
    payload = torch.load(tmp_path / "w.pth", weights_only=True)
    assert set(WEIGHTS_KEYS) <= set(payload)
    assert all({"lr", "seconds", "train_loss", "val_kl", "oof_kl"} <= set(h) for h in payload["history"])
    assert len(payload["history"]) == 2  # one epoch on all rows, one on the high-vote rows
    assert {"kl_all", "kl_high_vote", "acc_high_vote", "n_rows", "n_high_vote", "kl_all_tta",
            "prior_kl_all"} <= set(metrics)
    assert metrics["n_rows"] == len(val)
    model = load_trained(tmp_path / "w.pth")
    assert not model.training and tuple(payload["input_fields"]) == model.input_fields
    ws = WindowStore([d / "batch_0000.zarr"])
    rows = np.flatnonzero(ws.index["patient_id"].to_numpy() % 3 == 1)
    logp = predict_logp(model, WindowDataset(ws, rows, model.input_fields))
    expected = oof.set_index("label_id").loc[ws.index["label_id"].to_numpy()[rows], list(LOGP_COLUMNS)]
    np.testing.assert_allclose(logp, expected.to_numpy(), atol=1e-5)
    assert status.exists()
    if model_name == "resnet1d_gru":  # a rerun (speed-only setting changed) reuses the finished run
        cfg = {**CFG, "training": {**CFG["training"], "status_every_s": 1.0}}
        again = train_fold([d / "batch_0000.zarr"], d / "folds.csv", model_name, 1, cfg,
                           weights_out=tmp_path / "w2.pth", oof_out=tmp_path / "oof2.parquet",
                           checkpoint_dir=tmp_path / "ckpt")
        assert pd.read_parquet(tmp_path / "oof2.parquet").equals(oof)
        assert again["kl_all"] == metrics["kl_all"]
        assert torch.load(tmp_path / "w2.pth", weights_only=True)["history"] == payload["history"]


def test_held_out_fold_labels_never_shape_the_weights(store, tmp_path):
    """The best epoch is picked on held-out training patients: changing the votes of the
    validation fold changes its OOF scores but not one weight."""
    d, _ = store
    other = tmp_path / "relabelled"
    other.mkdir()
    _write_store(other / "batch_0000.zarr", relabel_fold=1)
    cfg = {**CFG, "training": {**CFG["training"], "epochs": 3, "two_stage": {"enabled": False}}}
    runs = []
    for root in (d, other):
        out = tmp_path / root.name
        metrics = train_fold([root / "batch_0000.zarr"], d / "folds.csv", "resnet1d_gru", 1, cfg,
                             weights_out=out / "w.pth", oof_out=out / "oof.parquet",
                             checkpoint_dir=out / "ckpt")
        runs.append((metrics, torch.load(out / "w.pth", weights_only=True)))
    (m_a, w_a), (m_b, w_b) = runs
    assert m_a["n_inner_val"] > 0 and m_a["n_train"] + m_a["n_inner_val"] == 18
    assert m_a["kl_all"] != m_b["kl_all"]
    assert [h["val_kl"] for h in w_a["history"]] == [h["val_kl"] for h in w_b["history"]]
    assert all(torch.equal(w_a["state_dict"][k], w_b["state_dict"][k]) for k in w_a["state_dict"])
    with pytest.raises(ConfigError, match="inner_val_frac"):
        resolve_model_config({**CFG, "training": {"inner_val_frac": 0.0}}, "resnet1d_gru")
    last = resolve_model_config({**CFG, "training": {"inner_val_frac": 0.0, "select_best": False}},
                                "resnet1d_gru")[0]
    assert not last.engine.select_best


def test_config_and_data_errors(store, tmp_path):
    d, _ = store
    with pytest.raises(ConfigError, match="models.vit"):
        resolve_model_config(CFG, "vit")
    with pytest.raises(ConfigError, match="training.augment: unknown key .flip."):
        resolve_model_config({**CFG, "training": {"augment": {"flip": 1}}}, "resnet1d_gru")
    pd.DataFrame({"label_id": [100], "fold": [0]}).to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(DataError, match="windows have no fold"):
        train_fold([d / "batch_0000.zarr"], tmp_path / "short.csv", "resnet1d_gru", 0, CFG,
                   weights_out=tmp_path / "w.pth", oof_out=tmp_path / "o.parquet",
                   checkpoint_dir=tmp_path / "c")
