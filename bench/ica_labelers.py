"""The two ICA labelers (rules, ICLabel) on synthetic recordings with known artifacts.

Each seed synthesises one recording (blinks, an EKG leak and muscle bursts added to a clean
signal whose class mix is fixed), fits the cleaning of ``hms_core.signal.ica`` once per
labeler, and, the cleaning being linear, applies it separately to each injected artifact and
to the clean signal (as tests/signal/test_ica.py does):

- ``blink``, ``ekg``, ``muscle``: the artifact's power before / after (x times smaller) in
  the recording's own reference (what the referential montage shows); ``*_avg``: the same
  after re-referencing to the average (the average montage; the bipolar chains, differences
  of channels, are blind to the common mode too). ICLabel's decomposition is average-
  referenced, so it cannot remove an artifact's mean over the channels;
- ``corr``: mean per-channel correlation of the clean signal after cleaning with itself
  before; ``corr_band`` the same after the front end's 0.5-20 Hz band-pass;
- ``cpu_s``: CPU seconds of the fit (EKG regression, ICA, labelling) per recording;
  ``label_cpu_s``: of that, ICLabel's features and network.

Prints one JSON line (per-seed rows and medians per labeler) and a table.

Usage::

    python bench/ica_labelers.py                      # seeds 0-5, 90 s each
    python bench/ica_labelers.py --seeds 0 1 --seconds 300 --threshold 0.5
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import convolve1d

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hms_core.data.synthetic import synthesize_recording  # noqa: E402
from hms_core.signal import iclabel  # noqa: E402
from hms_core.signal.filters import FilterConfig, design_kernel  # noqa: E402
from hms_core.signal.ica import IcaConfig, fit_artifact_model  # noqa: E402

N_EEG = 19
CLASS_PROBS = np.array([0.3, 0.1, 0.1, 0.2, 0.1, 0.2])
METRICS = ("blink", "ekg", "muscle", "blink_avg", "ekg_avg", "muscle_avg", "corr", "corr_band", "n_removed",
           "cpu_s", "label_cpu_s")


def measure(seed: int, n_seconds: int, cfg: IcaConfig) -> dict:
    """One recording cleaned with ``cfg``: the figures of the module docstring, and what was removed."""
    rec = synthesize_recording(n_seconds * 200, CLASS_PROBS, np.random.default_rng(seed),
                               artifacts=("blink", "ekg", "muscle"), nan_stretches=False, dc_offset=False)
    eeg = rec.raw_uv[:, :N_EEG].astype(np.float64)
    eeg -= np.median(eeg, axis=0)
    ekg = rec.raw_uv[:, N_EEG].astype(np.float64)
    label_s = []
    labeller = iclabel.label_components

    def timed(*args):
        start = time.process_time()
        try:
            return labeller(*args)
        finally:
            label_s.append(time.process_time() - start)

    iclabel.label_components = timed
    try:
        start = time.process_time()
        model, info = fit_artifact_model(eeg, ekg_uv=ekg, valid=np.ones(len(eeg), bool), cfg=cfg)
        cpu_s = time.process_time() - start
    finally:
        iclabel.label_components = labeller
    centred = lambda a: a - a.mean(axis=0)  # noqa: E731
    row = {"seed": seed, "status": info["status"], "n_removed": len(info["removed"]),
           "removed": [r.get("class") or "+".join(r["reasons"]) for r in info["removed"]],
           "cpu_s": round(cpu_s, 3), "label_cpu_s": round(sum(label_s), 3)}
    for name, artifact in rec.artifacts_uv.items():
        part = artifact[:, :N_EEG].astype(np.float64)
        after = model.apply(part, ekg if name == "ekg" else np.zeros_like(ekg))  # the EKG term belongs to the leak
        row[name] = round(float((centred(part) ** 2).sum() / (centred(after) ** 2).sum()), 3)
        row[f"{name}_avg"] = round(float((average_power(part) / average_power(after))), 3)
    clean = rec.clean_uv[:, :N_EEG].astype(np.float64)
    kept = model.apply(clean, np.zeros_like(ekg))
    row["corr"] = round(mean_corr(clean, kept), 4)
    kernel = design_kernel(FilterConfig())
    row["corr_band"] = round(mean_corr(convolve1d(clean, kernel, axis=0), convolve1d(kept, kernel, axis=0)), 4)
    return row


def average_power(x_uv: np.ndarray) -> float:
    """Power of ``x_uv (n, 19)`` re-referenced to the channel average, each channel's mean removed."""
    x = iclabel.average_referenced(x_uv)
    return float(((x - x.mean(axis=0)) ** 2).sum())


def mean_corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([np.corrcoef(a[:, c], b[:, c])[0, 1] for c in range(a.shape[1])]))


def labeler_configs(threshold: float | None) -> dict[str, IcaConfig]:
    reject = iclabel.default_reject()
    if threshold is not None:
        reject = {name: threshold for name in reject}
    return {"rules": IcaConfig(labeler="rules"), "iclabel": IcaConfig(labeler="iclabel", reject=reject)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(6)))
    p.add_argument("--seconds", type=int, default=90, help="length of each recording (s)")
    p.add_argument("--threshold", type=float, default=None,
                   help="ICLabel: one threshold for every class of the default reject (default: its own)")
    args = p.parse_args(argv)
    configs = labeler_configs(args.threshold)
    rows = {name: [measure(seed, args.seconds, cfg) for seed in args.seeds] for name, cfg in configs.items()}
    median = {name: {m: round(statistics.median(r[m] for r in rs), 4) for m in METRICS} for name, rs in rows.items()}
    result = {"bench": "ica_labelers", "seeds": args.seeds, "seconds": args.seconds,
              "reject": configs["iclabel"].reject, "median": median, "rows": rows}
    print(json.dumps(result))
    print(f"\n| labeler | {' | '.join(METRICS)} |  (median over {len(args.seeds)} recordings of {args.seconds} s)")
    print("|---" * (len(METRICS) + 1) + "|")
    for name, values in median.items():
        print(f"| {name} | {' | '.join(str(values[m]) for m in METRICS)} |")
    return result


if __name__ == "__main__":
    main()
