"""ONNX Runtime for the exported files: a session on the best available device, and the
``hms.*`` metadata the export writes into each file (read without loading the weights)."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from hms_core.errors import DataError

logger = logging.getLogger(__name__)

METADATA_PREFIX = "hms."


def ort_providers(provider: str = "auto") -> list[str]:
    """ONNX Runtime execution providers: CUDA when available (``auto``/``cuda``), else CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if provider in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if provider == "cuda":
        logger.warning("CUDAExecutionProvider not available (have %s); using the CPU", ", ".join(available))
    return ["CPUExecutionProvider"]


def ort_session(path: str | os.PathLike, *, provider: str = "auto", threads: int | None = None):
    """An ``onnxruntime.InferenceSession`` on ``path`` (``threads``: intra-op CPU threads)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=ort_providers(provider))


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``hms.*`` metadata of an exported file, JSON values decoded (without loading weights)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "ONNX model not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:
        raise DataError(path, f"not a readable ONNX model: {err}") from err
    meta = {}
    for prop in model.metadata_props:
        if prop.key.startswith(METADATA_PREFIX):
            meta[prop.key[len(METADATA_PREFIX):]] = json.loads(prop.value)
    return meta
