"""The window spectrograms of one recording, with each STFT frame computed once.

The labelled windows of a recording overlap (on HMS, about three windows cover each second
that is labelled at all), and :class:`~hms_core.signal.spectrogram.RegionSpectrogram`
computes every frame of every window. Most frames of two windows that start the same number
of samples modulo ``hop`` apart sit on the same recording samples, and there they are the
same numbers up to one known constant:

- a window's chains are ``M FIR(x - mean_k)``: the referential channels less their window
  mean, filtered with reflect padding at the window edges, then the bipolar montage ``M``.
  Away from the edges (``numtaps // 2`` samples) the filter sees only recording samples, so
  there the chains are ``C - d_k`` with ``C`` the same for every window of the recording and
  ``d_k = sum(kernel) * M mean_k`` a constant per chain;
- a frame of ``C - d_k`` is therefore the frame of ``C - d_j`` plus ``(d_j - d_k) S``,
  ``S`` being the windowed DFT of a constant (zero for a Hann window and bins above DC, and
  corrected exactly whatever the window), as long as no sample under the frame was clipped.

So a frame is computed by the first window that has it "clean" (its support in the window's
interior, nothing clipped under it) and copied, corrected, into every later window that has
it clean too; edge frames and clipped ones are computed by their own window. The outputs equal
the per-window computation within float32 rounding (tests/signal/test_shared_frames.py). This
needs windows cut from one cleaned recording (``ica.fit_on: recording``) and free of NaN; any
other input is computed per window.
"""
from __future__ import annotations

import numpy as np
import torch

from hms_core.contract import N_EEG_CHANNELS


