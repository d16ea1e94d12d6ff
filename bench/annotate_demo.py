"""``hms annotate`` on a run's own synthetic recordings, scored against the answer key. One JSON line.

A few NaN-free recordings of ``<data>/train_eegs`` (picked to cover the most latent top
classes) are written as EDF with ``mne.export.export_raw`` and annotated with the run's
``ensemble.onnx`` every ``--step-s`` seconds. At each labelled window of ``train.csv`` the
annotation whose 50 s window starts nearest the labelled one (the same window when
``offset + 20`` lies on the scan's grid) is compared with the answer key's latent class
probabilities: Kaggle KL(latent || annotate) and top-class agreement, beside the same for the
training prior (the mean vote distribution of train.csv), the score of a model that ignores
the signal. The recordings are training recordings: every one was seen by some of the
ensemble's fold networks, so these figures show annotate finds the classes a trained model
knows at the right times, not how it generalises.

Then ``hms predict`` on the exact-offset windows of the first ``--parity-recordings``
recordings, from a test folder holding the very samples (read back from the EDF) and
spectrogram context annotate used:

- ``same_cleaning``: annotate and predict with one cleaning, ICA fitted on each 50 s window
  (a copy of the model whose ``hms.preprocessing`` says ``ica.fit_on: window``; the network is
  the same). They should agree to float precision.
- ``as_shipped``: annotate with the model's own cleaning (a ``fit_on: recording`` model fits
  ICA once on the recording, as its training windows were cleaned) vs ``hms predict``, which
  can only fit on the 50 s window. Their difference and each one's KL to the latent.
- ``kaggle_inputs``: ``hms predict`` on the data set's own files for those windows (the
  parquet EEG and the session's Kaggle spectrogram, which extends past the recording where
  annotate's context, computed from the EEG, is padded), against annotate and against
  ``hms predict`` on annotate's inputs (which isolates the spectrogram context and the EDF's
  16-bit samples).

Usage: ``python bench/annotate_demo.py RUN_DIR [--recordings 4] [--step-s 2] [--out DIR]
[--figure docs/annotate_timeline.png]`` (``--data``/``--model`` override RUN_DIR/data/raw and
RUN_DIR/models/onnx/ensemble.onnx).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

LEAD_S = 20.0  # a labelled window starting at offset o is annotate's window of onset o + 20


def pick_recordings(train: pd.DataFrame, latent: np.ndarray, nan_free: set[int], n: int) -> list[int]:
    """``n`` eeg_ids among ``nan_free``: greedily the one adding the most latent top classes not yet
    covered, then the most labelled windows, then the smallest id."""
    top = pd.Series(latent.argmax(axis=1), index=train.index)
    classes = {int(e): set(top[g.index]) for e, g in train.groupby("eeg_id") if int(e) in nan_free}
    counts = train.groupby("eeg_id").size()
    chosen: list[int] = []
    covered: set[int] = set()
    for _ in range(min(n, len(classes))):
        best = max((e for e in classes if e not in chosen),
                   key=lambda e: (len(classes[e] - covered), int(counts[e]), -e))
        chosen.append(best)
        covered |= classes[best]
    return chosen


def grid_rows(offsets_s: np.ndarray, step_s: float, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Row of the annotation table nearest each labelled offset, and whether it is the same window."""
    onsets = np.asarray(offsets_s, dtype=np.float64) + LEAD_S
    rows = np.clip(np.round(onsets / step_s).astype(int), 0, n_rows - 1)
    return rows, np.isclose(rows * step_s, onsets)


def write_edf(path: Path, eeg_uv: np.ndarray) -> None:
    """``(n, 20)`` uV in RAW_CHANNELS order as EDF (``mne.export.export_raw``; EKG typed ecg)."""
    import mne

    from hms_core.contract import RAW_CHANNELS

    info = mne.create_info(list(RAW_CHANNELS), 200.0, ["eeg"] * 19 + ["ecg"])
    raw = mne.io.RawArray(eeg_uv.T.astype(np.float64) * 1e-6, info, verbose=False)
    mne.export.export_raw(path, raw, overwrite=True, verbose=False)


