"""How much brain activity ICA's artifact removal takes from Fp1/Fp2, as one JSON line.

Frontal delta matters clinically (GRDA is often frontally predominant) and it is where the eye
rule looks. Each synthetic recording (90 s, one dominant class, blinks + EKG + muscle) is
cleaned by the fitted artifact model of ``hms_core.signal.ica``; being linear, the model is
applied to the recording's artifact-free signal (the answer key) and to its blinks alone, so
``fp_delta_kept`` is the share of the *brain* 1-4 Hz power at Fp1/Fp2 that survives and
``blink_reduction`` the factor by which blink power falls. ``eye_components`` counts the
components the eye rule removed per recording.

Usage::

    python bench/ica_frontal.py                          # 4 recordings per class
    python bench/ica_frontal.py --per-class 8 --ica '{"eye_frontal_share": 0.6}'
"""
from __future__ import annotations

import argparse
import json

import numpy as np
from scipy import signal as sp_signal

from hms_core.contract import CHANNEL_INDEX, CLASSES, EEG_CHANNELS, SAMPLING_RATE_HZ
from hms_core.data.synthetic import synthesize_recording
from hms_core.signal.ica import IcaConfig, fit_artifact_model

FRONTAL = ("Fp1", "Fp2")


def band_power(x_uv: np.ndarray, channel: str, low_hz: float = 1.0, high_hz: float = 4.0) -> float:
    """Welch power (uV^2) of ``x_uv[:, channel]`` summed over ``[low_hz, high_hz)``."""
    freqs, psd = sp_signal.welch(x_uv[:, CHANNEL_INDEX[channel]], fs=SAMPLING_RATE_HZ, nperseg=4 * SAMPLING_RATE_HZ)
    return float(psd[(freqs >= low_hz) & (freqs < high_hz)].sum())


def measure_one(dominant: int, seed: int, seconds: int, ica: dict) -> dict:
    n_eeg = len(EEG_CHANNELS)
    probs = np.full(len(CLASSES), 0.02)
    probs[dominant] = 0.9
    rec = synthesize_recording(seconds * SAMPLING_RATE_HZ, probs / probs.sum(), np.random.default_rng(seed),
                               artifacts=("blink", "ekg", "muscle"), nan_stretches=False, dc_offset=False)
    eeg = rec.raw_uv[:, :n_eeg].astype(np.float64)
    eeg -= np.median(eeg, axis=0)
    ekg = rec.raw_uv[:, n_eeg].astype(np.float64)
    model, info = fit_artifact_model(eeg, ekg_uv=ekg, valid=np.ones(len(eeg), bool), cfg=IcaConfig(**ica))
    no_ekg = np.zeros_like(ekg)
    clean = rec.clean_uv[:, :n_eeg].astype(np.float64)
    kept = model.apply(clean, no_ekg)
    blink = rec.artifacts_uv["blink"][:, :n_eeg].astype(np.float64)
    blink_after = model.apply(blink, no_ekg)
    centred = lambda a: a - a.mean(axis=0)  # noqa: E731
    return {"class": CLASSES[dominant],
            "fp_delta_kept": float(np.mean([band_power(kept, c) / band_power(clean, c) for c in FRONTAL])),
            "blink_reduction": float((centred(blink) ** 2).sum() / ((centred(blink_after) ** 2).sum() + 1e-12)),
            "eye_components": sum("eye" in r["reasons"] for r in info.get("removed", []))}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=4, help="recordings per dominant class")
    parser.add_argument("--seconds", type=int, default=90, help="length of each recording (s)")
    parser.add_argument("--ica", default='{"max_fit_samples": 6000}', help="IcaConfig keys as JSON")
    args = parser.parse_args(argv)
    ica = json.loads(args.ica)
    rows = [measure_one(k, 100 * k + s, args.seconds, ica) for k in range(len(CLASSES)) for s in range(args.per_class)]
    kept = np.array([r["fp_delta_kept"] for r in rows])
    blink = np.array([r["blink_reduction"] for r in rows])
    result = {
        "recordings": len(rows), "seconds": args.seconds, "ica": ica,
        "fp_delta_kept": {"median": round(float(np.median(kept)), 3), "p10": round(float(np.percentile(kept, 10)), 3),
                          "min": round(float(kept.min()), 3)},
        "fp_delta_kept_by_class": {c: round(float(np.median([r["fp_delta_kept"] for r in rows if r["class"] == c])), 3)
                                   for c in CLASSES},
        "blink_reduction": {"median": round(float(np.median(blink)), 1), "min": round(float(blink.min()), 1)},
        "eye_components_per_recording": [r["eye_components"] for r in rows],
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
