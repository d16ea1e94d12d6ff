"""Load published encoder weights from a local file, naming every way the file does not fit.

The published braindecode checkpoints (Hugging Face ``PyTorchModelHubMixin`` format, e.g.
``braindecode/cbramod-pretrained``) are a folder with ``model.safetensors`` (the model's
``state_dict``) and ``config.json`` (its constructor arguments, possibly ``n_chans`` and
``chs_info``). ``pretrain.init_weights`` names that folder, its ``model.safetensors``, or a
``.pth``/``.bin`` state_dict. Nothing is downloaded here.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from hms_core.errors import DataError

WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")


def read_published(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, Path]:
    """``(state_dict, config.json contents or None, weights file)`` of a published checkpoint.

    Raises
    ------
    DataError
        When the path is missing, a folder without a weights file, or unreadable.
    """
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in WEIGHTS_FILES if (path / name).is_file()]
        if not found:
            raise DataError(path, f"pretrain.init_weights: no {' or '.join(WEIGHTS_FILES)} in this folder")
        path = found[0]
    if not path.is_file():
        raise DataError(path, "pretrain.init_weights: file not found (download the published weights first)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any parse failure means a bad file
        raise DataError(path, f"pretrain.init_weights: cannot read the weights: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(path, "pretrain.init_weights: not a state_dict (a mapping of names to tensors)")
    config_path = path.parent / "config.json"
    config = None
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(config_path, f"pretrain.init_weights: unreadable config.json: {exc}") from exc
    return state, config, path


# 10-10 names of the 10-20 electrodes that were renamed (our contract uses the 10-20 ones).
_RENAMED_ELECTRODES = {"T7": "T3", "T8": "T4", "P7": "T5", "P8": "T6"}


def _canonical(name) -> str:
    """Upper-case channel name with 10-10 electrode names mapped to 10-20 (``F7-T7`` = ``F7-T3``)."""
    parts = str(name).upper().split("-")
    return "-".join(_RENAMED_ELECTRODES.get(part, part) for part in parts)


def check_channels(config: dict[str, Any] | None, expected: Sequence[str], path) -> None:
    """Raise DataError when ``config.json`` declares another channel set than ``expected``.

    ``chs_info`` names are compared in order, case-insensitively and with the 10-10 names
    T7, T8, P7, P8 equal to the 10-20 T3, T4, T5, T6 (also within bipolar names such as
    ``F7-T7``); without them, ``n_chans``
    is compared to ``len(expected)``. A config that declares neither passes.
    """
    if not config:
        return
    names = [ch.get("ch_name") for ch in (config.get("chs_info") or []) if isinstance(ch, dict)]
    if names and [_canonical(n) for n in names] != [_canonical(n) for n in expected]:
        missing = [n for n in expected if _canonical(n) not in {_canonical(m) for m in names}]
        extra = [n for n in names if _canonical(n) not in {_canonical(m) for m in expected}]
        raise DataError(path, f"pretrain.init_weights: the weights were built for channels {names}, the "
                              f"encoder reads {list(expected)} (missing {missing}, extra {extra}"
                              f"{', same set in another order' if not missing and not extra else ''})")
    n_chans = config.get("n_chans")
    if not names and n_chans is not None and int(n_chans) != len(expected):
        raise DataError(path, f"pretrain.init_weights: the weights were built for {n_chans} channels, the "
                              f"encoder reads {len(expected)} ({', '.join(expected)})")


def load_matching(module: nn.Module, state: dict[str, torch.Tensor], path, *,
                  ignore_prefixes: Sequence[str] = ()) -> list[str]:
    """Copy ``state`` into ``module``; every key must exist with the same shape.

    Keys starting with one of ``ignore_prefixes`` (a task head the encoder does not have) are
    skipped. Returns the skipped keys.

    Raises
    ------
    DataError
        Naming the missing keys, the unexpected keys and the shape mismatches (a few of each).
    """
    own = module.state_dict()
    skipped = sorted(k for k in state if k.startswith(tuple(ignore_prefixes)) and k not in own)
    given = {k: v for k, v in state.items() if k not in skipped}
    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    shapes = [f"{k}: file {tuple(given[k].shape)} vs encoder {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(given)) if given[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        problems = [f"{label} ({len(items)}): {items[:4]}{' ...' if len(items) > 4 else ''}"
                    for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                         ("shape mismatches", shapes)) if items]
        raise DataError(path, f"pretrain.init_weights: the weights do not fit the {type(module).__name__} "
                              f"architecture: {'; '.join(problems)} (check pretrain.encoder and pretrain.model)")
    module.load_state_dict(given)
    return skipped
