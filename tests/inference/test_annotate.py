"""``hms annotate`` on EDF files written with ``mne.export.export_raw`` from a synthetic recording
(3 min Other, 2 min Seizure, 2 min Other), scored by the tiny run's real ``ensemble.onnx``.

The tiny ensemble (1 epoch, 2 folds) is close to uniform and does not separate the classes, so
these tests pin the scan arithmetic, the padding, the outputs and the agreement between file
variants; they do not assert that the top class changes at the pattern's onset.
"""
from __future__ import annotations

import base64
import re

import mne
import numpy as np
import pandas as pd
import pytest

from hms_core import cli
from hms_core.contract import CLASSES
from hms_core.data.recording import Recording
from hms_core.errors import ConfigError, DataError
from hms_core.inference.annotate import annotate, merge_events
from hms_core.inference.timeline import prob_columns

DURATION_S = 420  # the length of conftest.py's recording


def _run(tiny_run, path, out, **kw):
    return annotate(path, out, model_path=tiny_run["ensemble_onnx"], provider="cpu", progress=False, **kw)


def test_scan_covers_the_recording_with_padded_edges(canonical):
    table = pd.read_csv(canonical["paths"]["csv"])
    assert table["onset_s"].tolist() == [10.0 * k for k in range(DURATION_S // 10)]
    assert (table["duration_s"] == 10).all()
    # The 50 s window starts 20 s before its scored 10 s: 20 and 10 s padded at either end.
    assert table["padded_s"].tolist() == [20, 10] + [0] * (len(table) - 4) + [10, 20]
    # The 600 s context is centred on the window: 300 s either side of the scored centre.
    centre = table["onset_s"] + 5
    expected = np.maximum(0, 300 - centre) + np.maximum(0, centre + 300 - DURATION_S)
    assert np.abs(table["spec_padded_s"] - expected).max() <= 2  # one 2 s spectrogram row
    probs = table[prob_columns()].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5) and (probs > 0).all()
    assert (table["top_class"] == np.asarray(CLASSES)[probs.argmax(axis=1)]).all()
    assert table["entropy"].between(0, np.log(6) + 1e-6).all() and (table["member_spread"] >= 0).all()
    assert (table["nan_fraction"] == 0).all()


def test_outputs_annotations_round_trip_and_html_embeds_the_png(tiny_run, edf_files, tmp_path):
    # A threshold the tiny model's leading class reaches, so there are events to write.
    result = _run(tiny_run, edf_files["canonical"], tmp_path, threshold=0.16)
    events, paths = result["events"], result["paths"]
    assert len(events) >= 1
    loaded = mne.read_annotations(paths["annotations"])
    assert np.allclose(loaded.onset, events["onset_s"]) and np.allclose(loaded.duration, events["duration_s"])
    assert list(loaded.description) == events["class"].tolist()
    page = paths["html"].read_text()
    embedded = re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1)
    assert base64.b64decode(embedded) == paths["png"].read_bytes()
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths.values())  # no temp files


def test_channel_name_variants_and_256_hz_give_the_same_probabilities(tiny_run, edf_files, canonical, tmp_path):
    base = Recording(edf_files["canonical"]).read(0, DURATION_S * 200)
    assert np.array_equal(Recording(edf_files["renamed"]).read(0, DURATION_S * 200), base)
    resampled = Recording(edf_files["256hz"])
    assert resampled.n_samples == DURATION_S * 200
    rms = np.sqrt(((resampled.read(0, DURATION_S * 200) - base) ** 2).mean(axis=0))
    assert (rms < 0.02 * base.std(axis=0)).all()  # 200 -> 256 -> 200 Hz; a sharp electrode pop rings a little
    ref = canonical["table"][prob_columns()].to_numpy()
    for kind in ("renamed", "256hz"):
        got = _run(tiny_run, edf_files[kind], tmp_path / kind)["table"][prob_columns()].to_numpy()
        assert np.abs(got - ref).max() < 1e-4, kind


