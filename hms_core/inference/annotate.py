"""``hms annotate``: scan any EEG recording with the exported ensemble and write annotations.

The recording (any format ``mne.io.read_raw`` reads; :class:`~hms_core.data.recording.Recording`)
is read in pieces as the contract's 20 channels in uV at 200 Hz. Its Kaggle-style spectrogram
is computed from the EEG itself (:func:`~hms_core.signal.spectrogram.kaggle_spectrogram`). Then
50 s windows every ``step_s`` seconds, each scored for its central 10 s, are cleaned as the
training windows were (:class:`~hms_core.inference.scan.WindowCleaner`, settings from the
model's ``hms.preprocessing`` metadata) and run through ``ensemble.onnx`` with their 600 s
spectrogram context. Windows and contexts reaching past the recording's ends are padded (NaN,
which cleaning and the model treat as a gap); ``padded_s`` and ``spec_padded_s`` say how much.

Outputs in ``out_dir`` (``<name>`` is the recording's file name without its extension):

- ``<name>.annotations.csv``: one row per scored segment (:func:`annotation_table`).
- ``<name>-annot.txt``: MNE annotations (``mne.read_annotations`` loads it; onsets in s from
  the start of the data): events where a non-Other class leads with probability >= threshold,
  consecutive windows of one class merged (:func:`merge_events`).
- ``<name>.timeline.png`` and ``<name>.timeline.html`` (:mod:`~hms_core.inference.timeline`).
- ``<name>.annotate.json``: the run's facts (model, cleaning, channels, interpolation, padding).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hms_core import atomic
from hms_core.contract import CLASSES, N_EEG_CHANNELS, SAMPLING_RATE_HZ, WINDOW_SAMPLES
from hms_core.data.recording import Recording
from hms_core.errors import ConfigError, DataError
from hms_core.inference.predict import cleaning_config
from hms_core.inference.scan import (WindowCleaner, n_outside, recording_spectrogram, scan_onsets,
                                     spec_context, window_start)
from hms_core.inference.timeline import prob_columns, timeline_png, write_timeline

logger = logging.getLogger(__name__)

SCORED_S = 10.0  # each window is scored for its central 10 s
OTHER = "Other"


def annotation_table(onsets_s: np.ndarray, duration_s: float, probs: np.ndarray, outputs: dict[str, np.ndarray],
                     padded_s: np.ndarray, spec_padded_s: np.ndarray, nan_fraction: np.ndarray) -> pd.DataFrame:
    """One row per scored segment.

    Columns: ``onset_s``, ``duration_s`` (of the scored segment, s; shorter at the recording's
    end), ``p_seizure`` ... ``p_other`` (calibrated, sum to 1; NaN for a window with no EEG),
    ``top_class``, ``top_prob``, then each extra model output in ``outputs`` (``entropy`` in
    nats, ``member_spread``: std of the member/fold probabilities), ``padded_s`` (s of the
    50 s window outside the recording), ``spec_padded_s`` (s of the 600 s spectrogram
    context outside it) and ``nan_fraction`` (of the window's EEG values inside the recording
    that are NaN in the file). :func:`add_prediction_sets` appends the conformal sets.
    """
    table = pd.DataFrame({"onset_s": onsets_s,
                          "duration_s": np.minimum(SCORED_S, duration_s - onsets_s)})
    for j, col in enumerate(prob_columns()):
        table[col] = probs[:, j]
    scored = np.isfinite(probs).all(axis=1)
    top = np.argmax(np.nan_to_num(probs, nan=-1.0), axis=1)
    table["top_class"] = np.where(scored, np.asarray(CLASSES)[top], "")
    table["top_prob"] = np.where(scored, probs[np.arange(len(probs)), top], np.nan)
    for name, values in outputs.items():
        table[name] = values
    table["padded_s"] = padded_s
    table["spec_padded_s"] = spec_padded_s
    table["nan_fraction"] = nan_fraction
    return table


def add_prediction_sets(table: pd.DataFrame, probs: np.ndarray, conformal: dict | None, model_path) -> None:
    """Append the conformal ``prediction_set`` and ``set_size`` columns to ``table`` in place.

    The threshold is the one the ``ensemble`` stage fitted and stored in the model's
    ``hms.conformal`` metadata (:func:`hms_core.ensemble.conformal.set_columns`); an unscored
    window (no EEG) gets an empty set of size 0. A model exported before prediction sets gets
    no columns and a warning.
    """
    from hms_core.ensemble.conformal import set_columns

    if conformal is None:
        logger.warning("%s carries no conformal threshold (exported before prediction sets): "
                       "no prediction_set column", model_path)
        return
    scored = np.isfinite(probs).all(axis=1)
    sets = np.full(len(probs), "", dtype=object)
    sizes = np.zeros(len(probs), dtype=np.int64)
    if scored.any():
        columns = set_columns(probs[scored], float(conformal["threshold"]))
        sets[scored], sizes[scored] = columns["prediction_set"], columns["set_size"]
    table["prediction_set"] = sets
    table["set_size"] = sizes


def merge_events(table: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Events: runs of consecutive scored segments whose top class is not Other and has
    ``top_prob >= threshold``; a run spans from its first onset to its last segment's end.

    Returns columns ``onset_s``, ``duration_s``, ``class``, ``max_prob``, ``mean_prob``, ``n_windows``.
    """
    _check_options(1.0, threshold)
    hit = (table["top_class"] != OTHER) & (table["top_class"] != "") & (table["top_prob"] >= threshold)
    label = table["top_class"].where(hit, "")
    run_id = (label != label.shift()).cumsum()
    events = []
    for _, run in table[hit].groupby(run_id[hit], sort=True):
        end = float((run["onset_s"] + run["duration_s"]).iloc[-1])
        events.append({"onset_s": float(run["onset_s"].iloc[0]), "duration_s": end - float(run["onset_s"].iloc[0]),
                       "class": run["top_class"].iloc[0], "max_prob": float(run["top_prob"].max()),
                       "mean_prob": float(run["top_prob"].mean()), "n_windows": len(run)})
    return pd.DataFrame(events, columns=["onset_s", "duration_s", "class", "max_prob", "mean_prob", "n_windows"])


