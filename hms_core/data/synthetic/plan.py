"""The plan of a synthetic data set: ids, sessions, EEG files, latent anchors and votes.

A session is one spectrogram; one or two EEG files are cut from it, each with
overlapping labelled sub-windows. :func:`plan_sessions` draws every session's patient,
class, ids, sub-window offsets and vote count up front from its own random streams; the
rest (timeline, latent anchors, votes) is drawn per session from :func:`session_rng`,
interleaved with the session's signal.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from hms_core.contract import (
    CENTER_SAMPLES,
    CENTER_START_SAMPLE,
    CLASSES,
    N_CLASSES,
    SAMPLING_RATE_HZ,
    SPEC_STEP_S,
    SPEC_WINDOW_S,
    WINDOW_S,
)

FS = SAMPLING_RATE_HZ
MAX_VOTES = 28
# The Kaggle window centre sits this far into a session after the EEG window start (s).
SPEC_LEAD_S = SPEC_WINDOW_S / 2 - WINDOW_S / 2  # 275 s


class Ids:
    """Unique random ids drawn like the real ones (large ints), deterministic from the rng."""

    def __init__(self, rng: np.random.Generator):
        self._rng = rng
        self._used: dict[str, set[int]] = {}

    def draw(self, kind: str, low: int, high: int) -> int:
        """A ``kind`` id in ``[low, high)`` not drawn before for that kind."""
        used = self._used.setdefault(kind, set())
        while True:
            value = int(self._rng.integers(low, high))
            if value not in used:
                used.add(value)
                return value


@dataclass
class EegPlan:
    """One EEG file: its labelled sub-window offsets (s from the file start) and length."""

    offsets_s: np.ndarray
    length_samples: int
    start_s: float = 0.0  # position in the session
    eeg_id: int = 0
    n_votes: int = 1


@dataclass
class SessionPlan:
    """One session (one spectrogram) of a patient, with its EEG files in time order."""

    patient_id: int
    main_class: int
    eegs: list[EegPlan] = field(default_factory=list)
    spectrogram_id: int = 0


def draw_vote_count(rng: np.random.Generator, p_below_10: float = 0.6) -> int:
    """Total votes of a recording: below 10 (mostly 3) with probability ``p_below_10``, else 10..28."""
    if rng.random() < p_below_10:
        return int(rng.choice(np.arange(1, 10), p=[.12, .12, .4, .08, .08, .06, .05, .05, .04]))
    return int(rng.integers(10, MAX_VOTES + 1))


def draw_offsets(rng: np.random.Generator, n_sub: int) -> tuple[np.ndarray, float]:
    """Offsets (s, ``(n_sub,)``) of overlapping sub-windows and the file length (s) they need.

    Steps of 2-20 s (whole seconds, 15% with an extra half second); the file ends 0-2 s
    after the last window.
    """
    steps = rng.integers(1, 11, n_sub - 1) * 2.0 + (rng.random(n_sub - 1) < 0.15) * 0.5
    offsets = np.concatenate([[0.0], np.cumsum(steps)])
    return offsets, float(offsets[-1] + WINDOW_S + float(rng.integers(0, 3)))


def plan_sessions(rng: np.random.Generator, ids: Ids, *, n_patients: int,
                  recordings_per_patient: tuple[int, int], sub_windows: tuple[int, int],
                  two_eeg_fraction: float) -> list[SessionPlan]:
    """Sessions of ``n_patients`` patients; each patient has a preferred class (60% of sessions)."""
    sessions = []
    for _ in range(n_patients):
        patient_id = ids.draw("patient", 10_000, 65_536)
        patient_class = int(rng.integers(N_CLASSES))
        remaining = int(rng.integers(recordings_per_patient[0], recordings_per_patient[1] + 1))
        while remaining > 0:
            n_eegs = 2 if remaining >= 2 and rng.random() < two_eeg_fraction else 1
            remaining -= n_eegs
            main = patient_class if rng.random() < 0.6 else int(rng.integers(N_CLASSES))
            session = SessionPlan(patient_id=patient_id, main_class=main,
                                  spectrogram_id=ids.draw("spectrogram", 300_000, 2_147_483_647))
            for _ in range(n_eegs):
                n_sub = int(rng.integers(sub_windows[0], sub_windows[1] + 1))
                offsets, length_s = draw_offsets(rng, n_sub)
                session.eegs.append(EegPlan(offsets_s=offsets, length_samples=int(round(length_s * FS)),
                                            eeg_id=ids.draw("eeg", 500_000, 4_294_967_295),
                                            n_votes=draw_vote_count(rng)))
            sessions.append(session)
    return sessions


def session_anchors(rng: np.random.Generator, main_class: int,
                    duration_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Latent class vectors at anchors every ~40 s; the dominant class sometimes switches.

    Returns ``(probs (k, 6), times_s (k,))``, the ``class_probs`` and ``anchor_times_s`` of
    :func:`~hms_core.data.synthetic.signals.synthesize_recording`.
    """
    times = np.arange(0, duration_s + 40, 40.0)
    times[1:-1] += rng.uniform(-10, 10, max(times.size - 2, 0))
    times[-1] = max(times[-1], duration_s)
    probs, dominant = [], main_class
    for _ in times:
        if rng.random() < 0.2:
            dominant = int(rng.integers(N_CLASSES))
        alpha = np.full(N_CLASSES, 0.35)
        if rng.random() < 0.25:  # a mixed window: two classes share the weight
            second = int(rng.integers(N_CLASSES))
            alpha[dominant] += 4.0
            alpha[second] += 3.0
        else:
            alpha[dominant] += rng.uniform(5.0, 12.0)
        probs.append(rng.dirichlet(alpha))
    return np.array(probs), times


