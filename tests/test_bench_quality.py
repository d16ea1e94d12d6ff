"""bench/quality.py: what a seed changes, the statistics over seeds, the reuse check."""
from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import yaml

from bench_loader import load_bench

REPO = Path(__file__).resolve().parents[1]


def _quality():
    return load_bench("quality")


def test_a_seed_changes_training_seeds_only():
    q = _quality()
    base = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    base.setdefault("models", {}).setdefault("resnet1d_gru", {}).setdefault("training", {})["seed"] = 5
    cfg = q.seeded_config(base, 7)
    assert cfg["training"]["seed"] == cfg["pretrain"]["seed"] == cfg["transfer"]["seed"] == 7
    assert cfg["ensemble"]["meta_learner"]["seed"] == 7
    assert cfg["models"]["resnet1d_gru"]["training"]["seed"] == 7
    # the data set and the folds stay those of the config: seeds measure training noise
    assert cfg["data"] == base["data"] and cfg.get("folds") == base.get("folds")
    assert base["models"]["resnet1d_gru"]["training"]["seed"] == 5  # the input is not changed


def _results(kl: float, share: float) -> dict:
    row = {"model_kl": kl, "prior_kl": 1.2, "floor_kl": 0.25, "gap_closed": share}
    return {"gap_to_floor": {"table": {"m": {"all": row, "high_vote": {**row, "model_kl": kl - 0.1}}}}}


def test_aggregate_over_seeds():
    q = _quality()
    out = q.aggregate({0: _results(0.8, 0.4), 1: _results(0.7, 0.5), 2: _results(0.9, 0.3)})["m"]
    assert out["kl_all"]["per_seed"] == [0.8, 0.7, 0.9]
    assert out["kl_all"]["mean"] == pytest.approx(0.8)
    assert out["kl_all"]["std"] == pytest.approx(statistics.stdev([0.8, 0.7, 0.9]))
    assert (out["kl_all"]["min"], out["kl_all"]["max"]) == (0.7, 0.9)
    assert out["kl_high_vote"]["mean"] == pytest.approx(0.7)
    assert out["gap_closed_all"]["mean"] == pytest.approx(0.4) and out["floor_kl_all"] == 0.25
    assert q.summarise([0.5])["std"] is None and q.summarise([None])["mean"] is None


def test_weights_reused_across_seeds_are_caught(tmp_path):
    q = _quality()
    for seed in (0, 1):
        (tmp_path / f"s{seed}" / "models" / "final").mkdir(parents=True)
        (tmp_path / f"s{seed}" / "models" / "final" / "m_fold0.pth").write_bytes(b"seed %d" % seed)
    runs = {0: tmp_path / "s0", 1: tmp_path / "s1"}
    q.check_seeds_trained_apart(runs)
    (tmp_path / "s1" / "models" / "final" / "m_fold0.pth").write_bytes(b"seed 0")
    with pytest.raises(RuntimeError, match="identical to m_fold0.pth of seed 0"):
        q.check_seeds_trained_apart(runs)


def test_share_data_links_the_data_and_keeps_mtimes(tmp_path):
    import json
    import os

    q = _quality()
    first, run = tmp_path / "seed0", tmp_path / "seed1"
    (first / "data" / "raw").mkdir(parents=True)
    (first / "data" / "raw" / "train.csv").write_text("x")
    source = first / "data" / "source.json"
    source.write_text(json.dumps({"source": "synthetic", "dir": str(first / "data" / "raw")}))
    os.utime(source, (1_000_000, 1_000_000))
    (run / "models").mkdir(parents=True)  # left over from an earlier bench: removed
    q._share_data(first, run)
    assert not (run / "models").exists()
    assert (run / "data" / "raw" / "train.csv").stat().st_ino == (first / "data" / "raw" / "train.csv").stat().st_ino
    copied = run / "data" / "source.json"
    assert json.loads(copied.read_text())["dir"] == str((run / "data" / "raw").resolve())
    assert json.loads(source.read_text())["dir"] == str(first / "data" / "raw")  # the first seed's is intact
    assert copied.stat().st_mtime == source.stat().st_mtime == 1_000_000
