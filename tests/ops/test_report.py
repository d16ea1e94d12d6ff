"""Report figures: each writes a PNG; make_report_figures skips what is missing."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hms_core.contract import CLASSES, VOTE_COLUMNS, votes_to_targets
from hms_core.metrics import kaggle_kl
from hms_core import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
torch.set_num_threads(1)


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 2000


def _oof(rng: np.random.Generator, n: int, fold: int, sharpness: float) -> pd.DataFrame:
    votes = rng.multinomial(12, rng.dirichlet(np.ones(6)), size=n)
    votes[: n // 3] = rng.multinomial(3, np.ones(6) / 6, size=n // 3)  # some low-vote rows
    logits = sharpness * np.log(votes + 1.0) + rng.normal(0, 0.5, size=votes.shape)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    df = pd.DataFrame({"label_id": np.arange(n) + 1000 * fold, "fold": fold})
    for j, c in enumerate(CLASSES):
        df[VOTE_COLUMNS[j]] = votes[:, j]
        df[f"logp_{c.lower()}"] = logp[:, j]
        df[f"logp_swap_{c.lower()}"] = logp[:, j]
    return df


@pytest.fixture
def run_dir(workdir: Path) -> Path:
    rng = np.random.default_rng(0)
    (workdir / "oof").mkdir()
    (workdir / "models" / "final").mkdir(parents=True)
    for model, sharpness in (("resnet1d_gru", 1.5), ("efficientnet", 0.8)):
        for fold in range(2):
            _oof(rng, 40, fold, sharpness).to_parquet(workdir / "oof" / f"{model}_fold{fold}.parquet")
            history = [{"epoch": e, "train_loss": 1.2 - 0.2 * e, "val_kl": 1.1 - 0.1 * e + 0.05 * fold,
                        "lr": 1e-3, "seconds": 3.0} for e in range(4)]
            torch.save({"model_name": model, "model_kwargs": {}, "state_dict": {"w": torch.zeros(2)},
                        "metrics": {}, "input_fields": ["chains"], "history": history},
                       workdir / "models" / "final" / f"{model}_fold{fold}.pth")
    return workdir


def _tiny_store(path: Path) -> None:
    """A real batch store (hms_core.store) with tiny arrays and a preprocessing index."""
    from hms_core.store import WINDOW_FIELDS, StoreWriter

    writer = StoreWriter(path, max_windows=3, shapes={f: (2, 4) for f in WINDOW_FIELDS},
                         windows_per_shard=1)
    removed = json.dumps([{"component": 2, "reasons": ["blink"]}])
    writer.append({f: np.zeros((3, 2, 4), dtype=np.float32) for f in WINDOW_FIELDS},
                  pd.DataFrame({"label_id": [1, 2, 3], "eeg_id": [7, 7, 8], "patient_id": [1, 1, 2],
                                "nan_fraction": [0.0, 0.1, 0.5], "ica_removed": [removed, removed, "[]"]}))
    writer.close()


def _gap(run_dir: Path, answer_key: Path | None, pattern: str = "*.parquet") -> dict:
    """The gap table of ``run_dir``'s OOF frames (hms_core.results.gap_table), members only."""
    from hms_core.results import _score_oofs, gap_table

    oof = report.read_oof(sorted((run_dir / "oof").glob(pattern)))
    return gap_table(oof, {m: _score_oofs(df) for m, df in oof.items()}, None, [], answer_key)


def test_make_report_figures(run_dir, tmp_path):
    result = report.make_report_figures(run_dir, tmp_path / "figures")
    assert set(result["figures"]) == {"learning_curves", "confusion_matrix", "per_class_kl", "reliability"}
    assert all(_is_png(Path(p)) for p in result["figures"].values())
    assert "no data/processed/batch_*.zarr" in result["skipped"]["preprocessing"]
    assert "no gap table" in result["skipped"]["gap_to_floor"]
    assert not list((tmp_path / "figures").glob(".*.tmp"))

    _tiny_store(run_dir / "data" / "processed" / "batch_0000.zarr")
    (run_dir / "training_results.json").write_text(json.dumps({"gap_to_floor": _gap(run_dir, None)}))
    result = report.make_report_figures(run_dir, tmp_path / "figures")
    assert _is_png(Path(result["figures"]["preprocessing"])) and result["skipped"] == {}
    listed = pd.read_csv(result["figures"]["ica_removed"])
    assert listed[["eeg_id", "component", "why"]].fillna("").values.tolist() == [[7, 2, "blink"], [8, -1, ""]]
    assert _is_png(Path(result["figures"]["gap_to_floor"]))


def test_gap_figure_with_an_answer_key(run_dir, tmp_path):
    rows = report.read_oof(sorted((run_dir / "oof").glob("resnet1d_gru_*.parquet")))["resnet1d_gru"]
    near_votes = 0.8 * votes_to_targets(rows[list(VOTE_COLUMNS)].to_numpy()) + 0.2 / 6  # below the prior's KL
    latent = pd.DataFrame(near_votes, columns=[f"p_{c.lower()}" for c in CLASSES])
    latent.insert(0, "label_id", rows["label_id"].to_numpy())
    key = tmp_path / "latent.parquet"
    latent.to_parquet(key)
    gap = _gap(run_dir, key, "resnet1d_gru_*.parquet")  # the fixture's members disagree on votes
    assert all(isinstance(e["all"]["gap_closed"], float) for e in gap["table"].values())
    assert _is_png(report.plot_gap_to_floor(gap, tmp_path / "gap.png"))
    with pytest.raises(report.DataError, match="empty gap table"):
        report.plot_gap_to_floor({"table": {}}, tmp_path / "empty.png")


