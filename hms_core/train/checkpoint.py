"""Resumable training state on disk: run keys, RNG seeding and capture, atomic checkpoint files.

A checkpoint is one ``torch.save`` dict written atomically (temp file + rename), so a
crash at any moment leaves either the previous checkpoint or the new one. Everything in
it is a tensor or a plain Python value, so it loads with ``torch.load(weights_only=True)``.
Each checkpoint carries the ``run_key`` of the run that wrote it; a checkpoint with a
different key is stale (other inputs or training parameters) and is never resumed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from hms_core import atomic

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
LAST_NAME = "last.pt"
BEST_NAME = "best.pt"


def make_run_key(*parts: Any) -> str:
    """Hash JSON-serialisable ``parts`` (inputs, configs, seeds) into a short hex key.

    Parameters
    ----------
    *parts : Any
        Anything that identifies the run: input file digests, config dicts, fold number.
        Dict keys are sorted, so the key does not depend on insertion order.

    Returns
    -------
    str
        The first 20 hex digits of the SHA-256 of the canonical JSON.
    """
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def capture_rng_state() -> dict[str, Any]:
    """Every random generator's state (Python, NumPy legacy, torch CPU, CUDA) as tensors/plain types."""
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": [py_version, torch.tensor(py_internal, dtype=torch.int64), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos),
                  int(np_has_gauss), float(np_cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }
    return state


def seed_rngs(seed: int) -> None:
    """Seed torch (CPU and CUDA), NumPy's legacy generator and Python's ``random`` with ``seed``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the generators saved by :func:`capture_rng_state`."""
    py_version, py_internal, py_gauss = state["python"]
    random.setstate((int(py_version), tuple(int(v) for v in py_internal.tolist()), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_cached = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), int(np_pos),
                         int(np_has_gauss), float(np_cached)))
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            logger.warning("checkpoint has %d CUDA RNG states but %d devices are visible; "
                           "CUDA RNG not restored", len(cuda_states), torch.cuda.device_count())


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """Write ``state`` (must contain ``run_key``) atomically to ``path``."""
    if "run_key" not in state:
        raise ValueError("a checkpoint needs a run_key")
    atomic.torch_save({"format": CHECKPOINT_FORMAT, **state}, path)


def load_checkpoint(path: str | os.PathLike, *, run_key: str,
                    map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """Load the checkpoint at ``path`` if it belongs to the run ``run_key``.

    Returns
    -------
    dict | None
        The checkpoint, or None when the file is missing, unreadable, of another format
        or written by a different run (stale); the reason is logged.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a torn or foreign file must not stop a fresh start
        logger.warning("ignoring unreadable checkpoint %s: %s", path, exc)
        return None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        logger.warning("ignoring checkpoint %s: unknown format", path)
        return None
    if state.get("run_key") != run_key:
        logger.warning("ignoring stale checkpoint %s: run key %s differs from this run's %s "
                       "(inputs or training parameters changed); starting fresh",
                       path, state.get("run_key"), run_key)
        return None
    return state
