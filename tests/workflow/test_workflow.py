"""End-to-end: the whole DAG on a tiny synthetic set, then re-runs and a targeted rebuild."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hms_core import contract

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "workflow" / "tiny.yaml"

pytestmark = pytest.mark.slow


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
           str(workdir), "--configfile", str(TINY), "--cores", "2", *args]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1500)
    if check and proc.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-3000:]}" for p in sorted(workdir.glob("logs/*/*.log")))
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-6000:]}\n{logs}")
    return proc


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Rule -> job count of a dry run, read from Snakemake's job-stats table."""
    out = snakemake(workdir, "-n", *args).stdout
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:", 1)[1]
    jobs = {}
    for line in table.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            jobs[m.group(1)] = int(m.group(2))
    return jobs


@pytest.fixture(scope="module")
def run_dir(tiny_workflow_run) -> Path:
    return tiny_workflow_run  # the session's run (tests/conftest.py), shared with the chaos test


def tiny_models() -> list[str]:
    import yaml

    models = yaml.safe_load(TINY.read_text())["models"]
    return [m for m, spec in models.items() if spec.get("enabled", True)]


def test_every_artifact_exists(run_dir: Path):
    expected = [
        "data/source.json", "data/manifest.sha256", "data/validation.json", "data/folds.csv",
        "data/processed/batch_0000.zarr", "models/final/eeg_foundation_pretrained.pth",
        "models/final/ensemble.pth", "models/onnx/ensemble.onnx", "training_results.json",
        "results/foundation_transfer.json", "results/figures",
    ]
    for model in tiny_models():
        expected += [f"models/onnx/{model}.onnx"]
        expected += [f"models/final/{model}_fold{k}.pth" for k in range(2)]
        expected += [f"oof/{model}_fold{k}.parquet" for k in range(2)]
    missing = [p for p in expected if not (run_dir / p).exists()]
    assert not missing, missing
    for model in tiny_models():
        assert any(p.is_dir() for p in (run_dir / "models/checkpoints").glob(f"*{model}*"))
    logs = list((run_dir / "logs").glob("*/*.log"))
    assert {p.parent.name for p in logs} >= {"fetch_data", "preprocess_batch", "train_fold", "results"}


def test_results_report_measured_figures(run_dir: Path):
    results = json.loads((run_dir / "training_results.json").read_text())
    text = json.dumps(results)
    for model in tiny_models():
        assert model in text
    assert "ensemble" in results
    assert re.search(r'"sha256": "[0-9a-f]{64}"', text)
    # Conformal sets: fitted on every OOF row, the deployed threshold is the one in ensemble.onnx.
    from hms_core.export.runtime import read_metadata

    conformal = results["ensemble"]["conformal"]
    assert conformal["cross_fitted"]["all"]["n"] == conformal["n_calibration"] > 0
    assert read_metadata(run_dir / "models/onnx/ensemble.onnx")["conformal"]["threshold"] == conformal["threshold"]


