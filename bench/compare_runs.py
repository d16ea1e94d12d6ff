"""Compare two run folders artifact by artifact: is the second run the same as the first?

A refactor must not change results. On the CPU the demo is deterministic, so two runs of
``make demo`` (before and after a change, each in its own ``--directory``) must agree exactly:

- every tensor of every ``models/final/*.pth`` (weights, foundation encoder, ensemble head),
  compared with ``torch.equal``;
- every out-of-fold frame ``oof/*.parquet``, with ``DataFrame.equals``;
- every array of every Zarr store ``data/processed/*.zarr``, bit for bit (NaN equal to NaN);
- every ONNX model ``models/onnx/*.onnx``, run with onnxruntime on the same seeded random
  inputs (shapes from the model's declared inputs, the dynamic batch set to 3), outputs
  compared bit for bit;
- the raw data set and ``data/folds.csv``, byte for byte.

The other entries of the weight files (metrics, history, model arguments) are compared too,
leaving out wall-clock fields (``seconds``, ``elapsed``, ...), which differ between any two
runs; a difference there is listed under ``metadata_diffs`` and also fails the comparison.

Prints one JSON line; exit status 1 when any artifact differs or is missing on one side.

Usage::

    python bench/compare_runs.py RUN_BEFORE RUN_AFTER
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from hms_core.hashing import sha256_file

TIMING_KEYS = ("seconds", "elapsed", "time", "duration", "started", "finished_at", "created")


def _files(root: Path, pattern: str) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.glob(pattern)) if p.is_file()}


def _tensors(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Every tensor in a nested checkpoint, by dotted path."""
    import torch

    out: dict[str, Any] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_tensors(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_tensors(v, f"{prefix}[{i}]"))
    return out


def _numbers(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Non-tensor leaves (metrics, history, kwargs), leaving out wall-clock fields."""
    import torch

    out: dict[str, Any] = {}
    if isinstance(obj, torch.Tensor):
        return out
    if isinstance(obj, dict):
        for k, v in obj.items():
            if any(t in str(k).lower() for t in TIMING_KEYS):
                continue
            out.update(_numbers(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_numbers(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = obj
    return out


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def compare_weights(a: Path, b: Path) -> tuple[list[str], list[str], int]:
    import torch

    da, db = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    ta, tb = _tensors(da), _tensors(db)
    diffs = sorted(set(ta) ^ set(tb))
    diffs += [k for k in sorted(set(ta) & set(tb))
              if ta[k].shape != tb[k].shape or ta[k].dtype != tb[k].dtype
              or not torch.equal(ta[k], tb[k])]
    na, nb = _numbers(da), _numbers(db)
    meta = sorted(set(na) ^ set(nb)) + [k for k in sorted(set(na) & set(nb))
                                        if not _same_value(na[k], nb[k])]
    return diffs, meta, len(ta)


def compare_parquet(a: Path, b: Path) -> bool:
    import pandas as pd

    return pd.read_parquet(a).equals(pd.read_parquet(b))


def compare_zarr(a: Path, b: Path) -> tuple[list[str], int]:
    import warnings

    import zarr

    warnings.filterwarnings("ignore", message="Object at .* is not recognized")
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    arrays_a = dict(ga.arrays())
    arrays_b = dict(gb.arrays())
    diffs = sorted(set(arrays_a) ^ set(arrays_b))
    for name in sorted(set(arrays_a) & set(arrays_b)):
        x, y = arrays_a[name][...], arrays_b[name][...]
        if x.shape != y.shape or x.dtype != y.dtype or not np.array_equal(
                x, y, equal_nan=x.dtype.kind in "fc"):
            diffs.append(name)
    return diffs, len(arrays_a)


def compare_onnx(a: Path, b: Path, *, batch: int = 3, seed: int = 0) -> list[str]:
    import onnxruntime as ort

    sa = ort.InferenceSession(str(a), providers=["CPUExecutionProvider"])
    sb = ort.InferenceSession(str(b), providers=["CPUExecutionProvider"])
    ins_a = [(i.name, i.shape, i.type) for i in sa.get_inputs()]
    if ins_a != [(i.name, i.shape, i.type) for i in sb.get_inputs()]:
        return ["<inputs differ>"]
    rng = np.random.default_rng(seed)
    feed = {}
    for name, shape, typ in ins_a:
        dims = [d if isinstance(d, int) else batch for d in shape]
        dtype = np.float16 if "float16" in typ else np.float32
        feed[name] = rng.standard_normal(dims).astype(dtype)
    out_a, out_b = sa.run(None, feed), sb.run(None, feed)
    names = [o.name for o in sa.get_outputs()]
    return [n for n, x, y in zip(names, out_a, out_b)
            if x.shape != y.shape or not np.array_equal(x, y, equal_nan=True)]


def compare_runs(before: Path, after: Path) -> dict[str, Any]:
    report: dict[str, Any] = {"before": str(before), "after": str(after), "differs": {},
                              "missing": [], "metadata_diffs": {}, "checked": {}}

    def pair(pattern: str) -> list[tuple[str, Path, Path]]:
        fa, fb = _files(before, pattern), _files(after, pattern)
        report["missing"] += sorted(set(fa) ^ set(fb))
        return [(k, fa[k], fb[k]) for k in sorted(set(fa) & set(fb))]

    n_tensors = 0
    for name, a, b in pair("models/final/*.pth"):
        diffs, meta, n = compare_weights(a, b)
        n_tensors += n
        if diffs:
            report["differs"][name] = diffs[:10]
        if meta:
            report["metadata_diffs"][name] = meta[:10]
    report["checked"]["weight_files"] = len(pair("models/final/*.pth"))
    report["checked"]["tensors"] = n_tensors

    oofs = pair("oof/*.parquet")
    for name, a, b in oofs:
        if not compare_parquet(a, b):
            report["differs"][name] = ["frame"]
    report["checked"]["oof_frames"] = len(oofs)

    stores = [(k, a, b) for k, a, b in pair("data/processed/*.zarr/zarr.json")]
    n_arrays = 0
    for name, a, b in stores:
        diffs, n = compare_zarr(a.parent, b.parent)
        n_arrays += n
        index_a, index_b = a.parent / "index.parquet", b.parent / "index.parquet"
        if index_a.exists() != index_b.exists() or (
                index_a.exists() and not compare_parquet(index_a, index_b)):
            diffs.append("index.parquet")
        if diffs:
            report["differs"][str(Path(name).parent)] = diffs
    report["checked"]["zarr_stores"], report["checked"]["zarr_arrays"] = len(stores), n_arrays

    onnx = pair("models/onnx/*.onnx")
    for name, a, b in onnx:
        diffs = compare_onnx(a, b)
        if diffs:
            report["differs"][name] = diffs
    report["checked"]["onnx_models"] = len(onnx)

    raw = pair("data/raw/**/*") + pair("data/folds.csv")
    for name, a, b in raw:
        if sha256_file(a) != sha256_file(b):
            report["differs"][name] = ["bytes"]
    report["checked"]["data_files"] = len(raw)
    report["identical"] = not (report["differs"] or report["missing"] or report["metadata_diffs"])
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    report = compare_runs(args.before, args.after)
    print(json.dumps(report, sort_keys=True))
    return 0 if report["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
