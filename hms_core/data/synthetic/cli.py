"""``hms synth``: write a synthetic data set and print a summary."""
from __future__ import annotations

import os

from hms_core.data.synthetic.answer_key import best_achievable_kl
from hms_core.data.synthetic.writer import generate_dataset


def main(out: str | os.PathLike, patients: int, seed: int = 0, *, preset: str | None = None,
         fraction: float = 1.0, metadata_only: bool = False) -> dict:
    """``hms synth OUT [--patients N | --preset full [--fraction F] [--metadata-only]] --seed S``.

    Without ``preset``, ``patients`` patients of the small default shape; with
    ``preset="full"``, the real HMS counts (or a patient-stratified ``fraction``), see
    :func:`~hms_core.data.synthetic.preset.generate_preset`.
    """
    if preset is None:
        summary = generate_dataset(out, n_patients=patients, seed=seed)
    else:
        from hms_core.data.synthetic.preset import generate_preset

        summary = generate_preset(out, preset=preset, fraction=fraction, seed=seed, metadata_only=metadata_only)
    print(f"wrote {summary['out_dir']}: {summary['n_patients']} patients, {summary['n_recordings']} EEG "
          f"recordings, {summary['n_spectrograms']} spectrograms, {summary['n_rows']} labelled rows, "
          f"{summary['n_test']} test recordings in {summary['seconds']:.1f} s"
          + (" (metadata only: no parquet files)" if summary.get("metadata_only") else ""))
    print("expert consensus: " + ", ".join(f"{c} {n}" for c, n in summary["class_counts"].items()))
    line = (f"votes per row {summary['votes_min']}-{summary['votes_max']}, "
            f"{summary['fraction_below_10_votes']:.0%} below 10")
    if not summary.get("metadata_only"):
        line += f"; best achievable KL {best_achievable_kl(out):.3f}"
    print(line)
    return summary
