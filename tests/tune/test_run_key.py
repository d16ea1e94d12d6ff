"""Tuning never answers re-preprocessed windows with the old study's trials."""
import sys
from pathlib import Path

import numpy as np
import torch

from hms_core.train.data import InMemorySource

sys.path.insert(0, str(Path(__file__).parent))
from test_search import _tune  # noqa: E402
from tune_fixtures import tiny_source  # noqa: E402

torch.set_num_threads(1)


def test_study_of_other_window_contents_is_not_resumed(tmp_path):
    source, folds = tiny_source()
    folds.to_csv(tmp_path / "folds.csv", index=False)
    first = _tune(tmp_path / "run", source, tmp_path / "folds.csv", n_trials=1)
    # Re-preprocessed: the same windows and votes, other values (another filter).
    rebuilt = InMemorySource(source.index, {"chains": (source.fields["chains"] * 0.5).astype(np.float16)})
    again = _tune(tmp_path / "run", rebuilt, tmp_path / "folds.csv", n_trials=1)
    fresh = _tune(tmp_path / "fresh", rebuilt, tmp_path / "folds.csv", n_trials=1)
    assert again["study_name"] != first["study_name"]
    assert again["best_value"] == fresh["best_value"] != first["best_value"]