def test_missing_channels(tiny_run, edf_files, canonical, tmp_path):
    with pytest.raises(DataError, match=r"no_c3.edf: missing EEG channel\(s\) C3; --interpolate-missing"):
        _run(tiny_run, edf_files["no_c3"], tmp_path / "a")
    result = _run(tiny_run, edf_files["no_c3"], tmp_path / "b", interpolate_missing=True)
    assert result["facts"]["interpolated_channels"] == ["C3"]
    assert "<b>interpolated_channels</b>: [&#x27;C3&#x27;]" in result["paths"]["html"].read_text()
    ref = canonical["table"][prob_columns()].to_numpy()
    assert np.abs(result["table"][prob_columns()].to_numpy() - ref).max() < 0.05
    # No EKG: a NaN channel, which cleaning and the model tolerate.
    no_ekg = _run(tiny_run, edf_files["no_ekg"], tmp_path / "c")
    assert no_ekg["facts"]["ekg_missing"] and np.isfinite(no_ekg["table"][prob_columns()].to_numpy()).all()


def test_cli_verb_step_and_bad_options(tiny_run, edf_files, tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli.main(["annotate", str(edf_files["canonical"]), "--model", str(tiny_run["ensemble_onnx"]),
                     "--out", str(out), "--step-s", "30"]) == 0
    table = pd.read_csv(out / "rec.annotations.csv")
    assert table["onset_s"].tolist() == [30.0 * k for k in range(14)]
    assert cli.main(["annotate", str(edf_files["canonical"]), "--model", str(tiny_run["ensemble_onnx"]),
                     "--out", str(out), "--step-s", "0"]) == 2
    assert "--step-s: 0.0 must be > 0 seconds" in capsys.readouterr().err
    with pytest.raises(DataError, match=r"missing.edf: recording not found"):
        _run(tiny_run, tmp_path / "missing.edf", out)
    (tmp_path / "junk.edf").write_text("not an EDF")
    with pytest.raises(DataError, match=r"junk.edf: not a recording MNE can read"):
        _run(tiny_run, tmp_path / "junk.edf", out)


def test_merge_events_joins_consecutive_windows_of_one_class():
    table = pd.DataFrame({
        "onset_s": [0, 10, 20, 30, 40, 50, 60],
        "duration_s": [10, 10, 10, 10, 10, 10, 5],
        "top_class": ["Other", "Seizure", "Seizure", "LPD", "Seizure", "Seizure", "Seizure"],
        "top_prob": [0.9, 0.6, 0.8, 0.7, 0.4, 0.55, 0.9],
    })
    events = merge_events(table, 0.5)
    assert events[["onset_s", "duration_s", "class", "n_windows"]].values.tolist() == [
        [0 + 10, 20, "Seizure", 2], [30, 10, "LPD", 1], [50, 15, "Seizure", 2]]
    assert events["max_prob"].tolist() == [0.8, 0.7, 0.9]
    with pytest.raises(ConfigError, match=r"--threshold: 1.5 must lie in \(0, 1\]"):
        merge_events(table, 1.5)


def test_each_window_gets_the_models_conformal_prediction_set(tiny_run, edf_files, tmp_path):
    from hms_core.ensemble.conformal import prediction_sets
    from hms_core.export.runtime import read_metadata

    threshold = float(read_metadata(tiny_run["ensemble_onnx"])["conformal"]["threshold"])
    table = _run(tiny_run, edf_files["canonical"], tmp_path)["table"]
    probs = table[list(prob_columns())].to_numpy()
    want = prediction_sets(probs, threshold)
    assert table["set_size"].tolist() == want.sum(axis=1).tolist()
    assert table["prediction_set"].tolist() == ["|".join(c for c, k in zip(CLASSES, row) if k) for row in want]
    written = pd.read_csv(tmp_path / "rec.annotations.csv")
    assert written["set_size"].tolist() == table["set_size"].tolist()
