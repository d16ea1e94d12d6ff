"""training_results.json from the tiny run's real outputs, and the end-of-run summary."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hms_core import metrics
from hms_core.contract import VOTE_COLUMNS
from hms_core.errors import DataError
from hms_core.export.onnx import export_model
from hms_core.results import collect_results, format_summary


def test_collect_results_writes_measured_figures_and_hashes(tiny_run, tmp_path):
    gru_parity = tmp_path / "resnet1d_gru.json"
    gru_onnx = tmp_path / "resnet1d_gru.onnx"
    export_model(tiny_run["weights"]["resnet1d_gru"], gru_onnx, store_paths=tiny_run["source"],
                 cfg={"n_parity_windows": 2}, parity_out=gru_parity)
    transfer = tmp_path / "transfer.json"
    transfer.write_text(json.dumps({"label_fractions": [0.1, 1.0], "kl": {"scratch": [1.2, 1.0]}}))
    oofs = [p for paths in tiny_run["oofs"].values() for p in paths]
    weights = [p for paths in tiny_run["weights"].values() for p in paths]
    out = tmp_path / "training_results.json"
    results = collect_results(out, oofs=oofs, weights=weights, ensemble_metrics=tiny_run["ensemble_metrics_path"],
                              parity=[gru_parity, tiny_run["parity_path"]],
                              artifacts=[gru_onnx, tiny_run["ensemble_onnx"], tiny_run["ensemble"]],
                              transfer=transfer)
    on_disk = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert on_disk == json.loads(json.dumps(results))

    # Per-model OOF scores are recomputed from the parquets.
    gru = on_disk["models"]["resnet1d_gru"]
    oof = pd.concat([pd.read_parquet(p) for p in tiny_run["oofs"]["resnet1d_gru"]])
    probs = np.exp(oof[[f"logp_{c.split('_')[0]}" for c in VOTE_COLUMNS]].to_numpy())
    expected = metrics.score_predictions(oof[list(VOTE_COLUMNS)].to_numpy(), probs)
    assert gru["oof"]["kl_all"] == pytest.approx(expected["kl_all"])
    assert gru["n_folds"] == 2 and gru["training"]["train_time_s"] > 0
    assert gru["onnx_parity"]["max_abs_diff"] <= 1e-4 and "onnx_parity" not in on_disk["models"]["efficientnet"]
    ens = on_disk["ensemble"]
    assert ens["onnx_parity"]["passed"] and ens["ensemble"]["stacked"]["n_rows"] == len(tiny_run["source"])
    assert {"before", "after", "temperature"} <= set(ens["calibration"])
    assert on_disk["foundation_transfer"] == json.loads(transfer.read_text())
    for path in (gru_onnx, tiny_run["ensemble_onnx"], tiny_run["ensemble"], *weights, *oofs):
        assert on_disk["artifacts"][str(path)]["sha256"] == hashlib.sha256(Path(path).read_bytes()).hexdigest()

    summary = format_summary(on_disk)
    best = min([m["oof"]["kl_all"] for m in on_disk["models"].values()] + [ens["ensemble"]["stacked"]["kl_all"]])
    assert f"best out-of-fold KL: {best:.4f}" in summary
    assert "resnet1d_gru: 2 folds" in summary and "efficientnet: 2 folds" in summary
    assert "ensemble.onnx" in summary and "foundation transfer study" in summary


def test_collect_results_names_a_missing_input(tiny_run, tmp_path):
    with pytest.raises(DataError, match=r"absent.json: results input not found"):
        collect_results(tmp_path / "r.json", oofs=[], weights=[], ensemble_metrics=tmp_path / "absent.json",
                        parity=[])
    assert not (tmp_path / "r.json").exists()
