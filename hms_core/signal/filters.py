"""Zero-phase FIR filter kernels (designed with scipy) and their torch application.

A symmetric (linear-phase) kernel applied as a *centred* convolution has zero phase:
the output is not delayed and waveform peaks stay where they were. The kernels are
plain numpy arrays so the same numbers go into preprocessing and into the ONNX graph.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import signal as sp_signal

from hms_core.config import check_option
from hms_core.contract import SAMPLING_RATE_HZ
from hms_core.errors import ConfigError

NOTCH_CHOICES = (None, 50.0, 60.0)


@dataclass
class FilterConfig:
    """Window-level band-pass and notch filter.

    Parameters
    ----------
    l_freq_hz : float
        High-pass edge (-6 dB point) in Hz; default 0.5. ``None`` disables the high-pass.
    h_freq_hz : float
        Low-pass edge (-6 dB point) in Hz; default 20.0. ``None`` disables the low-pass.
    notch_hz : float | None
        Mains frequency to remove: 60.0 (default, North America), 50.0, or None (off).
    notch_width_hz : float
        Width of the notch stop band in Hz; default 4.0.
    numtaps : int
        Kernel length in samples (odd); default 801 (4 s at 200 Hz, transition about 0.8 Hz).
    """

    l_freq_hz: float | None = 0.5
    h_freq_hz: float | None = 20.0
    notch_hz: float | None = 60.0
    notch_width_hz: float = 4.0
    numtaps: int = 801

    def validate(self, path: str = "preprocessing.filter") -> None:
        """Raise ConfigError naming ``<path>.<key>`` for a filter that cannot be designed."""
        nyquist = SAMPLING_RATE_HZ / 2
        check_option(f"{path}.notch_hz", self.notch_hz, NOTCH_CHOICES)
        if not isinstance(self.numtaps, int) or self.numtaps < 3 or self.numtaps % 2 == 0:
            raise ConfigError(f"{path}.numtaps: {self.numtaps!r} must be an odd integer >= 3")
        for key in ("l_freq_hz", "h_freq_hz"):
            value = getattr(self, key)
            if value is not None and not 0 < value < nyquist:
                raise ConfigError(f"{path}.{key}: {value!r} must lie in (0, {nyquist}) Hz or be null")
        if self.l_freq_hz is not None and self.h_freq_hz is not None and self.l_freq_hz >= self.h_freq_hz:
            raise ConfigError(f"{path}.l_freq_hz: {self.l_freq_hz!r} must be below h_freq_hz {self.h_freq_hz!r}")
        if self.notch_width_hz <= 0:
            raise ConfigError(f"{path}.notch_width_hz: {self.notch_width_hz!r} must be > 0")


def design_kernel(cfg: FilterConfig, *, sfreq_hz: float = SAMPLING_RATE_HZ) -> np.ndarray:
    """One symmetric Hamming-window FIR kernel for the band-pass and the notch together.

    The pass band is ``[l_freq_hz, h_freq_hz]`` (either edge may be None); a notch inside it
    splits it in two (``notch_hz +- notch_width_hz / 2`` is stopped). A notch above
    ``h_freq_hz`` is already in the low-pass stop band and needs no taps of its own.

    Returns
    -------
    np.ndarray
        float64 kernel of length ``cfg.numtaps``, symmetric, unit gain in the pass band;
        a unit impulse when nothing is to be filtered.
    """
    nyquist = sfreq_hz / 2
    low, high = cfg.l_freq_hz or 0.0, cfg.h_freq_hz or nyquist
    cutoffs = [cfg.l_freq_hz] if cfg.l_freq_hz is not None else []
    if cfg.notch_hz is not None and low < cfg.notch_hz < high:
        cutoffs += [cfg.notch_hz - cfg.notch_width_hz / 2, cfg.notch_hz + cfg.notch_width_hz / 2]
    if cfg.h_freq_hz is not None:
        cutoffs.append(cfg.h_freq_hz)
    if not cutoffs:
        kernel = np.zeros(cfg.numtaps)
        kernel[cfg.numtaps // 2] = 1.0
        return kernel
    kernel = sp_signal.firwin(cfg.numtaps, cutoffs, fs=sfreq_hz, pass_zero=cfg.l_freq_hz is None)
    return (kernel + kernel[::-1]) / 2  # exact symmetry despite rounding


def frequency_response(kernel: np.ndarray, freqs_hz: np.ndarray, *,
                       sfreq_hz: float = SAMPLING_RATE_HZ) -> np.ndarray:
    """Complex frequency response of ``kernel`` at ``freqs_hz`` (for tests and reports)."""
    _, h = sp_signal.freqz(kernel, worN=np.asarray(freqs_hz, dtype=np.float64), fs=sfreq_hz)
    return h


def polyphase_weight(kernel: np.ndarray, phases: int) -> np.ndarray:
    """Rearrange a 1-D kernel ``(K,)`` into a ``(P, P, J)`` conv1d weight over P polyphase channels.

    ``y[P m + r] = sum_k h[k] x[P m + r + k]`` becomes a P-in, P-out convolution of the signal
    folded into P phases, ``W[r, c, j] = h[P j + c - r]``: the same multiply-adds as the plain
    1-channel convolution, but shaped like a matrix product, which runs about 10x faster on
    CPU (oneDNN) for kernels of hundreds of taps.
    """
    n_taps = len(kernel)
    n_blocks = -(-(n_taps + phases - 1) // phases)
    weight = np.zeros((phases, phases, n_blocks))
    r, c, j = np.meshgrid(np.arange(phases), np.arange(phases), np.arange(n_blocks), indexing="ij")
    idx = phases * j + c - r
    valid = (idx >= 0) & (idx < n_taps)
    weight[valid] = kernel[idx[valid]]
    return weight


FIR_METHODS = ("conv", "fft")


class ZeroPhaseFIR(torch.nn.Module):
    """Zero-phase filtering of ``(B, C, T)`` with one symmetric kernel (pure torch).

    Reflect padding of ``K // 2`` samples at both ends keeps the length ``T`` and avoids the
    step a zero padding would produce at the window edges. The convolution runs either in
    polyphase form (``method="conv"``, see :func:`polyphase_weight`; exportable to ONNX) or
    as a product of real FFTs of the padded signal (``method="fft"``: about 3x less CPU for
    801 taps; not exportable). Both compute the same linear convolution; they differ by
    float32 rounding (about 1e-6 of the signal's range).

    Parameters
    ----------
    kernel : np.ndarray
        Symmetric kernel of odd length K.
    phases : int
        Polyphase factor P of the "conv" method; default 32.
    method : {"conv", "fft"}
        How the convolution is computed; default "conv".
    """

    def __init__(self, kernel: np.ndarray, *, phases: int = 32, method: str = "conv"):
        super().__init__()
        if method not in FIR_METHODS:
            raise ValueError(f"ZeroPhaseFIR method must be one of {FIR_METHODS}, not {method!r}")
        self.n_taps = len(kernel)
        self.phases = phases
        self.method = method
        weight = polyphase_weight(np.asarray(kernel, dtype=np.float64), phases)
        self.n_blocks = weight.shape[-1]
        self.register_buffer("weight", torch.tensor(weight, dtype=torch.float32))
        self.register_buffer("kernel", torch.tensor(np.asarray(kernel), dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.method == "fft":
            return self._fft_forward(x)
        batch, channels, n_times = x.shape
        half = self.n_taps // 2
        p = self.phases
        n_out_blocks = (n_times + p - 1) // p  # non-negative operands: ONNX Div truncates
        padded_len = p * (n_out_blocks + self.n_blocks - 1)
        flat = F.pad(x.reshape(-1, 1, n_times), (half, half), mode="reflect")
        # Beyond the reflected edge every weight is zero, so plain zeros complete the last block.
        flat = F.pad(flat, (0, padded_len - (n_times + 2 * half)))
        folded = flat.reshape(-1, padded_len // p, p).transpose(1, 2)  # (N, P, L/P)
        out = F.conv1d(folded, self.weight)  # (N, P, n_out_blocks)
        out = out.transpose(1, 2).reshape(-1, p * n_out_blocks)[:, :n_times]
        return out.reshape(batch, channels, n_times)

    def _fft_forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, n_times = x.shape
        half = self.n_taps // 2
        padded = F.pad(x.reshape(-1, 1, n_times), (half, half), mode="reflect")[:, 0]  # (N, T + K - 1)
        # A circular convolution as long as the padded signal: the wrapped-around part of
        # the full linear convolution lands only on the K - 1 outputs that are cut away.
        n_fft = padded.shape[-1]
        spectrum = torch.fft.rfft(padded, n=n_fft) * torch.fft.rfft(self.kernel, n=n_fft)
        out = torch.fft.irfft(spectrum, n=n_fft).reshape(batch, channels, n_fft)
        return out[..., self.n_taps - 1:self.n_taps - 1 + n_times]  # a view: no copy of the output
