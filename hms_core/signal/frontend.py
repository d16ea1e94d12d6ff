"""The window-level front end: raw 20-channel windows to chains and spectrograms (pure torch).

The same module runs in preprocessing (its outputs go into the Zarr store) and inside the
exported ONNX graph, so a model sees identical inputs in training and in prediction.
Every op is exportable with ``torch.onnx.export(..., opset_version=17, dynamo=False)``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from hms_core.contract import (CENTER_SAMPLES, CENTER_START_SAMPLE, N_EEG_CHANNELS, SPEC_N_FREQS,
                               SPEC_REGIONS, SPEC_WINDOW_ROWS)
from hms_core.errors import ConfigError
from hms_core.signal.filters import FilterConfig, ZeroPhaseFIR, design_kernel
from hms_core.signal.montage import BipolarMontage
from hms_core.signal.spectrogram import RegionSpectrogram, SpectrogramConfig

KAGGLE_LOG_MIN = float(np.exp(-4))  # clip range of the public HMS notebooks
KAGGLE_LOG_MAX = float(np.exp(8))
# Store fields computed from the raw window (the fourth, kaggle_spec, comes from the Kaggle spectrogram).
FRONTEND_FIELDS = ("chains", "referential", "eeg_spec", "eeg_mel")


@dataclass
class FrontendConfig:
    """Window-level processing.

    Parameters
    ----------
    clip_uv : float
        Chains and referential channels are clipped to +-clip_uv microvolts after
        filtering; default 1024.
    filter : FilterConfig
        Band-pass and notch (default 0.5-20 Hz, 60 Hz notch, 801 taps).
    spectrogram : SpectrogramConfig
        STFT and mel settings.
    """

    clip_uv: float = 1024.0
    filter: FilterConfig = field(default_factory=FilterConfig)
    spectrogram: SpectrogramConfig = field(default_factory=SpectrogramConfig)

    def validate(self, path: str = "preprocessing") -> None:
        """The clip level must be > 0 uV (filter and spectrogram validate themselves)."""
        if self.clip_uv <= 0:
            raise ConfigError(f"{path}.clip_uv: {self.clip_uv!r} must be > 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class WindowFrontend(torch.nn.Module):
    """``raw_uv (B, 20, 10000) -> (chains (B, 18, 10000), eeg_spec (B, 4, F, T), eeg_mel (B, 4, M, T))``.

    Steps: NaN -> 0 after removing each channel's mean over its finite samples (per window
    DC removal), zero-phase FIR band-pass and notch of the 19 EEG channels (the EKG channel
    is dropped), double-banana montage, clip to +-clip_uv, then region-averaged log-power
    STFT and mel spectrograms of the chains. Defaults give F=50 bins (0.78-19.9 Hz), M=64
    mel rows, T=250 frames (0.2 s apart).

    :meth:`signals` also returns the filtered referential channels ``(B, 19, 10000)``
    (``EEG_CHANNELS`` order, clipped to +-clip_uv; store field ``referential``), and
    :meth:`fields` any set of store fields by name. The average reference is
    ``referential - referential.mean(dim=1)``; models form it themselves.

    ``fir_method`` "conv" (default) keeps every op exportable to ONNX; preprocessing uses
    "fft", the same filter in about a third of the CPU time (see :class:`ZeroPhaseFIR`).
    """

    def __init__(self, cfg: FrontendConfig | None = None, *, fir_method: str = "conv"):
        super().__init__()
        self.cfg = cfg or FrontendConfig()
        self.clip_uv = float(self.cfg.clip_uv)
        self.fir = ZeroPhaseFIR(design_kernel(self.cfg.filter), method=fir_method)
        self.montage = BipolarMontage()
        self.spectrogram = RegionSpectrogram(self.cfg.spectrogram)
        self.center_spectrogram = RegionSpectrogram(self.cfg.spectrogram, hop=self.cfg.spectrogram.center_hop)

    def signals(self, raw_uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Filtered, clipped ``(chains (B, 18, T), referential (B, 19, T))`` in uV from ``raw_uv (B, 20, T)``.

        The 19 EEG channels are filtered once; the chains are their bipolar differences
        (the montage is linear and per-sample, so it commutes with the filter). Each output
        is clipped to +-clip_uv after the montage, so a chain is the difference of the
        unclipped referential channels, as it always was.
        """
        eeg = raw_uv[:, :N_EEG_CHANNELS]
        plain_mean = None if torch.jit.is_tracing() else eeg.mean(dim=-1, keepdim=True)
        if plain_mean is not None and bool(torch.isfinite(plain_mean).all()):
            # A finite mean means no NaN (nor inf) in the window, as in cleaned windows: the
            # plain mean is the same number, without the masks (a traced graph, such as the
            # ONNX export, keeps the general form).
            centred = eeg - plain_mean
        else:
            finite = ~torch.isnan(eeg)
            zeroed = torch.where(finite, eeg, torch.zeros_like(eeg))
            count = finite.to(eeg.dtype).sum(dim=-1, keepdim=True)
            mean = zeroed.sum(dim=-1, keepdim=True) / torch.clamp(count, min=1.0)
            centred = torch.where(finite, eeg - mean, torch.zeros_like(eeg))
        referential = self.fir(centred)  # (B, 19, T)
        chains = self.montage(referential)  # (B, 18, T)
        if torch.jit.is_tracing():
            return (torch.clamp(chains, min=-self.clip_uv, max=self.clip_uv),
                    torch.clamp(referential, min=-self.clip_uv, max=self.clip_uv))
        # in place: both are fresh tensors (the montage's difference, the filter's output)
        return chains.clamp_(-self.clip_uv, self.clip_uv), referential.clamp_(-self.clip_uv, self.clip_uv)

    def chains(self, raw_uv: torch.Tensor) -> torch.Tensor:
        """Filtered, clipped chains ``(B, 18, T)`` in uV from ``raw_uv (B, 20, T)``."""
        return self.signals(raw_uv)[0]

    def referential(self, raw_uv: torch.Tensor) -> torch.Tensor:
        """Filtered, clipped referential channels ``(B, 19, T)`` in uV (``EEG_CHANNELS`` order)."""
        return self.signals(raw_uv)[1]

    def fields(self, raw_uv: torch.Tensor, names: Sequence[str] = FRONTEND_FIELDS) -> dict[str, torch.Tensor]:
        """The store fields ``names`` (any of ``FRONTEND_FIELDS``) of ``raw_uv (B, 20, T)``.

        Spectrograms are computed only when asked for; the signals always (they are cheap
        next to the filter, which both need).
        """
        unknown = [n for n in names if n not in FRONTEND_FIELDS]
        if unknown:
            raise ValueError(f"the front end computes {list(FRONTEND_FIELDS)}, not {unknown}")
        chains, referential = self.signals(raw_uv)
        out = {"chains": chains, "referential": referential}
        if "eeg_spec" in names or "eeg_mel" in names:
            out["eeg_spec"], out["eeg_mel"] = self.spectrogram(chains)
        return {n: out[n] for n in names}

    def forward(self, raw_uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        chains = self.chains(raw_uv)
        eeg_spec, eeg_mel = self.spectrogram(chains)
        return chains, eeg_spec, eeg_mel

    def center_spectrograms(self, chains: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Zoom on the labelled central 10 s: ``(eeg_spec, eeg_mel)`` of samples 4000-6000 of
        ``chains (B, 18, 10000)`` with frames every ``center_hop`` samples (default 250 frames)."""
        return self.center_spectrogram(chains, start=CENTER_START_SAMPLE, length=CENTER_SAMPLES)


def kaggle_spec_image(power: torch.Tensor, *, min_power: float = KAGGLE_LOG_MIN,
                      max_power: float = KAGGLE_LOG_MAX) -> torch.Tensor:
    """The Kaggle spectrogram of a window as a log image.

    Parameters
    ----------
    power : torch.Tensor
        ``(B, rows, 400)``: rows 2 s apart (300 for a 600 s window) of the 400 ``SPEC_COLUMNS`` (uV^2).
    min_power, max_power : float
        Clip range before the natural log; default exp(-4) to exp(8).

    Returns
    -------
    torch.Tensor
        ``(B, 4, 100, rows)``: region (LL, RL, LP, RP), frequency (row 0 = 0.59 Hz, ascending),
        time. NaN cells (gaps in the recording) take the log floor ``log(min_power)``, the
        value of zero power: models that leave the floor out of their statistics then treat
        them as gaps (0 would read as a plausible power of 1 uV^2).
    """
    batch, n_rows = power.shape[0], power.shape[1]
    image = power.reshape(batch, n_rows, len(SPEC_REGIONS), SPEC_N_FREQS).permute(0, 2, 3, 1)
    logged = torch.log(torch.clamp(image, min=min_power, max=max_power))
    return torch.where(torch.isnan(image), torch.full_like(logged, float(np.log(min_power))), logged)


def window_shapes(cfg: FrontendConfig) -> dict[str, tuple[int, ...]]:
    """Per-window shapes of the five store fields that :class:`WindowFrontend` and
    :func:`kaggle_spec_image` produce with ``cfg``."""
    from hms_core.contract import N_CHAINS, WINDOW_SAMPLES

    spec = cfg.spectrogram
    n_frames = spec.n_frames()
    return {"chains": (N_CHAINS, WINDOW_SAMPLES),
            "referential": (N_EEG_CHANNELS, WINDOW_SAMPLES),
            "eeg_spec": (len(SPEC_REGIONS), len(spec.bin_freqs_hz()), n_frames),
            "eeg_mel": (len(SPEC_REGIONS), spec.n_mels, n_frames),
            "kaggle_spec": (len(SPEC_REGIONS), SPEC_N_FREQS, SPEC_WINDOW_ROWS)}
