"""The ``full`` preset: a synthetic data set with the real HMS counts and shape, planned lazily.

The real training set has 1,950 patients, 11,138 spectrograms (sessions), 17,089 EEG
files and 106,800 labelled rows (see ``hms-format.md``). :func:`full_layout` splits these
totals down the hierarchy patient -> session -> EEG file -> sub-window with exact sums:
each unit gets one child plus a multinomial share of the rest, with log-normal weights, so
most EEG files have a few rows and a long tail has hundreds of overlapping sub-windows.
:func:`sample_patients` picks a patient-stratified fraction (systematic sampling over the
patients sorted by their row count, so the tail is kept in proportion), and
:func:`iter_sessions` yields the chosen patients' sessions one at a time; only the
integer layout (about 30,000 counts) is held in memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from hms_core.contract import N_CLASSES, SAMPLING_RATE_HZ
from hms_core.data.synthetic.plan import EegPlan, Ids, SessionPlan, draw_offsets, draw_vote_count
from hms_core.errors import ConfigError

PRESETS = ("full",)


@dataclass(frozen=True)
class PresetCounts:
    """Totals of a preset (the real HMS training set for ``full``)."""

    patients: int = 1_950
    spectrograms: int = 11_138
    recordings: int = 17_089
    rows: int = 106_800


FULL = PresetCounts()
# Spread (sigma of the log-normal weights) of the extra children per unit: sessions per
# patient, EEG files per session, rows per EEG file (the long tail).
_SIGMA = {"sessions": 1.0, "eegs": 1.0, "rows": 1.5}
# Share of recordings with fewer than 10 votes: about half the rows, as in the real set.
_P_BELOW_10 = 0.5


@dataclass(frozen=True)
class Layout:
    """Integer layout of a preset: children per unit, in patient order.

    Attributes
    ----------
    sessions_per_patient : (patients,) int64
    eegs_per_session : (spectrograms,) int64, sessions of patient 0 first
    rows_per_eeg : (recordings,) int64, EEG files of session 0 first
    """

    sessions_per_patient: np.ndarray
    eegs_per_session: np.ndarray
    rows_per_eeg: np.ndarray

    def rows_per_patient(self) -> np.ndarray:
        """Labelled rows of each patient ``(patients,)``."""
        rows_per_session = np.add.reduceat(self.rows_per_eeg, _starts(self.eegs_per_session))
        return np.add.reduceat(rows_per_session, _starts(self.sessions_per_patient))


def _starts(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def allocate(rng: np.random.Generator, total: int, n: int, sigma: float) -> np.ndarray:
    """``n`` counts >= 1 summing to ``total``: one each plus a log-normal-weighted multinomial share."""
    if not 1 <= n <= total:
        raise ConfigError(f"cannot split {total} into {n} parts of at least 1")
    weights = rng.lognormal(0.0, sigma, n)
    return 1 + rng.multinomial(total - n, weights / weights.sum()).astype(np.int64)


def full_layout(seed: int, counts: PresetCounts = FULL) -> Layout:
    """The full-size layout with exactly ``counts`` (deterministic in ``seed``)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 10]))
    return Layout(sessions_per_patient=allocate(rng, counts.spectrograms, counts.patients, _SIGMA["sessions"]),
                  eegs_per_session=allocate(rng, counts.recordings, counts.spectrograms, _SIGMA["eegs"]),
                  rows_per_eeg=allocate(rng, counts.rows, counts.recordings, _SIGMA["rows"]))


def sample_patients(layout: Layout, fraction: float, seed: int) -> np.ndarray:
    """Indices (sorted) of a patient-stratified ``fraction`` of the layout's patients.

    The patients are sorted by their row count and every ``1/fraction``-th is taken from a
    random start, so small and large patients are kept in proportion. At least one patient.
    """
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ConfigError(f"fraction: {fraction!r} is not in (0, 1]")
    n = layout.sessions_per_patient.size
    n_keep = max(1, int(round(fraction * n)))
    order = np.argsort(layout.rows_per_patient(), kind="stable")
    start = np.random.default_rng(np.random.SeedSequence([seed, 11])).random()
    picks = np.minimum(((np.arange(n_keep) + start) * n / n_keep).astype(np.int64), n - 1)
    return np.sort(order[picks])