def test_ensemble_onnx_runs_on_a_raw_window(run_dir: Path):
    import onnxruntime as ort
    import pandas as pd

    from hms_core.data import io

    raw = Path(json.loads((run_dir / "data/source.json").read_text())["dir"])
    test = io.read_test_csv(raw / "test.csv")
    row = test.iloc[0]
    eeg = io.read_eeg(io.eeg_path(raw, row.eeg_id, split="test"))
    _, power = io.read_spectrogram(io.spectrogram_path(raw, row.spectrogram_id, split="test"))
    session = ort.InferenceSession(str(run_dir / "models/onnx/ensemble.onnx"),
                                   providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feeds = dict(zip(names, [eeg.T[None].astype(np.float32), power[None].astype(np.float32)]))
    outputs = session.run(None, feeds)
    probs = outputs[0]
    assert probs.shape == (1, contract.N_CLASSES)
    assert np.all(np.isfinite(probs))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert pd.notna(row.eeg_id)


def test_second_run_has_nothing_to_do(run_dir: Path):
    assert planned_jobs(run_dir) == {}


def test_dag_prints_a_graph(run_dir: Path):
    out = snakemake(run_dir, "--dag").stdout
    assert "digraph" in out and "train_fold" in out


def test_deleting_one_model_rebuilds_only_what_depends_on_it(run_dir: Path):
    model = tiny_models()[0]
    target = run_dir / f"models/final/{model}_fold0.pth"
    untouched = [run_dir / f"models/final/{m}_fold{k}.pth" for m in tiny_models() for k in range(2)
                 if (m, k) != (model, 0)]
    before = {p: p.stat().st_mtime_ns for p in untouched}
    target.unlink()
    jobs = planned_jobs(run_dir)
    assert jobs.get("train_fold") == 1
    assert jobs.get("export_model") == 1
    for upstream in ("fetch_data", "validate_data", "preprocess_batch", "pretrain", "make_folds"):
        assert upstream not in jobs
    snakemake(run_dir)
    assert target.exists()
    assert {p: p.stat().st_mtime_ns for p in untouched} == before
    assert planned_jobs(run_dir) == {}


def test_hms_predict_writes_a_submission(run_dir: Path, tmp_path: Path):
    import pandas as pd

    raw = Path(json.loads((run_dir / "data/source.json").read_text())["dir"])
    out = tmp_path / "submission.csv"
    proc = subprocess.run([sys.executable, "-m", "hms_core.cli", "predict", "--data", str(raw),
                           "--out", str(out), "--model", str(run_dir / "models/onnx/ensemble.onnx")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    sub = pd.read_csv(out)
    assert tuple(sub.columns) == contract.SUBMISSION_COLUMNS
    np.testing.assert_allclose(sub[list(contract.VOTE_COLUMNS)].sum(axis=1), 1.0, atol=1e-5)
    assert len(sub) == len(pd.read_csv(raw / "test.csv"))


def test_bad_config_fails_before_any_job(tmp_path: Path):
    proc = snakemake(tmp_path, "--config", "data={'source': 'floppy'}", check=False)
    assert proc.returncode != 0
    assert "floppy" in proc.stderr + proc.stdout
    assert "synthetic" in proc.stderr + proc.stdout
    assert not (tmp_path / "data").exists()


def test_report_embeds_the_figures(run_dir: Path):
    report = run_dir / "report.html"
    snakemake(run_dir, "--report", str(report))
    html = report.read_text(errors="replace")
    for figure in ("learning_curves", "confusion_matrix", "reliability", "per_class_kl", "preprocessing"):
        assert f"{figure}.png" in html, figure
    assert "ica_removed.csv" in html  # per recording, the ICA components removed and why


def test_mlflow_holds_a_run_per_job_under_the_workflow_run(run_dir: Path):
    from mlflow_runs import search_runs

    from hms_core.hashing import sha256_file

    runs = search_runs(run_dir)
    children = runs[runs["tags.job"].notna()]
    weights = sorted(p.stem for p in (run_dir / "models/final").glob("*_fold*.pth"))
    onnx = sorted(p.stem for p in (run_dir / "models/onnx").glob("*.onnx") if p.stem != "ensemble")
    expected = {"pretrain", "ensemble", "export_ensemble", *(f"train_{w}" for w in weights),
                *(f"export_{m}" for m in onnx)}
    assert set(children["tags.job"]) == expected  # later re-runs of a rule add runs of these
    assert (children["status"] == "FINISHED").all()
    parents = runs[runs["tags.job"].isna()]
    assert set(children["tags.mlflow.parentRunId"]) <= set(parents["run_id"])
    assert (parents["tags.mlflow.runName"].str.startswith("workflow ")).all()
    manifest = sha256_file(run_dir / "data/manifest.sha256")
    assert (children["tags.data_manifest_sha256"] == manifest).all()
    train = children[children["tags.job"].str.startswith("train_")]
    assert train["metrics.kl_all"].notna().all() and train["metrics.train_loss"].notna().all()
    latest = children.sort_values("start_time").groupby("tags.job").last()
    assert latest.loc["export_ensemble", "tags.sha256.ensemble.onnx"] == sha256_file(
        run_dir / "models/onnx/ensemble.onnx")