def _check_options(step_s: float, threshold: float) -> None:
    if not step_s > 0:
        raise ConfigError(f"--step-s: {step_s!r} must be > 0 seconds")
    if not 0 < threshold <= 1:
        raise ConfigError(f"--threshold: {threshold!r} must lie in (0, 1]")


def write_annotations(events: pd.DataFrame, path: str | os.PathLike) -> None:
    """``events`` as an MNE annotations file (``.txt``, ``.csv`` or ``-annot.fif``), written atomically."""
    import mne

    annotations = mne.Annotations(events["onset_s"].to_numpy(float), events["duration_s"].to_numpy(float),
                                  events["class"].astype(str).tolist(), orig_time=None)
    with atomic.atomic_path(path, keep_name_last=True) as tmp:
        annotations.save(tmp, verbose="error")


def _load_model(model_path: Path, provider: str, threads: int | None):
    from hms_core.export.runtime import ort_session, read_metadata

    meta = read_metadata(model_path)
    if meta.get("kind") != "ensemble":
        raise DataError(model_path, f"not an exported ensemble (hms.kind is {meta.get('kind')!r}); "
                                    "use models/onnx/ensemble.onnx")
    session = ort_session(model_path, provider=provider, threads=threads)
    outputs = [o.name for o in session.get_outputs()]
    return meta, session, outputs


def score_recording(rec: Recording, session, output_names: list[str], cleaner: WindowCleaner,
                    power: np.ndarray, onsets_s: np.ndarray, *, batch_size: int = 8,
                    progress: bool = True) -> dict[str, np.ndarray]:
    """Run the ensemble on the window of every onset, ``batch_size`` windows per read and call.

    Returns ``probs (n, 6)`` and each other output ``(n,)``, ``padded_s``, ``spec_padded_s``,
    ``nan_fraction``. A window whose EEG is all NaN (a gap in the file) gets NaN outputs.
    """
    from tqdm import tqdm

    n = len(onsets_s)
    out = {name: np.full((n, len(CLASSES)) if name == "probs" else n, np.nan) for name in output_names}
    out.update(padded_s=np.zeros(n), spec_padded_s=np.zeros(n), nan_fraction=np.zeros(n))
    n_empty = 0
    with tqdm(total=n, desc=f"hms annotate {rec.path.name}", unit="window", disable=not progress) as bar:
        for b0 in range(0, n, batch_size):
            idx = np.arange(b0, min(b0 + batch_size, n))
            starts = [window_start(onsets_s[i]) for i in idx]
            span = rec.read(starts[0], starts[-1] + WINDOW_SAMPLES)  # (span, 20) uV, NaN outside
            raws, specs, ok = [], [], []
            for i, start in zip(idx, starts):
                window = span[start - starts[0]:start - starts[0] + WINDOW_SAMPLES]
                outside = n_outside(start, WINDOW_SAMPLES, rec.n_samples)
                out["padded_s"][i] = outside / SAMPLING_RATE_HZ
                inside = WINDOW_SAMPLES - outside
                out["nan_fraction"][i] = ((np.isnan(window[:, :N_EEG_CHANNELS]).sum() / N_EEG_CHANNELS - outside)
                                          / inside) if inside else 1.0
                context, out["spec_padded_s"][i] = spec_context(power, onsets_s[i])
                try:
                    raws.append(cleaner.clean(window).T)
                except DataError:
                    n_empty += 1
                    continue
                specs.append(context)
                ok.append(i)
            if ok:
                results = session.run(output_names, {"raw_uv": np.stack(raws).astype(np.float32),
                                                     "spec_power": np.stack(specs).astype(np.float32)})
                for name, values in zip(output_names, results):
                    out[name][ok] = values
            bar.update(len(idx))
    if n_empty:
        logger.warning("%s: %d window(s) have no EEG (all NaN); their outputs are NaN", rec.path.name, n_empty)
    probs = out["probs"]
    finite = np.isfinite(probs).all(axis=1)
    probs[finite] /= probs[finite].sum(axis=1, keepdims=True)
    return out


