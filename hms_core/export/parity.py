"""The ONNX parity check: ONNX Runtime against PyTorch on real windows.

An export is kept only when the largest probability difference over the parity windows is
within ``export.parity_atol``. The windows come from the window stores (one model's inputs)
or, for the ensemble graph, from the raw training recordings cleaned as preprocessing
cleans them (:func:`train_windows`).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from hms_core.config import from_mapping
from hms_core.contract import SPEC_WINDOW_ROWS, WINDOW_SAMPLES
from hms_core.data import io
from hms_core.errors import DataError, HMSError
from hms_core.export.config import ExportConfig
from hms_core.export.runtime import ort_session
from hms_core.preprocess import PreprocessConfig, clean_windows
from hms_core.store import open_window_source


class ParityError(HMSError):
    """ONNX Runtime and PyTorch disagree by more than ``export.parity_atol``."""


def parity_report(module: torch.nn.Module, onnx_path: Path, inputs: Sequence[np.ndarray], *,
                  input_names: Sequence[str], output_names: Sequence[str], cfg: ExportConfig) -> dict[str, Any]:
    """Largest |ONNX Runtime - PyTorch| per output over all ``inputs`` (batched).

    Returns
    -------
    dict
        ``n_windows, max_abs_diff`` (of the first output, probabilities),
        ``max_abs_diff_by_output, atol, passed, provider, opset``, and the summed run times
        ``torch_s, onnxruntime_s`` in s.

    Raises
    ------
    ParityError
        An ONNX output is not finite.
    """
    session = ort_session(onnx_path, provider=cfg.provider)
    n = len(inputs[0])
    worst = {name: 0.0 for name in output_names}
    t_torch = t_ort = 0.0
    # Batches of export.batch_size (the traced size) plus one single window: the graph must
    # not depend on the batch size it was traced with.
    spans = [(s, s + cfg.batch_size) for s in range(0, n, cfg.batch_size)] + [(0, 1)]
    for start, stop in spans:
        batch = [np.ascontiguousarray(x[start:stop], dtype=np.float32) for x in inputs]
        t0 = time.perf_counter()
        with torch.no_grad():
            expected = module(*[torch.from_numpy(b) for b in batch])
        t1 = time.perf_counter()
        got = session.run(list(output_names), dict(zip(input_names, batch)))
        t2 = time.perf_counter()
        t_torch, t_ort = t_torch + t1 - t0, t_ort + t2 - t1
        expected = expected if isinstance(expected, (tuple, list)) else (expected,)
        for name, e, g in zip(output_names, expected, got):
            if not np.isfinite(g).all():
                raise ParityError(f"{onnx_path}: ONNX output {name!r} is not finite")
            worst[name] = max(worst[name], float(np.abs(e.numpy() - g).max()))
    return {"n_windows": int(n), "max_abs_diff": worst[output_names[0]],
            "max_abs_diff_by_output": worst, "atol": cfg.parity_atol,
            "passed": worst[output_names[0]] <= cfg.parity_atol,
            "provider": session.get_providers()[0], "opset": cfg.opset,
            "torch_s": t_torch, "onnxruntime_s": t_ort}


def check_parity(parity: dict[str, Any], out_onnx: Path) -> None:
    """Raise :class:`ParityError` when the :func:`parity_report` did not pass."""
    if not parity["passed"]:
        raise ParityError(f"{out_onnx}: ONNX Runtime differs from PyTorch by up to "
                          f"{parity['max_abs_diff']:.3g} in a probability (allowed {parity['atol']:.1g}) "
                          f"on {parity['n_windows']} windows; the file was not written")


def parity_rows(n_rows: int, n: int) -> np.ndarray:
    """Up to ``n`` row positions spread evenly over ``0 .. n_rows - 1`` (sorted, unique)."""
    return np.unique(np.linspace(0, n_rows - 1, num=min(n, n_rows)).round().astype(np.int64))


def train_windows(data_dir: str | os.PathLike, store_paths: Any = None, *, n: int,
                  preprocessing: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` labelled training windows as raw ensemble inputs (for the ONNX parity check).

    Rows are spread over the store index (``store_paths``: paths or a window source), or over
    train.csv when no store is given; each recording is read once and its windows at
    ``eeg_label_offset_seconds`` cleaned as preprocessing cleans them (``ica.fit_on``).

    Returns
    -------
    raw_uv : np.ndarray
        ``(n, 20, 10000)`` float32 uV.
    spec_power : np.ndarray
        ``(n, 300, 400)`` float32.
    """
    if store_paths is not None:
        index = open_window_source(store_paths).index
        train = io.read_train_csv(Path(data_dir) / "train.csv").set_index("label_id")
        rows = train.loc[index["label_id"].to_numpy()].reset_index()
    else:
        rows = io.read_train_csv(Path(data_dir) / "train.csv")
    pick = rows.iloc[np.unique(np.linspace(0, len(rows) - 1, num=min(n, len(rows))).round().astype(int))]
    cleaning = from_mapping(PreprocessConfig, preprocessing, "preprocessing")
    raws, specs = [], []
    for eeg_id, group in pick.groupby("eeg_id", sort=False):
        path = io.eeg_path(data_dir, int(eeg_id))
        raw = io.read_eeg(path, eeg_id=int(eeg_id))
        slices = [io.eeg_window_slice(o) for o in group["eeg_label_offset_seconds"]]
        if any(s.stop > len(raw) for s in slices):
            raise DataError(path, f"a window runs past the end of the recording ({len(raw)} samples)",
                            eeg_id=int(eeg_id))
        windows, _ = clean_windows(raw, slices, cleaning, eeg_id=int(eeg_id), path=path)
        for (_, row), window in zip(group.iterrows(), windows):  # window: (20, 10000)
            spec_file = io.spectrogram_path(data_dir, int(row["spectrogram_id"]))
            _, power = io.read_spectrogram(spec_file, spectrogram_id=int(row["spectrogram_id"]))
            first = io.spectrogram_first_row(row["spectrogram_label_offset_seconds"])
            spec = power[first:first + SPEC_WINDOW_ROWS]
            if window.shape[1] < WINDOW_SAMPLES or len(spec) < SPEC_WINDOW_ROWS:
                raise DataError(path, f"label_id {int(row['label_id'])}: window runs past the end of the "
                                      "recording or spectrogram", eeg_id=int(eeg_id))
            raws.append(window)
            specs.append(spec)
    return np.stack(raws).astype(np.float32), np.stack(specs).astype(np.float32)
