"""bench/ica_labelers.py: what each labeler achieves on one synthetic recording (seed 0, 90 s)."""
import pytest

from bench_loader import load_bench


@pytest.mark.slow
def test_both_labelers_measured_on_the_synthetic_artifacts():
    result = load_bench("ica_labelers").main(["--seeds", "0"])
    rules, ic = result["rows"]["rules"][0], result["rows"]["iclabel"][0]
    assert result["reject"] == {"eye": 0.8, "muscle": 0.8, "heart": 0.8, "line_noise": 0.8, "channel_noise": 0.8}
    # the rules (tuned on these artifacts): blink and muscle each >= 3x smaller in both references
    assert "eye" in rules["removed"] and rules["blink"] > 10 and rules["blink_avg"] > 10
    assert rules["muscle"] > 3 and rules["muscle_avg"] > 3
    # ICLabel finds the blink component (p >= 0.8) and removes it from what the average-reference
    # and bipolar montages show; its average-referenced decomposition cannot reach the blink's
    # mean over the channels, so the referential signal keeps part of it
    assert ic["removed"] == ["eye"] and ic["blink_avg"] > 10 and ic["blink"] > 2
    assert ic["blink"] < ic["blink_avg"] / 3
    # it does not call the synthetic muscle bursts muscle: they are left as they are
    assert 0.9 < ic["muscle"] < 1.2
    # the EKG leak goes with the EKG regression, which runs before either labeler
    assert ic["ekg"] > 3 and rules["ekg"] > 3
    # taking one component instead of two or three keeps more of the clean signal
    assert ic["corr"] > 0.95 and ic["corr"] > rules["corr"]
    assert ic["label_cpu_s"] > 0 and rules["label_cpu_s"] == 0