def annotate(recording: str | os.PathLike, out_dir: str | os.PathLike = "annotations", *,
             model_path: str | os.PathLike = "models/onnx/ensemble.onnx", step_s: float = 10.0,
             threshold: float = 0.5, interpolate_missing: bool = False, batch_size: int = 8,
             provider: str = "auto", threads: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Annotate one recording; see the module docstring for the files written.

    Parameters
    ----------
    recording : path
        Any file ``mne.io.read_raw`` reads, with the 19 10-20 EEG channels (names matched
        by :func:`~hms_core.data.recording.contract_name`) and optionally an EKG/ECG channel.
    out_dir : path
        Folder of the outputs (created).
    model_path : path
        ``ensemble.onnx`` from :func:`hms_core.export.onnx.export_ensemble`.
    step_s : float
        Seconds between the onsets of consecutive scored segments; default 10 (no overlap).
    threshold : float
        Minimum probability of the leading non-Other class for an event; default 0.5.
    interpolate_missing : bool
        Interpolate up to two missing EEG channels (spherical splines); default False.
    batch_size : int
        Windows per read and per ONNX Runtime call (bounds memory); default 8.
    provider, threads
        ONNX Runtime device ("auto", "cpu", "cuda") and intra-op threads.
    progress : bool
        Show a tqdm progress bar over the windows.

    Returns
    -------
    dict
        ``table`` (the CSV's DataFrame), ``events``, ``paths`` (name -> Path), ``facts``.

    Raises
    ------
    DataError
        Unreadable recording, missing channels, or a model file that is not an exported ensemble.
    ConfigError
        ``step_s`` <= 0, ``threshold`` outside (0, 1].
    """
    t0 = time.perf_counter()
    recording, model_path, out_dir = Path(recording), Path(model_path), Path(out_dir)
    _check_options(step_s, threshold)
    meta, session, output_names = _load_model(model_path, provider, threads)
    cleaning = cleaning_config(meta.get("preprocessing"))
    rec = Recording(recording, interpolate_missing=interpolate_missing)
    onsets = scan_onsets(rec.duration_s, step_s)
    cleaner = WindowCleaner(rec, cleaning)
    logger.info("%s: %.1f s at %g Hz, %d windows every %g s; cleaning: %s", recording.name, rec.duration_s,
                rec.source_sfreq_hz, len(onsets), step_s, cleaner.describe())
    power = recording_spectrogram(rec)
    scores = score_recording(rec, session, output_names, cleaner, power, onsets, batch_size=batch_size,
                             progress=progress)
    extra = {name: scores[name] for name in output_names if name != "probs"}
    table = annotation_table(onsets, rec.duration_s, scores["probs"], extra, scores["padded_s"],
                             scores["spec_padded_s"], scores["nan_fraction"])
    add_prediction_sets(table, scores["probs"], meta.get("conformal"), model_path)
    events = merge_events(table, threshold)
    name = Path(recording.stem).stem if recording.suffix == ".gz" else recording.stem  # x.fif.gz -> x
    paths = {"csv": out_dir / f"{name}.annotations.csv", "annotations": out_dir / f"{name}-annot.txt",
             "png": out_dir / f"{name}.timeline.png", "html": out_dir / f"{name}.timeline.html",
             "facts": out_dir / f"{name}.annotate.json"}
    facts = {**rec.describe(), "model": str(model_path), "step_s": float(step_s), "threshold": float(threshold),
             "n_windows": int(len(table)), "n_events": int(len(events)), "cleaning": cleaner.describe(),
             "padded_windows": int((table["padded_s"] > 0).sum()),
             "padding": "window parts outside the recording are NaN (cleaned to 0 as a gap); "
                        "spectrogram rows outside it are NaN (the model's log floor)",
             "seconds": round(time.perf_counter() - t0, 2)}
    with atomic.atomic_path(paths["csv"]) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    write_annotations(events, paths["annotations"])
    title = f"{recording.name}: {len(table)} windows every {step_s:g} s, {len(events)} events"
    if rec.interpolated:
        title += f" (interpolated: {', '.join(rec.interpolated)})"
    write_timeline(paths["png"], paths["html"], timeline_png(table, events, title=title, threshold=threshold),
                   facts, events)
    atomic.write_json(paths["facts"], facts)
    logger.info("%s: %d windows, %d events -> %s", recording.name, len(table), len(events), out_dir)
    return {"table": table, "events": events, "paths": paths, "facts": facts}


def main(recording: str, out_dir: str = "annotations", model_path: str = "models/onnx/ensemble.onnx",
         step_s: float = 10.0, threshold: float = 0.5, interpolate_missing: bool = False) -> int:
    """Entry point of ``hms annotate RECORDING [--model ...] [--out DIR] [--step-s 10] ...``."""
    result = annotate(recording, out_dir, model_path=model_path, step_s=step_s, threshold=threshold,
                      interpolate_missing=interpolate_missing)
    for kind, path in result["paths"].items():
        logger.info("wrote %s: %s", kind, path)
    return 0