def window_latent(weights: np.ndarray, start_sample: int) -> np.ndarray:
    """Mean class weights ``(6,)`` over the central 10 s of the window at ``start_sample``."""
    centre = slice(start_sample + CENTER_START_SAMPLE, start_sample + CENTER_START_SAMPLE + CENTER_SAMPLES)
    latent = weights[centre].astype(np.float64).mean(axis=0)
    return latent / latent.sum()


def anchor_latent(probs: np.ndarray, times_s: np.ndarray, start_sample: int) -> np.ndarray:
    """:func:`window_latent` computed from the anchors alone (no signal), for metadata-only sets.

    ``probs (k, 6)`` and ``times_s (k,)`` from :func:`session_anchors`; the class weights are
    interpolated linearly (as in the signal) at the samples of the window's central 10 s.
    """
    t = (start_sample + CENTER_START_SAMPLE + np.arange(CENTER_SAMPLES)) / FS  # (2000,) s
    right = np.clip(np.searchsorted(times_s, t, side="right"), 1, times_s.size - 1)
    frac = np.clip((t - times_s[right - 1]) / (times_s[right] - times_s[right - 1]), 0.0, 1.0)
    # the mean of the interpolated weights: each anchor's share of the 2000 samples
    share = np.bincount(right - 1, 1.0 - frac, times_s.size) + np.bincount(right, frac, times_s.size)
    latent = share @ probs / CENTER_SAMPLES
    return latent / latent.sum()


def draw_votes(rng: np.random.Generator, latent: np.ndarray, n_votes: int) -> tuple[np.ndarray, str]:
    """Multinomial votes ``(6,)`` from ``latent`` and the consensus (ties: larger latent wins)."""
    votes = rng.multinomial(n_votes, latent)
    tied = np.flatnonzero(votes == votes.max())
    winner = tied[np.argmax(latent[tied])]
    return votes, CLASSES[winner]


def session_rng(seed: int, kind: int, index: int) -> np.random.Generator:
    """The random stream of one session (``kind`` 2: training, 3: test recording)."""
    return np.random.default_rng(np.random.SeedSequence([seed, kind, index]))


def lay_out_session(session: SessionPlan, rng: np.random.Generator) -> int:
    """Place the EEG files in the session timeline; return the session length in samples."""
    cursor = SPEC_LEAD_S + float(rng.integers(0, 20))
    for eeg in session.eegs:
        eeg.start_s = cursor
        cursor += eeg.length_samples / FS + float(rng.integers(4, 60))
    end_s = session.eegs[-1].start_s + session.eegs[-1].length_samples / FS + SPEC_LEAD_S
    end_s += float(rng.integers(0, 20))
    rows = max(math.ceil(end_s / SPEC_STEP_S), SPEC_WINDOW_S // SPEC_STEP_S)
    return rows * SPEC_STEP_S * FS
