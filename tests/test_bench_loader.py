"""bench/loader.py: per-worker loading rates of the full config's models from real (tiny) stores."""
import math

import pytest

from bench_loader import load_bench


def test_loader_bench_measures_read_and_model_ready_rates(capsys):
    loader = load_bench("loader")
    result = loader.main(["--models", "resnet1d_gru", "--batches", "2", "--patients", "2", "--target", "600"])
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and '"bench": "loader"' in out[0]
    assert result["synthetic"] and result["stores"] == 2 and result["n_windows"] > 0
    row = result["models"]["resnet1d_gru"]
    assert row["ready_shape"] == [row["batch_size"], 37, 10000]  # chains + average reference
    for way in ("read", "ready"):
        rate = row[f"{way}_samples_per_s_per_worker"]
        assert rate > 0 and row[f"{way}_samples_per_cpu_s_per_worker"] > 0
        assert row[f"workers_for_target_{way}"] == math.ceil(600 / rate)
        assert row[f"worker_private_mb_{way}"] > 0
        assert row[f"worker_peak_rss_mb_{way}"] >= row[f"worker_private_mb_{way}"]
    # float32 model input and targets handed over; float16 compressed on disk
    assert row["handed_bytes_per_window_ready"] == (37 * 10000 + 6) * 4
    assert 0 < row["stored_bytes_per_window"] < 37 * 10000 * 2


@pytest.mark.slow
def test_loader_bench_efficientnet_worker_hands_over_the_grey_image(capsys):
    loader = load_bench("loader")
    row = loader.main(["--models", "efficientnet", "--batches", "1", "--patients", "2"])["models"]["efficientnet"]
    size = row["image_size"]
    width = 3 * (size // 3)
    assert row["ready_shape"] == [row["batch_size"], 3, size, width]  # with the device's position channels
    assert row["handed_bytes_per_window_ready"] == (size * width + 6) * 4
    assert row["handed_bytes_per_window_full_image"] == (3 * size * width + 6) * 4
    assert row["full_image_samples_per_cpu_s_per_worker"] > 0
