"""bench/compare_runs.py: the refactor check finds a changed artifact of every kind."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from bench_loader import load_bench



compare_runs = load_bench("compare_runs")


def _make_run(root: Path) -> Path:
    torch.manual_seed(0)
    (root / "models" / "final").mkdir(parents=True)
    (root / "models" / "onnx").mkdir(parents=True)
    (root / "oof").mkdir()
    (root / "data" / "raw").mkdir(parents=True)
    (root / "data" / "processed").mkdir(parents=True)
    model = torch.nn.Linear(4, 3)
    torch.save({"model_name": "m", "state_dict": model.state_dict(),
                "history": [{"epoch": 0, "train_loss": 1.0, "seconds": 2.0}]},
               root / "models" / "final" / "m_fold0.pth")
    torch.onnx.export(model, (torch.zeros(1, 4),), str(root / "models" / "onnx" / "m.onnx"),
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}},
                      dynamo=False)
    pd.DataFrame({"label_id": [1, 2], "logp_seizure": np.array([-1.0, -2.0], "float32")}
                 ).to_parquet(root / "oof" / "m_fold0.parquet")
    group = zarr.open_group(str(root / "data" / "processed" / "batch_0000.zarr"), mode="w")
    group.create_array("chains", data=np.arange(12, dtype="float16").reshape(2, 6))
    pd.DataFrame({"label_id": [1, 2]}).to_parquet(
        root / "data" / "processed" / "batch_0000.zarr" / "index.parquet")
    (root / "data" / "raw" / "train.csv").write_text("label_id\n1\n2\n")
    return root


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    return _make_run(tmp_path_factory.mktemp("before") / "run")


def _copy(base_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(base_run, tmp_path / "after"))


def test_identical_runs(base_run, tmp_path):
    report = compare_runs.compare_runs(base_run, _copy(base_run, tmp_path))
    assert report["identical"], report
    assert report["checked"] == {"weight_files": 1, "tensors": 2, "oof_frames": 1, "zarr_stores": 1,
                                 "zarr_arrays": 1, "onnx_models": 1, "data_files": 1}


def test_timing_in_the_history_is_not_a_difference(base_run, tmp_path):
    after = _copy(base_run, tmp_path)
    path = after / "models" / "final" / "m_fold0.pth"
    ckpt = torch.load(path, weights_only=True)
    ckpt["history"][0]["seconds"] = 99.0
    torch.save(ckpt, path)
    assert compare_runs.compare_runs(base_run, after)["identical"]


@pytest.mark.parametrize("kind", ["tensor", "metric", "oof", "zarr", "index", "onnx", "raw", "missing"])
def test_each_kind_of_change_is_found(base_run, tmp_path, kind):
    after = _copy(base_run, tmp_path)
    weights = after / "models" / "final" / "m_fold0.pth"
    if kind in ("tensor", "metric"):
        ckpt = torch.load(weights, weights_only=True)
        if kind == "tensor":
            ckpt["state_dict"]["bias"][0] += 1e-6
        else:
            ckpt["history"][0]["train_loss"] = 0.5
        torch.save(ckpt, weights)
    elif kind == "oof":
        frame = pd.read_parquet(after / "oof" / "m_fold0.parquet")
        frame.loc[0, "logp_seizure"] = np.float32(-1.5)
        frame.to_parquet(after / "oof" / "m_fold0.parquet")
    elif kind == "zarr":
        group = zarr.open_group(str(after / "data" / "processed" / "batch_0000.zarr"), mode="r+")
        group["chains"][0, 0] = 7
    elif kind == "index":
        pd.DataFrame({"label_id": [1, 3]}).to_parquet(
            after / "data" / "processed" / "batch_0000.zarr" / "index.parquet")
    elif kind == "onnx":
        torch.manual_seed(1)
        torch.onnx.export(torch.nn.Linear(4, 3), (torch.zeros(1, 4),),
                          str(after / "models" / "onnx" / "m.onnx"), input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "batch"}}, dynamo=False)
    elif kind == "raw":
        (after / "data" / "raw" / "train.csv").write_text("label_id\n1\n3\n")
    else:
        (after / "oof" / "m_fold0.parquet").unlink()
    report = compare_runs.compare_runs(base_run, after)
    assert not report["identical"]
    if kind == "metric":
        assert report["metadata_diffs"] == {"models/final/m_fold0.pth": ["history[0].train_loss"]}
    elif kind == "missing":
        assert report["missing"] == ["oof/m_fold0.parquet"]
    else:
        assert len(report["differs"]) == 1, report["differs"]
