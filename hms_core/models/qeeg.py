"""``qeeg``: classic quantitative-EEG features computed in torch, then a linear (or small MLP) head.

The reference member every deep model must beat. Its features are fixed functions of the
window, computed inside ``forward`` (so the model exports to ONNX like every other and needs
no feature files), for the whole 50 s window and again for the central 10 s the experts
labelled:

- Welch band powers (Hann segments of ``segment_s``, half overlapping, mean removed) per
  signal and per region (mean power of the region's signals): natural-log power in uV^2 per
  band (default delta 0.5-4, theta 4-8, alpha 8-13, beta 13-30 Hz and everything above 30 Hz),
  log total power, and log relative power (band / sum of the bands).
- Left-right asymmetry ``log P(left) - log P(right)`` per band for every homologous pair of
  signals and of regions (**positive when the left side is stronger**) and its absolute value
  (the focal, side-free part, which a linear head cannot form from the signed one).
- Focal-vs-generalised spread: per band the standard deviation of the log power across
  signals and across regions, and the largest signal's excess over the mean.
- Line length (mean absolute slope, uV/s, log), spike/sharp-wave rate (onsets per second of
  stretches whose absolute slope exceeds ``spike_threshold`` times the signal's mean absolute
  slope, counted in 0.05 s blocks so that both flanks of a spike are one event) and kurtosis
  (``log(1 + m4 / m2^2)``) per signal, and their region means.
- Envelope periodicity: the amplitude envelope (mean absolute value over ``envelope_s``) is
  autocorrelated at lags from ``lag_bins_s[0]`` to ``lag_bins_s[-1]`` (default 0.3-4 s, one
  lag per envelope step). Periodic discharges make a peak at their period. Features: the
  peak prominence (largest rise of the autocorrelation after its running minimum) per signal
  and per region (on the region's mean autocorrelation), and the region's highest
  autocorrelation in each lag bin.
- Synchrony of the envelopes (generalised activity): mean correlation over all pairs of
  signals, within the left and within the right hemisphere, and between homologous pairs.

Inputs (``inputs``): ``"chains"`` (the 18 bipolar chains of the store, uV), and, once the
store holds the 19 referential EEG channels as field ``referential``, ``"referential"``
(those channels as they are) and ``"average"`` (the average reference the model forms from
them). Each input gets the features above with its own signals, regions and homologous pairs.

The feature vector is standardised by :class:`RunningStandardizer` (the running mean and
variance of every feature over all training batches, so at evaluation it is exactly a
standard scaler fitted on the training windows), clipped to +-``clip_std``, and a dropout +
linear head (``hidden: 0``) or a one-hidden-layer MLP maps it to the 6 logits. Only the head
learns; the engine trains it with the KL loss like every model.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hms_core import contract
from hms_core.errors import ConfigError
from hms_core.models.registry import register_model

INPUT_FIELD = {"chains": "chains", "referential": "referential", "average": "referential"}
DEFAULT_BANDS_HZ = ((0.5, 4.0), (4.0, 8.0), (8.0, 13.0), (13.0, 30.0), (30.0, None))
DEFAULT_LAG_BINS_S = (0.3, 0.6, 1.0, 1.5, 2.5, 4.0)
FEATURE_GROUPS = ("logpow", "logtotal", "relpow", "asym", "absasym", "spread", "linelength",
                  "spikerate", "kurtosis", "periodicity", "envacf", "sync")
# Left out by default: per-band log power is log total + relative power (the same information
# twice for a linear head), and signed asymmetry carries no label (the classes do not say
# which side) once the hemisphere swap augments training.
DEFAULT_FEATURES = tuple(g for g in FEATURE_GROUPS if g not in ("logpow", "asym"))
_EPS = 1e-6
SPIKE_BLOCK_S = 0.05  # steep stretches within one or adjacent blocks of this are one event


@dataclasses.dataclass(frozen=True)
class Layout:
    """Signals of one input and how they group.

    Attributes
    ----------
    names : tuple of str
        One name per signal (row of the input tensor).
    regions : tuple of (str, tuple of int)
        Region name and the rows it averages.
    left, right : tuple of int
        Homologous rows: ``left[i]`` mirrors ``right[i]``.
    region_left, region_right : tuple of int
        Homologous regions (indices into ``regions``).
    """

    names: tuple[str, ...]
    regions: tuple[tuple[str, tuple[int, ...]], ...]
    left: tuple[int, ...]
    right: tuple[int, ...]
    region_left: tuple[int, ...]
    region_right: tuple[int, ...]


_CHAIN_REGIONS = ("LL", "RL", "LP", "RP", "C")
_REGION_PAIRS = (("LL", "RL"), ("LP", "RP"))


def chain_layout() -> Layout:
    """The 18 double-banana chains (``contract.BIPOLAR_NAMES``); regions LL, RL, LP, RP, C."""
    left = tuple(r for region in ("LL", "LP") for r in contract.REGION_CHAIN_ROWS[region])
    return Layout(
        names=contract.BIPOLAR_NAMES,
        regions=tuple((r, contract.REGION_CHAIN_ROWS[r]) for r in _CHAIN_REGIONS),
        left=left, right=tuple(contract.CHAIN_HEMISPHERE_SWAP[r] for r in left),
        region_left=tuple(_CHAIN_REGIONS.index(a) for a, _ in _REGION_PAIRS),
        region_right=tuple(_CHAIN_REGIONS.index(b) for _, b in _REGION_PAIRS))


def referential_layout() -> Layout:
    """The 19 EEG electrodes (``contract.EEG_CHANNELS``), grouped like the chains: LL, RL
    (the temporal chain's electrodes Fp, F7/8, T3/4, T5/6, O), LP, RP (F3/4, C3/4, P3/4) and C
    (Fz, Cz, Pz)."""
    names = contract.EEG_CHANNELS

    def electrodes(region: str) -> list[str]:
        chain = contract.CHAINS[region]
        return [chain[0][0]] + [b for _, b in chain]

    lateral = {"LL": electrodes("LL"), "RL": electrodes("RL")}
    groups = {**lateral,
              "LP": [e for e in electrodes("LP") if e not in lateral["LL"]],
              "RP": [e for e in electrodes("RP") if e not in lateral["RL"]],
              "C": electrodes("C")}
    left = [e for e in names if e in groups["LL"] + groups["LP"]]
    return Layout(
        names=names,
        regions=tuple((r, tuple(names.index(e) for e in groups[r])) for r in _CHAIN_REGIONS),
        left=tuple(names.index(e) for e in left),
        right=tuple(contract.REFERENTIAL_HEMISPHERE_SWAP[names.index(e)] for e in left),
        region_left=tuple(_CHAIN_REGIONS.index(a) for a, _ in _REGION_PAIRS),
        region_right=tuple(_CHAIN_REGIONS.index(b) for _, b in _REGION_PAIRS))


def block_mean(x: torch.Tensor, size: int) -> torch.Tensor:
    """Means of consecutive blocks of ``size`` samples: ``(B, C, T)`` -> ``(B, C, T // size)``.

    The same numbers as ``F.avg_pool1d(x, size)``, several times faster on the CPU.
    """
    if size == 1:
        return x
    n = x.shape[-1] // size
    return x[..., :n * size].reshape(x.shape[0], x.shape[1], n, size).mean(dim=-1)


def _band_name(lo: float, hi: float | None) -> str:
    return f"{lo:g}+Hz" if hi is None else f"{lo:g}-{hi:g}Hz"


class QEEGFeatures(nn.Module):
    """Fixed qEEG features of one input: ``x (B, n_signals, n_times)`` uV -> ``(B, n_features)``.

    Parameters
    ----------
    layout : Layout
        Signals, regions and homologous pairs of the input.
    n_times : int, default 10000
        Samples per window.
    sfreq : float, default 200
        Sampling rate in Hz.
    bands_hz : sequence of (float, float or None), default delta/theta/alpha/beta/30+
        Band edges in Hz, lower edge inclusive; an upper edge of None means "to Nyquist".
    segment_s : float, default 2.0
        Welch segment length in s (frequency resolution ``1 / segment_s`` Hz).
    center_s : float, default 10.0
        Length in s of the central stretch that gets its own copy of every feature.
    envelope_s : float, default 0.1
        Envelope step in s (mean absolute amplitude over non-overlapping stretches).
    lag_bins_s : sequence of float, default (0.3, 0.6, 1.0, 1.5, 2.5, 4.0)
        Edges in s of the autocorrelation lag bins; lags run from the first to the last edge.
    spike_threshold : float, default 4.0
        A spike/sharp-wave event starts where the absolute slope exceeds this many times the
        signal's mean absolute slope.
    power_floor_uv2 : float, default 1e-2
        Floor of band powers (uV^2) before the log.
    features : sequence of str, default all of ``FEATURE_GROUPS`` but "logpow" and "asym"
        Feature groups to output (the name's third part: ``<span>:<group>:...``).
    """

    def __init__(self, layout: Layout, *, n_times: int = contract.WINDOW_SAMPLES,
                 sfreq: float = contract.SAMPLING_RATE_HZ,
                 bands_hz: Sequence[Sequence[float | None]] = DEFAULT_BANDS_HZ,
                 segment_s: float = 2.0, center_s: float = float(contract.CENTER_S),
                 envelope_s: float = 0.1, lag_bins_s: Sequence[float] = DEFAULT_LAG_BINS_S,
                 spike_threshold: float = 4.0, power_floor_uv2: float = 1e-2,
                 features: Sequence[str] = DEFAULT_FEATURES):
        super().__init__()
        self.layout = layout
        self.n_signals = len(layout.names)
        self.n_times, self.sfreq = int(n_times), float(sfreq)
        self.bands = [(float(lo), None if hi is None else float(hi)) for lo, hi in bands_hz]
        self.spike_threshold = float(spike_threshold)
        self.spike_block = max(1, int(round(SPIKE_BLOCK_S * sfreq)))  # samples
        self.power_floor = float(power_floor_uv2)
        self._check(segment_s, center_s, envelope_s, lag_bins_s)

        # Welch segments: even ones start at k * seg, odd ones at seg / 2 + k * seg.
        seg = int(round(segment_s * sfreq))
        self.seg, self.half = seg, seg // 2
        self.n_even = self.n_times // seg
        self.n_odd = (self.n_times - self.half) // seg
        starts = [k * seg for k in range(self.n_even)] + [self.half + k * seg for k in range(self.n_odd)]
        n_center = int(round(center_s * sfreq))
        self.c0 = (self.n_times - n_center) // 2
        self.c1 = self.c0 + n_center
        center_segments = [i for i, s in enumerate(starts) if s >= self.c0 and s + seg <= self.c1]
        if not center_segments:
            raise ConfigError(f"models.qeeg.center_s: {center_s} s holds no whole {segment_s} s "
                              "segment; make it at least twice segment_s")
        self.register_buffer("center_segments", torch.tensor(center_segments, dtype=torch.long),
                             persistent=False)
        window = np.hanning(seg + 1)[:-1]  # periodic Hann
        freqs = np.arange(seg // 2 + 1) * sfreq / seg
        if all(hi is not None for _, hi in self.bands):  # no bin above the top edge is needed
            freqs = freqs[freqs < max(hi for _, hi in self.bands)]
        phase = 2 * np.pi * np.outer(np.arange(seg), freqs) / sfreq
        dft = np.concatenate([np.cos(phase), np.sin(phase)], axis=1) * window[:, None]
        # Mean removal folded in: (I - 11'/seg) @ dft is the DFT of the mean-removed segment.
        dft = dft - dft.mean(axis=0, keepdims=True)
        self.n_bins = len(freqs)
        self.register_buffer("dft", torch.tensor(dft, dtype=torch.float32), persistent=False)
        # One-sided PSD * bin width: 2 |X_k|^2 / (seg * sum(w^2)) (1x at DC and Nyquist).
        one_sided = (np.where((freqs == 0) | np.isclose(freqs, sfreq / 2), 1.0, 2.0)
                     / (seg * float(np.sum(window ** 2))))
        band_w = np.stack([one_sided * ((freqs >= lo) & (freqs < (hi if hi is not None else np.inf)))
                           for lo, hi in self.bands], axis=1)
        self.register_buffer("band_weights", torch.tensor(band_w, dtype=torch.float32),
                             persistent=False)

        # Envelope and its autocorrelation.
        self.env_step = int(round(envelope_s * sfreq))
        lags = np.arange(int(round(lag_bins_s[0] / envelope_s)), int(round(lag_bins_s[-1] / envelope_s)) + 1)
        self.lags_s = lags * envelope_s
        self.max_lag = int(lags[-1])
        self.env_c0, self.env_c1 = self.c0 // self.env_step, self.c1 // self.env_step
        if self.env_c1 - self.env_c0 <= 2 * self.max_lag:
            raise ConfigError(f"models.qeeg.lag_bins_s: lags up to {lag_bins_s[-1]} s leave too "
                              f"few products in the central {center_s} s; keep them below "
                              f"{center_s / 2} s")
        self.lag_samples = [int(lag) for lag in lags]
        self.register_buffer("upper", torch.triu(torch.ones(len(lags), len(lags), dtype=torch.bool)),
                             persistent=False)
        bins = np.stack([(self.lags_s >= lo - 1e-9) & (self.lags_s < hi - 1e-9)
                         for lo, hi in zip(lag_bins_s[:-1], lag_bins_s[1:])], axis=1).astype(np.float64)
        bins[-1, -1] = 1.0  # the last edge belongs to the last bin
        self.register_buffer("lag_bins", torch.tensor(bins.T > 0), persistent=False)  # (n_bins, n_lags)
        self.lag_bins_s = tuple(float(e) for e in lag_bins_s)

        # Regions and pairs.
        region_avg = np.zeros((len(layout.regions), self.n_signals))
        for i, (_, rows) in enumerate(layout.regions):
            region_avg[i, list(rows)] = 1.0 / len(rows)
        self.register_buffer("region_avg", torch.tensor(region_avg, dtype=torch.float32), persistent=False)
        for name, rows in (("left", layout.left), ("right", layout.right),
                           ("region_left", layout.region_left), ("region_right", layout.region_right)):
            self.register_buffer(name, torch.tensor(rows, dtype=torch.long), persistent=False)
        sync = np.zeros((4, self.n_signals, self.n_signals))
        off_diagonal = 1.0 - np.eye(self.n_signals)
        sync[0] = off_diagonal
        sync[1][np.ix_(layout.left, layout.left)] = 1.0
        sync[2][np.ix_(layout.right, layout.right)] = 1.0
        sync[1:3] *= off_diagonal
        sync[3][list(layout.left), list(layout.right)] = 1.0
        sync /= sync.sum(axis=(1, 2), keepdims=True)
        self.register_buffer("sync_weights", torch.tensor(sync, dtype=torch.float32), persistent=False)
        unknown = [g for g in features if g not in FEATURE_GROUPS]
        if unknown or not features:
            raise ConfigError(f"models.qeeg.features: {list(features)} must be a non-empty list "
                              f"of {', '.join(FEATURE_GROUPS)}")
        every = [f"{span}:{name}" for span in ("full", "center") for name in self._span_names()]
        keep = [i for i, name in enumerate(every) if name.split(":")[1] in set(features)]
        self.register_buffer("keep", torch.tensor(keep, dtype=torch.long), persistent=False)
        self.names = [every[i] for i in keep]
        self.n_features = len(self.names)

    def _check(self, segment_s, center_s, envelope_s, lag_bins_s) -> None:
        nyquist = self.sfreq / 2
        if not self.bands:
            raise ConfigError("models.qeeg.bands_hz: needs at least one band")
        for lo, hi in self.bands:
            if not 0 <= lo < (hi if hi is not None else nyquist) <= nyquist:
                raise ConfigError(f"models.qeeg.bands_hz: band [{lo}, {hi}] Hz must satisfy "
                                  f"0 <= low < high <= {nyquist} (high null = to Nyquist)")
        if not 0 < segment_s * self.sfreq <= self.n_times:
            raise ConfigError(f"models.qeeg.segment_s: {segment_s} must be > 0 and fit the window")
        if not 0 < center_s * self.sfreq <= self.n_times:
            raise ConfigError(f"models.qeeg.center_s: {center_s} must be > 0 and fit the window")
        if envelope_s * self.sfreq < 1:
            raise ConfigError(f"models.qeeg.envelope_s: {envelope_s} is shorter than one sample")
        edges = [float(e) for e in lag_bins_s]
        if len(edges) < 2 or any(b <= a for a, b in zip(edges[:-1], edges[1:])) or edges[0] < envelope_s:
            raise ConfigError(f"models.qeeg.lag_bins_s: {list(lag_bins_s)} must be >= 2 increasing "
                              f"edges starting at >= envelope_s ({envelope_s} s)")
        if any(hi - lo < envelope_s - 1e-9 for lo, hi in zip(edges[:-1], edges[1:])):
            raise ConfigError(f"models.qeeg.lag_bins_s: every bin of {edges} must span at least "
                              f"envelope_s ({envelope_s} s)")

    # ---------------------------------------------------------------- names
    def _span_names(self) -> list[str]:
        sig = list(self.layout.names)
        reg = [r for r, _ in self.layout.regions]
        both = sig + reg
        bands = [_band_name(lo, hi) for lo, hi in self.bands]
        pairs = [f"{self.layout.names[a]}/{self.layout.names[b]}"
                 for a, b in zip(self.layout.left, self.layout.right)]
        rpairs = [f"{reg[a]}/{reg[b]}" for a, b in zip(self.layout.region_left, self.layout.region_right)]
        bins = [f"{a:g}-{b:g}s" for a, b in zip(self.lag_bins_s[:-1], self.lag_bins_s[1:])]
        names = [f"logpow:{s}:{b}" for s in both for b in bands]
        names += [f"logtotal:{s}" for s in both]
        names += [f"relpow:{s}:{b}" for s in both for b in bands]
        names += [f"asym:{p}:{b}" for p in pairs + rpairs for b in bands]
        names += [f"absasym:{p}:{b}" for p in pairs + rpairs for b in bands]
        names += [f"spread:{kind}:{b}" for kind in ("signals", "regions", "max") for b in bands]
        for kind in ("linelength", "spikerate", "kurtosis", "periodicity"):
            names += [f"{kind}:{s}" for s in both]
        names += [f"envacf:{r}:{b}" for r in reg for b in bins]
        names += [f"sync:{kind}" for kind in ("all", "left", "right", "homologous")]
        return names

    # ---------------------------------------------------------------- building blocks
    def segment_powers(self, x: torch.Tensor) -> torch.Tensor:
        """Band powers of every Welch segment: ``x (B, C, T)`` -> ``(B, C, n_segments, n_bands)`` uV^2."""
        batch, chans = x.shape[0], x.shape[1]
        out = []
        for start, count in ((0, self.n_even), (self.half, self.n_odd)):
            segments = x[..., start:start + count * self.seg].reshape(batch, chans, count, self.seg)
            spectrum = segments @ self.dft  # (B, C, S, 2K)
            real, imag = spectrum[..., :self.n_bins], spectrum[..., self.n_bins:]
            out.append((real * real + imag * imag) @ self.band_weights)  # (B, C, S, n_bands)
        return torch.cat(out, dim=2)

    def envelope(self, x: torch.Tensor) -> torch.Tensor:
        """Mean absolute amplitude over ``envelope_s`` steps: ``(B, C, T)`` -> ``(B, C, T // step)`` uV."""
        return block_mean(x.abs(), self.env_step)

    def envelope_acf(self, env: torch.Tensor) -> torch.Tensor:
        """Autocorrelation of ``env (B, C, L)`` at :attr:`lags_s`: ``(B, C, n_lags)``.

        Every lag averages the same ``L - max_lag`` products, divided by the envelope's
        variance over the whole stretch (0 for a flat envelope).
        """
        centred = env - env.mean(dim=-1, keepdim=True)
        var = centred.square().mean(dim=-1, keepdim=True)
        n = centred.shape[-1] - self.max_lag
        head = centred[..., :n]
        products = torch.stack([(head * centred[..., lag:lag + n]).mean(dim=-1)
                                for lag in self.lag_samples], dim=-1)  # (B, C, n_lags)
        return products / (var + _EPS)

    def _prominence(self, acf: torch.Tensor) -> torch.Tensor:
        """Largest ``acf[j] - acf[i]`` with ``i <= j``: ``(..., n_lags)`` -> ``(...)``."""
        rise = acf[..., None, :] - acf[..., :, None]  # [i, j] = acf[j] - acf[i]
        return rise.masked_fill(~self.upper, -1e4).amax(dim=(-1, -2))

    def _lag_bin_max(self, acf: torch.Tensor) -> torch.Tensor:
        """Highest autocorrelation in each lag bin: ``(B, R, n_lags)`` -> ``(B, R, n_bins)``."""
        return acf[:, :, None, :].masked_fill(~self.lag_bins, -1e4).amax(dim=-1)

    def _span(self, x: torch.Tensor, band_power: torch.Tensor, env: torch.Tensor) -> torch.Tensor:
        """Features of one stretch: ``x (B, C, t)``, ``band_power (B, C, n_bands)``, ``env (B, C, e)``."""
        floor = self.power_floor
        region_power = torch.einsum("rc,bcn->brn", self.region_avg, band_power)
        power = torch.cat([band_power, region_power], dim=1)  # (B, C + R, n_bands)
        logpow = torch.log(power + floor)
        total = power.sum(dim=-1)
        logtotal = torch.log(total + floor)
        relpow = logpow - torch.log(total + floor * len(self.bands))[..., None]
        sig_logpow, reg_logpow = logpow[:, :self.n_signals], logpow[:, self.n_signals:]
        asym = torch.cat([sig_logpow[:, self.left] - sig_logpow[:, self.right],
                          reg_logpow[:, self.region_left] - reg_logpow[:, self.region_right]], dim=1)
        sig_mean = sig_logpow.mean(dim=1)
        spread = torch.cat([
            (sig_logpow - sig_mean[:, None]).square().mean(dim=1).sqrt(),
            (reg_logpow - reg_logpow.mean(dim=1, keepdim=True)).square().mean(dim=1).sqrt(),
            sig_logpow.amax(dim=1) - sig_mean], dim=1)

        slope = (x[..., 1:] - x[..., :-1]) * self.sfreq  # uV/s
        abs_slope = slope.abs()
        mean_slope = abs_slope.mean(dim=-1)
        above = (abs_slope > self.spike_threshold * mean_slope[..., None]).to(x.dtype)
        # Blocks of SPIKE_BLOCK_S: the rising and falling flanks of one spike are one event.
        above = F.max_pool1d(above, self.spike_block, self.spike_block)
        onsets = above[..., :1].sum(dim=-1) + F.relu(above[..., 1:] - above[..., :-1]).sum(dim=-1)
        spike_rate = onsets / (x.shape[-1] / self.sfreq)
        centred = x - x.mean(dim=-1, keepdim=True)
        squared = centred.square()
        m2 = squared.mean(dim=-1)
        m4 = squared.square().mean(dim=-1)
        kurtosis = torch.log1p(m4 / (m2.square() + floor ** 2))
        acf = self.envelope_acf(env)  # (B, C, n_lags)
        region_acf = torch.einsum("rc,bcl->brl", self.region_avg, acf)
        periodicity = torch.cat([self._prominence(acf), self._prominence(region_acf)], dim=1)
        per_signal = [torch.log(mean_slope + floor), spike_rate, kurtosis]
        per_signal = [torch.cat([v, v @ self.region_avg.T], dim=1) for v in per_signal]

        z = (env - env.mean(dim=-1, keepdim=True))
        z = z / (z.square().mean(dim=-1, keepdim=True).sqrt() + _EPS)
        corr = z @ z.transpose(1, 2) / z.shape[-1]  # (B, C, C)
        sync = torch.einsum("kcd,bcd->bk", self.sync_weights, corr)
        batch = x.shape[0]
        return torch.cat([logpow.reshape(batch, -1), logtotal, relpow.reshape(batch, -1),
                          asym.reshape(batch, -1), asym.abs().reshape(batch, -1), spread,
                          *per_signal, periodicity, self._lag_bin_max(region_acf).reshape(batch, -1),
                          sync], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, n_signals, n_times)`` in uV -> features ``(B, n_features)`` (see :attr:`names`)."""
        if x.shape[1] != self.n_signals or x.shape[-1] != self.n_times:
            raise ValueError(f"qeeg: expected input (B, {self.n_signals}, {self.n_times}), "
                             f"got {tuple(x.shape)}")
        seg_power = self.segment_powers(x)
        env = self.envelope(x)
        full = self._span(x, seg_power.mean(dim=2), env)
        center = self._span(x[..., self.c0:self.c1],
                            seg_power.index_select(2, self.center_segments).mean(dim=2),
                            env[..., self.env_c0:self.env_c1])
        return torch.cat([full, center], dim=1).index_select(1, self.keep)


class RunningStandardizer(nn.Module):
    """Standardise features by their running mean and variance over all training batches.

    In training mode every batch first updates the running statistics (pooled over all
    batches so far, equal weights per window) and is then standardised with them; in eval mode
    the stored statistics are used, so after one epoch this is a standard scaler fitted on
    the training windows (their augmented versions). The output is clipped to +-``clip_std``
    so an artifact window cannot dominate a linear head.

    Parameters
    ----------
    n_features : int
    clip_std : float, default 5.0
    eps : float, default 1e-4
        Added to the variance (features are mostly in log units).
    """

    def __init__(self, n_features: int, *, clip_std: float = 5.0, eps: float = 1e-4):
        super().__init__()
        self.clip_std, self.eps = float(clip_std), float(eps)
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("var", torch.ones(n_features))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Pool the statistics of the batch ``x (B, n_features)`` into the running ones."""
        n_b = float(x.shape[0])
        n_a = float(self.count)
        mean_b = x.mean(dim=0)
        var_b = (x - mean_b).square().mean(dim=0)
        n = n_a + n_b
        delta = mean_b - self.mean
        self.var.copy_((self.var * n_a + var_b * n_b + delta.square() * (n_a * n_b / n)) / n)
        self.mean.add_(delta * (n_b / n))
        self.count.fill_(n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.update(x.detach().float())
        z = (x - self.mean) / torch.sqrt(self.var + self.eps)
        return z.clamp(-self.clip_std, self.clip_std)


class QEEG(nn.Module):
    """Quantitative-EEG features, standardised, and a linear or small MLP head.

    Parameters
    ----------
    n_outputs : int, default 6
        Number of classes.
    n_chans : int, optional
        Signals of the first input (checked against it when given; braindecode-style).
    n_times : int, default 10000
        Samples per window (50 s at 200 Hz).
    sfreq : float, default 200
        Sampling rate in Hz.
    inputs : sequence of {"chains", "referential", "average"}, default ("chains",)
        Which montages get features: the bipolar chains, the referential channels as they
        are, and their average reference (both from the store field ``referential``).
    decimate : int, default 2
        The signals are averaged over this many samples first (features at ``sfreq /
        decimate``; the stored signals are low-passed at 20 Hz by default). Use 1 when the
        pass band reaches above ``sfreq / (2 * decimate)`` and a band needs it.
    bands_hz, segment_s, center_s, envelope_s, lag_bins_s, spike_threshold, power_floor_uv2, features
        Feature settings, see :class:`QEEGFeatures`.
    hidden : int, default 0
        0: a linear head (multinomial logistic regression); > 0: one hidden GELU layer.
    dropout : float, default 0.2
        Dropout on the standardised features (and the hidden layer).
    clip_std : float, default 5.0
        Standardised features are clipped to +-clip_std.
    """

    def __init__(self, n_outputs: int = contract.N_CLASSES, n_chans: int | None = None,
                 n_times: int = contract.WINDOW_SAMPLES, sfreq: float = contract.SAMPLING_RATE_HZ,
                 *, inputs: Sequence[str] = ("chains",), decimate: int = 2,
                 bands_hz: Sequence[Sequence[float | None]] = DEFAULT_BANDS_HZ,
                 segment_s: float = 2.0, center_s: float = float(contract.CENTER_S),
                 envelope_s: float = 0.1, lag_bins_s: Sequence[float] = DEFAULT_LAG_BINS_S,
                 spike_threshold: float = 4.0, power_floor_uv2: float = 1e-2,
                 features: Sequence[str] = DEFAULT_FEATURES, hidden: int = 0,
                 dropout: float = 0.2, clip_std: float = 5.0):
        super().__init__()
        inputs = tuple(inputs)
        bad = [i for i in inputs if i not in INPUT_FIELD]
        if not inputs or bad or len(set(inputs)) != len(inputs):
            raise ConfigError(f"models.qeeg.inputs: {list(inputs)} must be distinct values from "
                              f"{', '.join(INPUT_FIELD)}")
        if int(hidden) < 0 or not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"models.qeeg: hidden {hidden} must be >= 0 and dropout {dropout} "
                              "in [0, 1)")
        self.inputs = inputs
        self.input_fields = tuple(dict.fromkeys(INPUT_FIELD[i] for i in inputs))
        layouts = {"chains": chain_layout(), "referential": referential_layout(),
                   "average": referential_layout()}
        first = layouts[inputs[0]]
        if n_chans is not None and int(n_chans) != len(first.names):
            raise ConfigError(f"models.qeeg.n_chans: {n_chans} but input {inputs[0]!r} has "
                              f"{len(first.names)} signals")
        if int(decimate) < 1 or int(n_times) % int(decimate):
            raise ConfigError(f"models.qeeg.decimate: {decimate} must be >= 1 and divide "
                              f"n_times ({n_times})")
        self.n_outputs, self.n_times, self.sfreq = n_outputs, int(n_times), float(sfreq)
        self.decimate = int(decimate)
        options = dict(n_times=self.n_times // self.decimate, sfreq=self.sfreq / self.decimate,
                       bands_hz=bands_hz, segment_s=segment_s,
                       center_s=center_s, envelope_s=envelope_s, lag_bins_s=lag_bins_s,
                       spike_threshold=spike_threshold, power_floor_uv2=power_floor_uv2,
                       features=tuple(features))
        self.extractors = nn.ModuleDict({i: QEEGFeatures(layouts[i], **options) for i in inputs})
        self.feature_names = [f"{i}:{n}" for i in inputs for n in self.extractors[i].names]
        self.feature_dim = len(self.feature_names)
        self.standardize = RunningStandardizer(self.feature_dim, clip_std=clip_std)
        self.head_dropout = nn.Dropout(dropout)
        if int(hidden) > 0:
            self.head = nn.Sequential(nn.Linear(self.feature_dim, int(hidden)), nn.GELU(),
                                      nn.Dropout(dropout), nn.Linear(int(hidden), n_outputs))
        else:
            self.head = nn.Linear(self.feature_dim, n_outputs)

    def qeeg_features(self, *fields: torch.Tensor) -> torch.Tensor:
        """The raw (unstandardised) features ``(B, feature_dim)``, in :attr:`feature_names` order.

        Always computed in float32, also under autocast.
        """
        if len(fields) != len(self.input_fields):
            raise ValueError(f"qeeg: expected inputs {self.input_fields}, got {len(fields)} tensors")
        by_field = dict(zip(self.input_fields, fields))
        out = []
        with torch.autocast(device_type=fields[0].device.type, enabled=False):
            for name, extractor in self.extractors.items():
                x = by_field[INPUT_FIELD[name]].float()
                if name == "average":
                    x = x - x.mean(dim=1, keepdim=True)
                x = block_mean(x, self.decimate)
                out.append(extractor(x))
        return torch.cat(out, dim=1)

    def forward_features(self, *fields: torch.Tensor) -> torch.Tensor:
        """Input fields (``input_fields`` order, uV) -> standardised features ``(B, feature_dim)``."""
        return self.standardize(self.qeeg_features(*fields))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Standardised features ``(B, feature_dim)`` -> logits ``(B, n_outputs)``."""
        return self.head(self.head_dropout(features))

    def forward(self, *fields: torch.Tensor) -> torch.Tensor:
        """e.g. ``chains (B, 18, 10000)`` in uV -> logits ``(B, 6)``."""
        return self.forward_head(self.forward_features(*fields))


@register_model
def qeeg(**kwargs) -> QEEG:
    """Factory of :class:`QEEG` (see its parameters)."""
    return QEEG(**kwargs)


qeeg.__signature__ = inspect.signature(QEEG)  # lets create_model check kwargs