def model_with_window_fit(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose ``hms.preprocessing`` fits ICA on each window (same network)."""
    import onnx

    model = onnx.load(str(src))
    for prop in model.metadata_props:
        if prop.key == "hms.preprocessing":
            pre = json.loads(prop.value)
            pre.setdefault("ica", {})["fit_on"] = "window"
            prop.value = json.dumps(pre)
    onnx.save(model, str(dst))
    return dst


def write_test_folder(folder: Path, eegs: list[np.ndarray], specs: list[np.ndarray]) -> Path:
    """A Kaggle test folder: row ``k`` is eeg_id = spectrogram_id = k with the given window
    ``(10000, 20)`` uV and 600 s spectrogram ``(300, 400)`` (NaN kept)."""
    from hms_core.contract import RAW_CHANNELS, SPEC_COLUMNS, SPEC_TIME_COLUMN, TEST_EEG_DIR, TEST_SPEC_DIR

    (folder / TEST_EEG_DIR).mkdir(parents=True)
    (folder / TEST_SPEC_DIR).mkdir()
    for k, (eeg, spec) in enumerate(zip(eegs, specs)):
        window = pd.DataFrame(eeg.astype(np.float32), columns=list(RAW_CHANNELS))
        window.to_parquet(folder / TEST_EEG_DIR / f"{k}.parquet")
        frame = pd.DataFrame(spec.astype(np.float32), columns=list(SPEC_COLUMNS))
        frame.insert(0, SPEC_TIME_COLUMN, np.arange(len(spec)) * 2 + 1)
        frame.to_parquet(folder / TEST_SPEC_DIR / f"{k}.parquet")
    pd.DataFrame({"spectrogram_id": range(len(eegs)), "eeg_id": range(len(eegs)),
                  "patient_id": 0}).to_csv(folder / "test.csv", index=False)
    return folder


def _predict(folder: Path, model: Path, threads: int) -> np.ndarray:
    from hms_core.contract import VOTE_COLUMNS
    from hms_core.inference.predict import predict

    sub = predict(folder, folder / "submission.csv", model_path=model, provider="cpu", threads=threads,
                  progress=False, on_bad_file="error")
    return sub[list(VOTE_COLUMNS)].to_numpy()


def _kl(latent: np.ndarray, probs: np.ndarray) -> float:
    from hms_core.metrics import kaggle_kl

    return round(kaggle_kl(latent, probs), 4) if len(latent) else float("nan")


def _top1(latent: np.ndarray, probs: np.ndarray) -> float:
    return round(float((latent.argmax(axis=1) == probs.argmax(axis=1)).mean()), 4) if len(latent) else float("nan")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished run (data/raw with answer_key/, models/onnx/)")
    parser.add_argument("--data", type=Path, default=None, help="data set folder (default RUN_DIR/data/raw)")
    parser.add_argument("--model", type=Path, default=None,
                        help="ensemble.onnx (default RUN_DIR/models/onnx/ensemble.onnx)")
    parser.add_argument("--recordings", type=int, default=4, help="recordings to annotate (default 4)")
    parser.add_argument("--parity-recordings", type=int, default=2,
                        help="of those, how many get the hms predict comparisons (default 2)")
    parser.add_argument("--step-s", type=float, default=2.0, help="annotate --step-s (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (default 2)")
    parser.add_argument("--out", type=Path, default=None, help="keep the EDFs and outputs here (default: temp)")
    parser.add_argument("--figure", type=Path, default=None,
                        help="copy the timeline PNG of the recording with the most latent classes here")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="hms_bench_annotate_demo_") as tmp:
        result = run(args, Path(args.out) if args.out else Path(tmp))
    print(json.dumps(result))
    return result


def run(args, work: Path) -> dict:
    """Annotate, compare and return the JSON line's fields; see the module docstring."""
    import torch

    from hms_core.contract import VOTE_COLUMNS, WINDOW_SAMPLES
    from hms_core.data import io
    from hms_core.data.recording import Recording
    from hms_core.data.synthetic.answer_key import ANSWER_KEY_DIR, LATENT_FILE, read_latent
    from hms_core.export.runtime import read_metadata
    from hms_core.inference.annotate import annotate
    from hms_core.inference.predict import cleaning_config
    from hms_core.inference.scan import recording_spectrogram, spec_context, window_start
    from hms_core.inference.timeline import prob_columns

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    data = args.data or args.run_dir / "data" / "raw"
    model = args.model or args.run_dir / "models" / "onnx" / "ensemble.onnx"
    train = io.read_train_csv(data / "train.csv").reset_index(drop=True)
    latent = read_latent(data / ANSWER_KEY_DIR / LATENT_FILE, train["label_id"].to_numpy())
    votes = train[list(VOTE_COLUMNS)].to_numpy(np.float64)
    prior = (votes / votes.sum(axis=1, keepdims=True)).mean(axis=0)
    eegs = {int(e): io.read_eeg(io.eeg_path(data, int(e)), eeg_id=int(e)) for e in train["eeg_id"].unique()}
    chosen = pick_recordings(train, latent, {e for e, x in eegs.items() if np.isfinite(x).all()}, args.recordings)
    (work / "edf").mkdir(parents=True, exist_ok=True)
    window_model = work / "ensemble_window_fit.onnx"
    cleaning = cleaning_config(read_metadata(model).get("preprocessing"))
    ica_differs = cleaning.ica.enabled and cleaning.ica.fit_on != "window"
    if ica_differs:
        model_with_window_fit(model, window_model)
    rows_ann, rows_lat, parity = [], [], {"annotate": [], "annotate_window": [], "latent": [], "same_eeg": [],
                                          "same_spec": [], "kaggle_eeg": [], "kaggle_spec": []}
    per_recording, figures = [], {}
    for k, eeg_id in enumerate(chosen):
        edf = work / "edf" / f"{eeg_id}.edf"
        write_edf(edf, eegs[eeg_id])
        out = annotate(edf, work / "annotate", model_path=model, step_s=args.step_s, provider="cpu",
                       threads=args.threads, progress=False)
        table = out["table"]
        labelled = train[train["eeg_id"] == eeg_id]
        rows, exact = grid_rows(labelled["eeg_label_offset_seconds"].to_numpy(), args.step_s, len(table))
        probs = table[prob_columns()].to_numpy()[rows]
        rows_ann.append(probs)
        rows_lat.append(latent[labelled.index])
        figures[eeg_id] = (len(set(latent[labelled.index].argmax(axis=1))), out["paths"]["png"])
        per_recording.append({"eeg_id": eeg_id, "duration_s": out["facts"]["duration_s"],
                              "n_labelled": len(labelled), "kl": _kl(latent[labelled.index], probs),
                              "latent_top": sorted({VOTE_COLUMNS[c].split("_")[0]
                                                    for c in latent[labelled.index].argmax(axis=1)})})
        if k >= args.parity_recordings or not exact.any():
            continue
        # hms predict's inputs: the samples and spectrogram context annotate used at the exact offsets.
        rec = Recording(edf)
        power = recording_spectrogram(rec)
        for (_, row), r in zip(labelled[exact].iterrows(), rows[exact]):
            onset = r * args.step_s
            start = window_start(onset)
            parity["same_eeg"].append(rec.read(start, start + WINDOW_SAMPLES))
            parity["same_spec"].append(spec_context(power, onset)[0])
            offset = float(row["eeg_label_offset_seconds"])
            parity["kaggle_eeg"].append(eegs[eeg_id][io.eeg_window_slice(offset)])
            _, spec = io.read_spectrogram(io.spectrogram_path(data, int(row["spectrogram_id"])))
            first = io.spectrogram_first_row(float(row["spectrogram_label_offset_seconds"]))
            parity["kaggle_spec"].append(spec[first:first + 300])
            parity["annotate"].append(table[prob_columns()].to_numpy()[r])
            parity["latent"].append(latent[row.name])
        if ica_differs:
            again = annotate(edf, work / "annotate_window_fit", model_path=window_model, step_s=args.step_s,
                             provider="cpu", threads=args.threads, progress=False)["table"]
            parity["annotate_window"] += list(again[prob_columns()].to_numpy()[rows[exact]])
    ann, lat = np.concatenate(rows_ann), np.concatenate(rows_lat)
    result = {"bench": "annotate_demo", "run": str(args.run_dir), "model": str(model), "step_s": args.step_s,
              "recordings": per_recording, "n_labelled_windows": len(ann),
              "kl_annotate_vs_latent": _kl(lat, ann), "kl_prior_vs_latent": _kl(lat, np.tile(prior, (len(lat), 1))),
              "top1_annotate": _top1(lat, ann), "top1_prior": _top1(lat, np.tile(prior, (len(lat), 1))),
              "cleaning": f"ICA {'on, fit_on ' + cleaning.ica.fit_on if cleaning.ica.enabled else 'off'}"}
    if parity["annotate"]:
        result["parity"] = compare_with_predict(parity, work, model, window_model if ica_differs else model,
                                                args.threads)
    if args.figure:
        best = max(figures, key=lambda e: (figures[e][0], -chosen.index(e)))
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(figures[best][1], args.figure)
        result["figure"] = {"path": str(args.figure), "eeg_id": best}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["loadavg_1min_at_end"] = round(os.getloadavg()[0], 2)
    return result


def compare_with_predict(parity: dict, work: Path, model: Path, window_model: Path, threads: int) -> dict:
    """``hms predict`` on the collected windows; see the module docstring for the three comparisons."""
    same = write_test_folder(work / "predict_same_inputs", parity["same_eeg"], parity["same_spec"])
    kaggle = write_test_folder(work / "predict_kaggle_inputs", parity["kaggle_eeg"], parity["kaggle_spec"])
    ann, lat = np.stack(parity["annotate"]), np.stack(parity["latent"])
    shipped = _predict(same, model, threads)
    out = {"n_windows": len(ann)}
    if parity["annotate_window"]:  # the model fits ICA on the recording: compare with one cleaning too
        window = _predict(same, window_model, threads)
        out["same_cleaning"] = {"cleaning": "ICA fitted on each 50 s window in both",
                                "max_abs_diff": float(np.abs(np.stack(parity["annotate_window"]) - window).max())}
        out["as_shipped"] = {"annotate": "ICA fitted on the recording (as the training windows)",
                             "predict": "ICA fitted on the 50 s window",
                             "max_abs_diff": round(float(np.abs(ann - shipped).max()), 4),
                             "kl_annotate_vs_latent": _kl(lat, ann), "kl_predict_vs_latent": _kl(lat, shipped)}
    else:
        out["same_cleaning"] = {"cleaning": "the model's own in both (no recording-level ICA)",
                                "max_abs_diff": float(np.abs(ann - shipped).max())}
    theirs = _predict(kaggle, model, threads)
    out["kaggle_inputs"] = {"max_abs_diff_vs_annotate": round(float(np.abs(ann - theirs).max()), 4),
                            "max_abs_diff_vs_predict_same_inputs": round(float(np.abs(shipped - theirs).max()), 4),
                            "kl_predict_vs_latent": _kl(lat, theirs), "kl_annotate_vs_latent": _kl(lat, ann)}
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
