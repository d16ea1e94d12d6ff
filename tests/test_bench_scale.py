"""bench/scale.py's full-size metadata pieces: the DAG dry run and the seconds the windows need."""
from __future__ import annotations

import pytest
from bench_loader import load_bench

from hms_core.contract import SPEC_WINDOW_S, WINDOW_S
from hms_core.data import io
from hms_core.data.synthetic.preset import generate_preset

scale = load_bench("scale")


@pytest.fixture(scope="module")
def meta(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    generate_preset(root / "meta", fraction=0.01, seed=0, metadata_only=True, n_test=1, save_answer_key=False)
    return root


def test_dry_run_plans_32_batches_2_models_5_folds(meta):
    dag = scale.dry_run_dag(meta, meta / "meta")
    assert dag["rc"] == 0, dag["error"]
    assert dag["jobs"]["preprocess_batch"] == 32 and dag["jobs"]["train_fold"] == 2 * 5
    assert dag["jobs"]["total"] == sum(v for k, v in dag["jobs"].items() if k != "total")
    assert dag["peak_rss_mb"] > 0


def test_needed_seconds_sum_over_files(meta):
    got = scale.needed_seconds(meta / "meta")
    train = io.read_train_csv(meta / "meta" / "train.csv")
    assert got["rows"] == len(train) and got["recordings"] == train["eeg_id"].nunique()
    one = train[train["eeg_id"] == train["eeg_id"].iloc[0]]
    assert got["eeg_s"] >= one["eeg_label_offset_seconds"].max() + WINDOW_S
    assert got["eeg_s"] >= got["recordings"] * WINDOW_S
    assert got["spec_s"] >= got["spectrograms"] * SPEC_WINDOW_S
