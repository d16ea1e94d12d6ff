"""``hms synth``: write a synthetic data set and print a summary."""
from __future__ import annotations

import os

from hms_core.data.synthetic.answer_key import best_achievable_kl
from hms_core.data.synthetic.writer import generate_dataset


def main(out: str | os.PathLike, patients: int, seed: int = 0) -> dict:
    """``hms synth OUT --patients N --seed S``: write a synthetic data set and print a summary."""
    summary = generate_dataset(out, n_patients=patients, seed=seed)
    kl = best_achievable_kl(out)
    print(f"wrote {summary['out_dir']}: {summary['n_patients']} patients, {summary['n_recordings']} EEG "
          f"recordings, {summary['n_spectrograms']} spectrograms, {summary['n_rows']} labelled rows, "
          f"{summary['n_test']} test recordings in {summary['seconds']:.1f} s")
    print("expert consensus: " + ", ".join(f"{c} {n}" for c, n in summary["class_counts"].items()))
    print(f"votes per row {summary['votes_min']}-{summary['votes_max']}, "
          f"{summary['fraction_below_10_votes']:.0%} below 10; best achievable KL {kl:.3f}")
    return summary