def test_bad_oof_file_is_named_and_skipped(run_dir, tmp_path):
    pd.DataFrame({"label_id": [1]}).to_parquet(run_dir / "oof" / "broken_fold0.parquet")
    result = report.make_report_figures(run_dir, tmp_path / "figures")
    assert "broken_fold0.parquet: out-of-fold file lacks columns" in result["skipped"]["confusion_matrix"]
    assert "learning_curves" in result["figures"]


def test_make_report_figures_on_an_empty_run(workdir, tmp_path):
    result = report.make_report_figures(workdir, tmp_path / "figures")
    assert result["figures"] == {}
    assert set(result["skipped"]) == {"learning_curves", "confusion_matrix", "per_class_kl",
                                      "reliability", "preprocessing", "ica_removed", "gap_to_floor"}


def test_per_class_kl_sums_to_kaggle_kl(run_dir):
    df = report.read_oof(sorted((run_dir / "oof").glob("resnet1d_gru_*.parquet")))["resnet1d_gru"]
    votes = df[list(VOTE_COLUMNS)].to_numpy()
    probs = np.exp(df[[f"logp_{c.lower()}" for c in CLASSES]].to_numpy())
    shares = report.per_class_kl(votes, probs)
    assert shares.shape == (6,)
    assert shares.sum() == pytest.approx(kaggle_kl(votes_to_targets(votes), probs), rel=1e-9)


def test_confusion_counts_use_high_vote_rows_only():
    votes = np.array([[10, 0, 0, 0, 0, 0], [0, 12, 0, 0, 0, 0], [0, 0, 3, 0, 0, 0]])
    scores = np.array([[0.9, 0.1, 0, 0, 0, 0], [0.8, 0.2, 0, 0, 0, 0], [0, 0, 1.0, 0, 0, 0]])
    counts = report.confusion_counts(votes, scores)
    assert counts.sum() == 2 and counts[0, 0] == 1 and counts[1, 0] == 1


def test_reliability_and_preprocessing_figures(tmp_path):
    rng = np.random.default_rng(1)
    targets = rng.dirichlet(np.ones(6), size=200)
    sharp = np.exp(4 * np.log(targets + 1e-3))
    before = sharp / sharp.sum(axis=1, keepdims=True)
    out = report.plot_reliability(before, targets, targets, tmp_path / "reliability.png")
    assert _is_png(out)
    with pytest.raises(ValueError, match="do not match targets"):
        report.plot_reliability(before[:10], targets, targets, tmp_path / "bad.png")

    index = pd.DataFrame({
        "eeg_id": [1, 1, 2, 3],
        "nan_fraction": [0.0, 0.0, 0.3, 0.05],
        "ica_removed": [json.dumps([{"component": 0, "reasons": ["blink"]}])] * 2
        + [json.dumps([]), json.dumps({"removed": [{"component": 1, "reasons": ["ekg", "muscle"]},
                                                   {"component": 4, "reasons": ["muscle"]}]})],
    })
    assert _is_png(report.plot_preprocessing_summary(index, tmp_path / "preprocessing.png"))
    assert report.ica_components_removed(index["ica_removed"][3]) == (2, ["ekg", "muscle", "muscle"])


def test_ica_removal_table_says_why_per_recording():
    from hms_core.signal.iclabel import ICLABEL_CLASSES

    iclabel_entry = {"component": 3, "labeler": "iclabel", "class": "eye", "probability": 0.9312,
                     "reasons": ["eye"], "strength": 1.16, "probabilities": dict.fromkeys(ICLABEL_CLASSES, 0.1)}
    rules_entry = {"component": 1, "labeler": "rules", "reasons": ["eye", "muscle"], "strength": 1.4,
                   "ekg_corr": 0.02, "frontal_share": 0.61, "low_share": 0.84, "hf_share": 0.1, "flatness": 0.2}
    index = pd.DataFrame({
        "eeg_id": [5, 5, 6, 7],
        "ica_status": ["applied", "applied", "applied", "skipped: too short for ICA (9.0 s finite)"],
        "ica_removed": [json.dumps([iclabel_entry])] * 2 + [json.dumps([rules_entry]), "[]"],
    })
    table = report.ica_removal_table(index)
    assert table.to_dict("records") == [
        {"eeg_id": 5, "ica_status": "applied", "labeler": "iclabel", "component": 3, "why": "eye p=0.93"},
        {"eeg_id": 6, "ica_status": "applied", "labeler": "rules", "component": 1,
         "why": "eye+muscle (ekg_corr 0.02, frontal_share 0.61, low_share 0.84, hf_share 0.10, flatness 0.20)"},
        {"eeg_id": 7, "ica_status": "skipped: too short for ICA (9.0 s finite)", "labeler": "", "component": -1,
         "why": ""}]
    with pytest.raises(report.DataError, match="lacks columns"):
        report.ica_removal_table(index.drop(columns="ica_removed"))
