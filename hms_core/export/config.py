"""Config of the ``export`` stage (ONNX files and their parity check)."""
from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

from hms_core.config import check_option
from hms_core.errors import ConfigError

MIN_OPSET = 17
Provider = Literal["auto", "cpu", "cuda"]
PROVIDERS = typing.get_args(Provider)


@dataclass
class ExportConfig:
    """ONNX export and validation.

    Parameters
    ----------
    opset : int
        ONNX opset of the exported graphs, >= 17 (default 17).
    parity_atol : float
        Largest allowed |ONNX - PyTorch| difference of any probability (default 1e-4);
        export fails when it is exceeded.
    n_parity_windows : int
        Real windows (from the stores, or raw windows of the data set for the ensemble)
        compared between ONNX Runtime and PyTorch (default 16).
    batch_size : int
        Windows per forward pass in the parity check (default 4).
    provider : {"auto", "cpu", "cuda"}
        ONNX Runtime provider of the parity check: ``"auto"`` (CUDA when available, else
        CPU), ``"cpu"`` or ``"cuda"``; default "auto".
    """

    opset: int = 17
    parity_atol: float = 1e-4
    n_parity_windows: int = 16
    batch_size: int = 4
    provider: Provider = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.opset, int) or self.opset < MIN_OPSET:
            raise ConfigError(f"export.opset: {self.opset!r} must be an integer >= {MIN_OPSET}")
        if not isinstance(self.parity_atol, (int, float)) or self.parity_atol <= 0:
            raise ConfigError(f"export.parity_atol: {self.parity_atol!r} must be > 0")
        for key in ("n_parity_windows", "batch_size"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ConfigError(f"export.{key}: {getattr(self, key)!r} must be an integer >= 1")
        check_option("export.provider", self.provider, PROVIDERS)