class RecordingSpectrograms:
    """``(eeg_spec, eeg_mel)`` of the windows of one recording, given in chunks, in any order.

    Parameters
    ----------
    frontend : WindowFrontend
        Supplies the filter kernel, the montage, the clip level and the spectrogram.

    Notes
    -----
    Create one per recording. It keeps the clean frames it has computed (``(16, 2F)`` floats,
    about 6.4 kB per frame with the defaults: 32 kB per second of recording covered by windows)
    until it is dropped.
    """

    def __init__(self, frontend, starts: np.ndarray, n_times: int):
        spectrogram = frontend.spectrogram
        self.spectrogram = spectrogram
        self.montage = frontend.montage
        self.clip_uv = frontend.clip_uv
        kernel = frontend.fir.kernel
        self.fir_gain = float(kernel.double().sum())
        self._interior_taps = len(kernel) // 2
        self.hop, self.n_fft = spectrogram.hop, spectrogram.n_fft
        self.left = self.n_fft // 2
        # Windowed DFT of a constant 1: what a DC shift of the chain adds to each frame.
        dft = spectrogram.dft  # (2F, hop, n_blocks): W[o, c, j] = dft[o, hop j + c]
        self.dc_response = dft.sum(dim=(1, 2))  # (2F,)
        self.pool: torch.Tensor | None = None  # (16, 2F, capacity) clean frames of C, in the order computed
        self.registry: dict[int, int] = {}  # frame key (_keys) -> pool column
        self.n_pooled = 0
        self.n_computed = self.n_copied = 0
        # Only frames that another window of the recording also has are worth keeping.
        n_frames = spectrogram.n_frames_of(n_times)
        starts = np.asarray(starts, dtype=np.int64)
        keys = self._keys(starts[:, None], np.flatnonzero(self._interior(n_times, n_frames))[None, :])
        unique, counts = np.unique(keys, return_counts=True)
        self.wanted = set(unique[counts > 1].tolist())

    def _keys(self, starts: np.ndarray, frames: np.ndarray) -> np.ndarray:
        """One integer per (start modulo hop, absolute frame): equal keys are the same recording samples."""
        return (starts % self.hop) * (1 << 40) + starts // self.hop + frames

    def _append(self, block: torch.Tensor) -> int:
        """Add frames ``(16, 2F, n)`` to the pool; returns the column of the first."""
        n = block.shape[-1]
        if self.pool is None or self.n_pooled + n > self.pool.shape[-1]:
            capacity = max(2 * (self.n_pooled + n), 256)
            grown = block.new_empty((*block.shape[:2], capacity))
            if self.pool is not None:
                grown[..., :self.n_pooled] = self.pool[..., :self.n_pooled]
            self.pool = grown
        self.pool[..., self.n_pooled:self.n_pooled + n] = block
        self.n_pooled += n
        return self.n_pooled - n

    def _first_samples(self, n_frames: int) -> np.ndarray:
        """The first sample under each frame (negative: in the reflect padding)."""
        return np.arange(n_frames) * self.hop - self.left

    def _interior(self, n_times: int, n_frames: int) -> np.ndarray:
        """Frames whose whole support lies where the filter saw only the window's own samples."""
        first = self._first_samples(n_frames)
        return (first >= self._interior_taps) & (first + self.n_fft - 1 <= n_times - 1 - self._interior_taps)

    def _clipped_frames(self, chains16: torch.Tensor, n_frames: int) -> np.ndarray:
        """``(B, n_frames)`` bool: a sample of a region chain under the frame reached the clip level."""
        batch, _, n_times = chains16.shape
        out = np.zeros((batch, n_frames), dtype=bool)
        peak = chains16.abs().amax(dim=1)  # (B, T)
        hit = torch.nonzero(peak.amax(dim=1) >= self.clip_uv).flatten().tolist()
        if hit:  # most windows never reach the clip level
            clipped = (peak[hit] >= self.clip_uv).cpu().numpy()
            counts = np.concatenate([np.zeros((len(hit), 1), np.int64), np.cumsum(clipped, axis=1)], axis=1)
            first = np.clip(self._first_samples(n_frames), 0, n_times)
            stop = np.clip(self._first_samples(n_frames) + self.n_fft, 0, n_times)
            out[hit] = (counts[:, stop] - counts[:, first]) > 0
        return out

    def __call__(self, raw_uv: torch.Tensor, chains: torch.Tensor,
                 starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Spectrograms of a chunk of windows.

        Parameters
        ----------
        raw_uv : torch.Tensor
            ``(B, 20, T)`` the cleaned windows the front end was given (uV).
        chains : torch.Tensor
            ``(B, 18, T)`` the front end's clipped chains of them.
        starts : numpy.ndarray
            ``(B,)`` int, each window's first sample in the recording.

        Returns
        -------
        eeg_spec, eeg_mel : torch.Tensor
            As :meth:`RegionSpectrogram.forward` of ``chains``.
        """
        spectrogram = self.spectrogram
        mean = raw_uv[:, :N_EEG_CHANNELS].mean(dim=-1, keepdim=True)  # as WindowFrontend.signals centres
        if not bool(torch.isfinite(mean).all()):  # NaN or inf in a window: its mean is not finite
            return spectrogram(chains)
        starts = np.asarray(starts, dtype=np.int64)
        chains16 = spectrogram.region_chains(chains)
        batch, n_chains, n_times = chains16.shape
        padded, n_frames = spectrogram.padded(chains16)
        padded = padded.reshape(batch, n_chains, 1, -1)
        clean = self._interior(n_times, n_frames)[None, :] & ~self._clipped_frames(chains16, n_frames)
        shift = self.fir_gain * spectrogram.region_chains(self.montage(mean))[..., 0]  # (B, 16): d_k
        out = padded.new_empty((batch, n_chains, 2 * spectrogram.n_bins, n_frames))
        dc = self.dc_response[:, None]  # (2F, 1)
        for k in range(batch):
            frames = np.flatnonzero(clean[k])
            keys = self._keys(starts[k], frames).tolist()
            columns = np.array([self.registry.get(key, -1) for key in keys], dtype=np.int64)
            own = np.ones(n_frames, dtype=bool)
            own[frames[columns >= 0]] = False
            for first, stop in _runs(own):
                out[k, :, :, first:stop] = spectrogram.spectrum(padded[k], first, stop)
            # Frames of C (the shift-free chains) kept for the later windows; copies corrected by d_k.
            keep = np.zeros(n_frames, dtype=bool)
            keep[[j for j, key, c in zip(frames.tolist(), keys, columns.tolist()) if c < 0 and key in self.wanted]] = True
            for first, stop in _runs(keep):
                column = self._append(out[k, :, :, first:stop] + shift[k, :, None, None] * dc)
                base = int(self._keys(starts[k], np.int64(first)))
                for j in range(stop - first):
                    self.registry[base + j] = column + j
            copied = frames[columns >= 0]
            for first, stop, column in _paired_runs(copied, columns[columns >= 0]):
                out[k, :, :, first:stop] = self.pool[..., column:column + stop - first] - shift[k, :, None, None] * dc
            self.n_computed += int(own.sum())
            self.n_copied += len(copied)
        return spectrogram.from_power(spectrogram.power_of(out))


def _paired_runs(frames: np.ndarray, columns: np.ndarray) -> list[tuple[int, int, int]]:
    """``[(first frame, stop frame, first column)]`` of the stretches where both go up by one."""
    if len(frames) == 0:
        return []
    breaks = np.flatnonzero((np.diff(frames) != 1) | (np.diff(columns) != 1)) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(frames)]])
    return [(int(frames[a]), int(frames[b - 1]) + 1, int(columns[a])) for a, b in zip(starts, stops)]


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[(first, stop)]`` of the runs of True in a 1-D bool mask."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))