def iter_sessions(layout: Layout, patients: np.ndarray, rng: np.random.Generator,
                  ids: Ids) -> Iterator[SessionPlan]:
    """Yield the sessions of ``patients`` (layout indices, ascending) one at a time.

    Each patient has a preferred class (60% of its sessions); each EEG file gets its
    layout row count as overlapping sub-windows, a length that follows from the last
    offset, and a vote count from the contract's mix.
    """
    session_start = _starts(layout.sessions_per_patient)
    eeg_start = _starts(layout.eegs_per_session)
    for p in patients:
        patient_id = ids.draw("patient", 10_000, 65_536)
        patient_class = int(rng.integers(N_CLASSES))
        for s in range(session_start[p], session_start[p] + layout.sessions_per_patient[p]):
            main = patient_class if rng.random() < 0.6 else int(rng.integers(N_CLASSES))
            session = SessionPlan(patient_id=patient_id, main_class=main,
                                  spectrogram_id=ids.draw("spectrogram", 300_000, 2_147_483_647))
            for e in range(eeg_start[s], eeg_start[s] + layout.eegs_per_session[s]):
                offsets, length_s = draw_offsets(rng, int(layout.rows_per_eeg[e]))
                session.eegs.append(EegPlan(offsets_s=offsets,
                                            length_samples=int(round(length_s * SAMPLING_RATE_HZ)),
                                            eeg_id=ids.draw("eeg", 500_000, 4_294_967_295),
                                            n_votes=draw_vote_count(rng, _P_BELOW_10)))
            yield session


def planned_counts(layout: Layout, patients: np.ndarray) -> dict[str, int]:
    """Patients, sessions, EEG files and rows that :func:`iter_sessions` will yield."""
    sessions = np.concatenate([np.arange(a, a + k) for a, k in
                               zip(_starts(layout.sessions_per_patient)[patients],
                                   layout.sessions_per_patient[patients])])
    eeg_starts = _starts(layout.eegs_per_session)
    eegs = np.concatenate([np.arange(eeg_starts[s], eeg_starts[s] + layout.eegs_per_session[s])
                           for s in sessions])
    return {"patients": int(patients.size), "spectrograms": int(sessions.size),
            "recordings": int(eegs.size), "rows": int(layout.rows_per_eeg[eegs].sum())}


def generate_preset(out_dir, *, preset: str = "full", fraction: float = 1.0, seed: int = 0,
                    n_test: int = 4, metadata_only: bool = False, save_answer_key: bool = True,
                    nan_fraction: float = 0.35, status_path=None) -> dict:
    """Write the ``preset`` data set, or a patient-stratified ``fraction`` of it, to ``out_dir``.

    Parameters
    ----------
    out_dir : path-like
        Folder to write (replaced atomically; see :func:`~hms_core.data.synthetic.writer.generate_dataset`).
    preset : {"full"}
        ``full``: the real counts (1,950 patients, 11,138 spectrograms, 17,089 EEG files,
        106,800 rows).
    fraction : float
        Share of the patients to keep, in (0, 1]; the ratios stay those of the preset.
    seed : int
        The same seed gives byte-identical files.
    n_test : int
        Test recordings (50 s EEG + 600 s spectrogram each).
    metadata_only : bool
        Write only the CSV files (and the answer key), no parquet files.
    save_answer_key, nan_fraction, status_path
        As in :func:`~hms_core.data.synthetic.writer.generate_dataset`.

    Returns
    -------
    dict
        The writer's summary plus ``preset``, ``fraction`` and ``planned`` (the counts of
        :func:`planned_counts`).
    """
    from hms_core.config import check_option
    from hms_core.data.synthetic.writer import write_dataset

    check_option("preset", preset, PRESETS)
    layout = full_layout(seed)
    patients = sample_patients(layout, fraction, seed)
    planned = planned_counts(layout, patients)
    ids = Ids(np.random.default_rng(np.random.SeedSequence([seed, 1])))
    sessions = iter_sessions(layout, patients, np.random.default_rng(np.random.SeedSequence([seed, 0])), ids)
    summary = write_dataset(out_dir, sessions, planned["spectrograms"], ids, seed=seed, n_test=n_test,
                            nan_fraction=nan_fraction, save_answer_key=save_answer_key,
                            metadata_only=metadata_only, status_path=status_path)
    return {**summary, "preset": preset, "fraction": fraction, "planned": planned}
