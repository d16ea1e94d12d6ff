"""GPU utilisation, memory and temperature from NVML (``pynvml``, package nvidia-ml-py).

Never raises: without the package, the driver or a GPU the result says why.
"""
from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

_MIB = 1024 * 1024


def gpu_status() -> dict[str, Any]:
    """Read every visible NVIDIA GPU once.

    Returns
    -------
    dict
        ``available`` (bool), ``reason`` (str, why there is no reading; ``""`` when
        available), ``driver`` (str or None) and ``devices``: one dict per GPU with
        ``index``, ``name``, ``utilization_pct`` (%), ``memory_used_mib``,
        ``memory_total_mib`` (MiB), ``temperature_c`` (deg C) and ``power_w`` (W, None
        where the board does not report it).
    """
    try:
        import pynvml
    except ImportError as err:
        return _absent(f"pynvml not installed ({err}); install nvidia-ml-py")
    try:
        pynvml.nvmlInit()
    except Exception as err:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
        return _absent(f"NVML unavailable: {err}")
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        devices = [_read_device(pynvml, i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception as err:
        return _absent(f"NVML query failed: {err}")
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            logger.debug("nvmlShutdown failed", exc_info=True)
    if not devices:
        return {**_absent("NVML found no GPU"), "driver": driver}
    return {"available": True, "reason": "", "driver": driver, "devices": devices}


def _read_device(pynvml: Any, index: int) -> dict[str, Any]:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    util = pynvml.nvmlDeviceGetUtilizationRates(handle)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    try:
        power_w = pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0  # mW -> W
    except pynvml.NVMLError:
        power_w = None
    return {
        "index": index,
        "name": _text(pynvml.nvmlDeviceGetName(handle)),
        "utilization_pct": float(util.gpu),
        "memory_used_mib": memory.used / _MIB,
        "memory_total_mib": memory.total / _MIB,
        "temperature_c": float(pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)),
        "power_w": power_w,
    }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _absent(reason: str) -> dict[str, Any]:
    return {"available": False, "reason": reason, "driver": None, "devices": []}
