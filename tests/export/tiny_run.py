"""A whole tiny run, built once per test session with the project's own code.

The shared ``tiny_dataset`` (train + test folders) -> ``preprocess_batch`` (cleaning,
WindowFrontend) into one Zarr store -> patient-grouped folds -> two tiny models trained
per fold with ``train_fold`` -> ``build_ensemble`` on their OOF parquets. The export and predict tests
run on its outputs. ICA is off to keep the run short (cleaning still interpolates NaN gaps).

Load this file with :func:`load` (one module object under one name, whoever imports it);
the run is built once into ``<pytest basetemp>/tiny_run`` and reused.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

from hms_core.data import io
from hms_core.preprocess import preprocess_batch
from hms_core.store import WindowStore
from hms_core.data.folds import make_folds

PREPROCESSING = {"ica": {"enabled": False}, "n_batches": 1}
MODELS = {
    # chains + average reference: the export, the ensemble graph's front end and its swap TTA
    # must produce both signal fields from the raw window as preprocessing stored them
    "resnet1d_gru": {"stem_width": 8, "widths": [8, 8], "strides": [4, 4], "gru_hidden": 8,
                     "input_downsample": 4, "dropout": 0.0, "montage": "chains+average"},
    "efficientnet": {"backbone": "test_efficientnet", "image_size": 48,
                     "input_fields": ["eeg_spec", "kaggle_spec"], "drop_rate": 0.0,
                     "crop_s": {"kaggle_spec": 120}, "time_bins": 4},
}
TRAINING = {"epochs": 1, "batch_size": 8, "device": "cpu", "progress": False, "num_workers": 0,
            "two_stage": {"enabled": False}, "eval_batch_size": 16}
N_FOLDS = 2


def build(root: Path, data_dir: Path) -> dict:
    """Build the run on ``data_dir`` under ``root`` (or reuse a finished one); return its files."""
    from hms_core.ensemble.build import build_ensemble
    from hms_core.export.onnx import export_ensemble
    from hms_core.train.fold import train_fold

    done = root / "done.json"
    store = root / "batch_0000.zarr"
    if not done.exists():
        torch.set_num_threads(1)
        root.mkdir(parents=True, exist_ok=True)
        train = io.read_train_csv(data_dir / "train.csv")
        preprocess_batch(data_dir, train, sorted(train["eeg_id"].unique()), store, PREPROCESSING)
        source = WindowStore([store])
        folds_csv = root / "folds.csv"
        make_folds(train, n_folds=N_FOLDS, seed=0).to_csv(folds_csv, index=False)
        weights, oofs = {}, {}
        for name in MODELS:
            weights[name], oofs[name] = [], []
            for fold in range(N_FOLDS):
                w, o = root / f"{name}_fold{fold}.pth", root / f"{name}_fold{fold}.parquet"
                train_fold(source, folds_csv, name, fold, {"training": TRAINING, "models": MODELS},
                           weights_out=w, oof_out=o, checkpoint_dir=root / "ckpt" / f"{name}{fold}")
                weights[name].append(str(w))
                oofs[name].append(str(o))
        ensemble_path = root / "ensemble.pth"
        metrics = build_ensemble(oofs, {"meta_learner": {"epochs": 2, "batch_size": 8, "hidden": 8},
                                        "selection": {"method": "all"}},
                                 out_path=ensemble_path, checkpoint_dir=root / "ckpt" / "ensemble")
        (root / "ensemble_metrics.json").write_text(json.dumps(metrics, default=str))
        export_ensemble(weights, ensemble_path, None, root / "ensemble.onnx",
                        preprocessing=PREPROCESSING, data_dir=data_dir, store_paths=source,
                        cfg={"n_parity_windows": 4}, parity_out=root / "ensemble_parity.json")
        done.write_text(json.dumps({"weights": weights, "oofs": oofs}))
    files = json.loads(done.read_text())
    return {"root": root, "data_dir": data_dir, "store": store, "source": WindowStore([store]), **files,
            "ensemble": root / "ensemble.pth", "ensemble_onnx": root / "ensemble.onnx",
            "ensemble_metrics_path": root / "ensemble_metrics.json",
            "ensemble_metrics": json.loads((root / "ensemble_metrics.json").read_text()),
            "parity_path": root / "ensemble_parity.json",
            "parity": json.loads((root / "ensemble_parity.json").read_text()),
            "folds_csv": root / "folds.csv"}


def load():
    """This module, imported once under the name ``hms_tiny_run``."""
    name = "hms_tiny_run"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
