"""Spectrograms of the chains, averaged per region: the Kaggle-style one and the model inputs.

:func:`kaggle_spectrogram` (numpy) is the one implementation of the spectrogram files of
the Kaggle layout (``*_spectrograms/<id>.parquet``: 400 columns of power, one row every
2 s); the synthetic data set writes its files with it.

:class:`RegionSpectrogram` (pure torch) gives the log-power STFT and mel spectrograms
that the models read.

The STFT is a strided convolution with fixed windowed-DFT kernels, so it exports to ONNX
as a plain Conv. The strided 1-channel convolution is computed in *folded* form: the
signal is reshaped into ``hop`` phase channels and the kernels into ``(2F, hop, J)``,
which turns it into a dense matrix product (about 10x faster on CPU, same numbers).

One STFT serves both outputs: ``eeg_spec`` is the log power of the linear bins between
``fmin_hz`` and ``fmax_hz``; ``eeg_mel`` applies a triangular mel filterbank (HTK scale) to
the same power. Below 20 Hz the mel scale is almost linear, so ``eeg_mel`` is mainly a
smoother resampling of the band onto ``n_mels`` rows, as in the public HMS notebooks.

Zooming on the labelled centre: :meth:`RegionSpectrogram.forward` takes ``start`` and
``length`` in samples; a second instance with a smaller ``hop`` (``center_hop``) gives the
central 10 s at a higher time resolution (see ``WindowFrontend.center_spectrograms``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft
import torch
import torch.nn.functional as F
from scipy import signal as sp_signal

from hms_core.contract import (
    CHAINS,
    CHANNEL_INDEX,
    REGION_CHAIN_ROWS,
    SAMPLING_RATE_HZ,
    SPEC_FREQS_HZ,
    SPEC_REGIONS,
    SPEC_STEP_S,
    WINDOW_SAMPLES,
)
from hms_core.errors import ConfigError


@dataclass
class SpectrogramConfig:
    """Window-level spectrograms.

    Parameters
    ----------
    n_fft : int
        STFT window length in samples; default 512 (2.56 s, bins 0.39 Hz apart).
    hop : int
        Frame step in samples; default 40 (0.2 s, 250 frames per 50 s window).
    fmin_hz, fmax_hz : float
        Frequency band kept in both spectrograms; default 0.5 to 20 Hz.
    n_mels : int
        Rows of ``eeg_mel``; default 64.
    log_floor : float
        Power floor in uV^2 before the natural log; default 1e-4.
    window : str
        scipy window name for the STFT; default "hann".
    center_hop : int
        Frame step in samples of the zoomed central-10 s spectrogram; default 8 (250 frames).
    """

    n_fft: int = 512
    hop: int = 40
    fmin_hz: float = 0.5
    fmax_hz: float = 20.0
    n_mels: int = 64
    log_floor: float = 1e-4
    window: str = "hann"
    center_hop: int = 8

    def validate(self, path: str = "preprocessing.spectrogram") -> None:
        """Raise ConfigError naming ``<path>.<key>`` for an STFT that does not fit the window."""
        for key in ("n_fft", "hop", "n_mels", "center_hop"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{path}.{key}: {value!r} must be a positive integer")
        if self.n_fft > WINDOW_SAMPLES or self.hop > self.n_fft:
            raise ConfigError(f"{path}.n_fft/hop: need hop <= n_fft <= {WINDOW_SAMPLES}, "
                              f"got n_fft={self.n_fft}, hop={self.hop}")
        if not 0 <= self.fmin_hz < self.fmax_hz <= SAMPLING_RATE_HZ / 2:
            raise ConfigError(f"{path}.fmin_hz/fmax_hz: need 0 <= fmin < fmax <= "
                              f"{SAMPLING_RATE_HZ / 2}, got {self.fmin_hz}, {self.fmax_hz}")
        if len(self.bin_freqs_hz()) < 2:
            raise ConfigError(f"{path}.n_fft: {self.n_fft} leaves fewer than 2 bins in "
                              f"[{self.fmin_hz}, {self.fmax_hz}] Hz")
        if self.log_floor <= 0:
            raise ConfigError(f"{path}.log_floor: {self.log_floor!r} must be > 0")

    def bin_freqs_hz(self) -> np.ndarray:
        """Centre frequencies (Hz) of the ``eeg_spec`` rows."""
        freqs = np.arange(self.n_fft // 2 + 1) * SAMPLING_RATE_HZ / self.n_fft
        return freqs[(freqs >= self.fmin_hz) & (freqs <= self.fmax_hz)]

    def n_frames(self, n_samples: int = WINDOW_SAMPLES, hop: int | None = None) -> int:
        """Frames of a spectrogram of ``n_samples`` (one frame centred every ``hop`` samples)."""
        return n_samples // (hop or self.hop)


def mel_filterbank(bin_freqs_hz: np.ndarray, n_mels: int) -> np.ndarray:
    """Triangular HTK-mel filters ``(n_mels, F)`` over the given linear bins, rows summing to 1.

    Each triangle is at least one bin wide on either side so that no filter is empty when
    the mel bands are narrower than the bin spacing; rows are normalised to average (not
    sum) the power, keeping ``eeg_mel`` in the units of ``eeg_spec``.
    """
    def to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def to_hz(m):
        return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)

    spacing = bin_freqs_hz[1] - bin_freqs_hz[0]
    edges = to_hz(np.linspace(to_mel(bin_freqs_hz[0]), to_mel(bin_freqs_hz[-1]), n_mels + 2))
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    left = np.maximum(centre - lower, spacing)[:, None]
    right = np.maximum(upper - centre, spacing)[:, None]
    f = bin_freqs_hz[None, :]
    weights = np.clip(np.minimum((f - (centre[:, None] - left)) / left,
                                 ((centre[:, None] + right) - f) / right), 0.0, None)
    return weights / weights.sum(axis=1, keepdims=True)


def region_matrix() -> np.ndarray:
    """``(4, 16)`` averaging matrix from the 16 spectrogram chains to LL, RL, LP, RP."""
    rows = [r for region in SPEC_REGIONS for r in REGION_CHAIN_ROWS[region]]
    matrix = np.zeros((len(SPEC_REGIONS), len(rows)))
    for i, region in enumerate(SPEC_REGIONS):
        for r in REGION_CHAIN_ROWS[region]:
            matrix[i, rows.index(r)] = 1.0 / len(REGION_CHAIN_ROWS[region])
    return matrix


class RegionSpectrogram(torch.nn.Module):
    """``chains (B, 18, T) -> (eeg_spec (B, 4, F, frames), eeg_mel (B, 4, n_mels, frames))``.

    Both are natural-log power in uV^2 per bin (periodogram scaled by the window energy),
    floored at ``log_floor``; frame ``k`` is centred on sample ``start + k * hop`` and edges
    are reflect-padded.
    """

    def __init__(self, cfg: SpectrogramConfig, *, hop: int | None = None):
        super().__init__()
        self.n_fft = cfg.n_fft
        self.hop = hop or cfg.hop
        self.log_floor = cfg.log_floor
        freqs = cfg.bin_freqs_hz()
        self.n_bins = len(freqs)
        window = sp_signal.get_window(cfg.window, cfg.n_fft, fftbins=True)
        t = np.arange(cfg.n_fft)
        phase = 2 * np.pi * np.outer(freqs / SAMPLING_RATE_HZ, t)
        scale = 1.0 / np.sqrt(np.sum(window ** 2))
        dft = np.concatenate([np.cos(phase), -np.sin(phase)]) * window * scale  # (2F, n_fft)
        self.n_blocks = -(-cfg.n_fft // self.hop)
        folded = np.zeros((2 * self.n_bins, self.n_blocks * self.hop))
        folded[:, :cfg.n_fft] = dft
        # W[o, c, j] = dft[o, hop * j + c]
        folded = folded.reshape(2 * self.n_bins, self.n_blocks, self.hop).transpose(0, 2, 1)
        self.register_buffer("dft", torch.tensor(np.ascontiguousarray(folded), dtype=torch.float32))
        self.register_buffer("dft_matrix", torch.tensor(np.ascontiguousarray(dft.T), dtype=torch.float32),
                             persistent=False)  # (n_fft, 2F)
        self.register_buffer("mel", torch.tensor(mel_filterbank(freqs, cfg.n_mels), dtype=torch.float32))
        self.register_buffer("regions", torch.tensor(region_matrix(), dtype=torch.float32))
        rows = [r for region in SPEC_REGIONS for r in REGION_CHAIN_ROWS[region]]
        self.register_buffer("chain_rows", torch.tensor(rows, dtype=torch.long))
        contiguous = rows == list(range(rows[0], rows[0] + len(rows)))
        self._chain_slice = slice(rows[0], rows[0] + len(rows)) if contiguous else None

    def region_chains(self, chains: torch.Tensor) -> torch.Tensor:
        """The 16 chains of the four regions, ``(B, 16, T)`` (a view when their rows are contiguous)."""
        if self._chain_slice is not None and not torch.jit.is_tracing():
            return chains[:, self._chain_slice]
        return chains.index_select(1, self.chain_rows)

    def n_frames_of(self, n_times: int) -> int:
        """Frames of a spectrogram of ``n_times`` samples."""
        return n_times // self.hop

    def padded(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """``(padded (N, 1, L), n_frames)`` of signals ``x (..., T)``: reflect-padded by half a
        frame on the left and what the last frame needs on the right, zero-completed to whole
        hops, ready for :meth:`spectrum`."""
        n_times = x.shape[-1]
        n_frames = self.n_frames_of(n_times)
        left = self.n_fft // 2
        right = self.n_fft - left - self.hop
        flat = F.pad(x.reshape(-1, 1, n_times), (left, max(right, 0)), mode="reflect")
        # Zeros to complete the last fold (they meet zero kernel taps only), then trim.
        needed = self.hop * (n_frames + self.n_blocks - 1)
        return F.pad(flat, (0, self.hop * self.n_blocks))[..., :needed], n_frames

    def spectrum(self, padded: torch.Tensor, first: int, stop: int) -> torch.Tensor:
        """Windowed DFT ``(N, 2F, stop - first)`` (real parts, then imaginary parts) of frames
        ``first`` to ``stop - 1`` of :meth:`padded`'s output."""
        part = padded[..., self.hop * first:self.hop * (stop + self.n_blocks - 1)]
        if not torch.jit.is_tracing():
            # The frames as a strided view times the DFT matrix: one plain matrix product,
            # about 1.5x faster on the CPU than the folded convolution (same sums).
            frames = part[:, 0].unfold(-1, self.n_fft, self.hop)[:, :stop - first]  # (N, n, n_fft)
            return torch.matmul(frames, self.dft_matrix).transpose(1, 2)
        folded = part.reshape(part.shape[0], -1, self.hop).transpose(1, 2)  # (N, hop, L/hop)
        return F.conv1d(folded, self.dft)

    def power(self, chains: torch.Tensor, *, start: int = 0, length: int | None = None) -> torch.Tensor:
        """Per-chain power ``(B, 16, F, frames)`` of the 16 region chains (uV^2 per bin)."""
        x = self.region_chains(chains)
        n_times = x.shape[-1] if length is None else length
        x = x[..., start:start + n_times]
        batch, n_chains = x.shape[0], x.shape[1]
        padded, n_frames = self.padded(x)
        spec = self.spectrum(padded, 0, n_frames)  # (N, 2F, frames)
        return self.power_of(spec).reshape(batch, n_chains, self.n_bins, n_frames)

    def power_of(self, spec: torch.Tensor) -> torch.Tensor:
        """Power ``(..., F, frames)`` of :meth:`spectrum`'s ``(..., 2F, frames)``."""
        real, imag = spec[..., :self.n_bins, :], spec[..., self.n_bins:, :]
        if torch.jit.is_tracing():
            return real * real + imag * imag
        return torch.square(real).addcmul_(imag, imag)  # one temporary fewer

    def forward(self, chains: torch.Tensor, *, start: int = 0,
                length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.from_power(self.power(chains, start=start, length=length))

    def from_power(self, power: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(eeg_spec, eeg_mel)`` log images from the per-chain power ``(B, 16, F, frames)``."""
        region_power = torch.einsum("rc,bcft->brft", self.regions, power)
        mel_power = torch.einsum("mf,brft->brmt", self.mel, region_power)
        floor = self.log_floor
        return torch.log(torch.clamp(region_power, min=floor)), torch.log(torch.clamp(mel_power, min=floor))


# ------------------------------------------------------------------ Kaggle-style spectrogram
# Spectrogram frames: a 1024-sample Hann window (5.12 s) centred on each row time; its
# bins 3..102 are exactly SPEC_FREQS_HZ (k * 200/1024 Hz).
SPEC_NFFT = 1024
_SPEC_BINS = np.rint(SPEC_FREQS_HZ * SPEC_NFFT / SAMPLING_RATE_HZ).astype(int)
_REGION_PAIRS = [(CHANNEL_INDEX[a], CHANNEL_INDEX[b]) for r in SPEC_REGIONS for a, b in CHAINS[r]]
_HANN = sp_signal.get_window("hann", SPEC_NFFT).astype(np.float32)


def kaggle_spectrogram(raw_uv: np.ndarray, n_rows: int) -> np.ndarray:
    """Kaggle-style spectrogram of a recording, as the contract's chains define it.

    Row ``k`` (time ``2k+1`` s) is the Hann-windowed (1024 samples, centred on that time,
    mean removed) power spectral density of each of a region's 4 bipolar chains,
    averaged over them, at ``SPEC_FREQS_HZ``. A frame touching NaN in a region's chains
    gives NaN in that region's 100 columns (the whole row when all channels are NaN).

    Parameters
    ----------
    raw_uv : numpy.ndarray
        ``(n_samples, 20)`` in ``RAW_CHANNELS`` order, uV, 200 Hz, starting at time 0.
    n_rows : int
        Number of rows (one every 2 s).

    Returns
    -------
    numpy.ndarray
        float32 ``(n_rows, 400)`` in ``SPEC_COLUMNS`` order, uV^2/Hz.
    """
    channels = np.asarray(raw_uv, dtype=np.float32).T  # (20, n)
    chains = np.stack([channels[a] - channels[b] for a, b in _REGION_PAIRS])  # (16, n)
    half = SPEC_NFFT // 2
    padded = np.pad(chains, ((0, 0), (half, half)), mode="reflect")
    centres = (np.arange(n_rows) * SPEC_STEP_S + SPEC_STEP_S // 2) * SAMPLING_RATE_HZ
    frames = np.lib.stride_tricks.sliding_window_view(padded, SPEC_NFFT, axis=-1)[:, centres]  # (16, r, nfft)
    frames = frames - frames.mean(axis=-1, keepdims=True)
    frames *= _HANN
    spectrum = scipy.fft.rfft(frames, axis=-1)[..., _SPEC_BINS]
    psd = 2 * (spectrum.real**2 + spectrum.imag**2) / np.float32(SAMPLING_RATE_HZ * float((_HANN**2).sum()))
    regions = psd.reshape(len(SPEC_REGIONS), 4, n_rows, len(_SPEC_BINS)).mean(axis=1)  # (4, r, 100)
    return np.ascontiguousarray(regions.transpose(1, 0, 2).reshape(n_rows, -1), dtype=np.float32)
