"""hms status / monitor rendering and hms logs (local)."""
from __future__ import annotations

import io
import json
import threading
import time
import tracemalloc

import pytest
from rich.console import Console

from hms_core.cli import main as hms
from hms_core.errors import ConfigError
from hms_core import status
from hms_core.ops.run_status import run_status
from hms_core.ops import logs, monitor
from tests.ops.conftest import SNAKEMAKE_LOG_RUNNING, write_snakemake_log


def _console() -> Console:
    return Console(record=True, width=180, force_terminal=False, color_system=None)


def _training_run(workdir):
    path = workdir / status.STATUS_FILE
    status.start_run(path, cost_per_hour=4.0, status_interval_s=0.0)
    status.update_status(path, "train_resnet1d_gru_fold3", stage="training", model="resnet1d_gru",
                         fold=3, epoch=2, epochs=5, step=42, steps=100, loss=0.6123,
                         samples_per_s=187.5, elapsed_s=120.0, eta_s=3725.0)
    return path


def test_status_frame_shows_job_progress_eta_cost(workdir):
    _training_run(workdir)
    write_snakemake_log(workdir, SNAKEMAKE_LOG_RUNNING)
    console = _console()
    st = run_status(workdir)
    st["snakemake"]["running_now"] = True  # render as if Snakemake were alive
    st["jobs"]["train_resnet1d_gru_fold3"]["state"] = "running"
    console.print(monitor.render_status(st))
    frame = console.export_text()
    row = next(line for line in frame.splitlines() if "train_resnet1d_gru_fold3" in line)
    for text in ("training", "resnet1d_gru", "2/5", "42/100", "42%", "0.6123", "187.5", "1h 02m"):
        assert text in row, (text, row)
    assert "1 of 4 steps (25%)" in frame
    assert "running rules: work(i=0)" in frame
    assert "USD so far" in frame and "(4.00/h)" in frame
    assert "GPU: none (" in frame or "GPU (driver" in frame


def test_print_status_json_and_text(workdir, capsys):
    _training_run(workdir)
    assert hms(["status", "--json", "-d", str(workdir)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["jobs"]["train_resnet1d_gru_fold3"]["progress"] == pytest.approx(0.42)
    console = _console()
    assert monitor.print_status(workdir, None, False, console=console) == 0
    assert "train_resnet1d_gru_fold3" in console.export_text()


def test_monitor_refreshes_until_frames(workdir):
    path = _training_run(workdir)
    console = _console()
    timer = threading.Timer(0.15, status.update_status, args=(path, "export"),
                            kwargs={"stage": "export", "progress": 0.5})
    timer.start()
    assert monitor.run_monitor(workdir, None, 0.4, console=console, frames=2) == 0
    timer.join()
    text = console.export_text()
    assert "train_resnet1d_gru_fold3" in text and "export" in text  # the second frame saw the new job


def test_format_duration():
    assert [monitor.format_duration(s) for s in (None, 5, 65, 3725, 90000)] == \
        ["-", "5s", "1m 05s", "1h 02m", "1d 01h"]


def test_logs_show_and_follow(workdir):
    rule_dir = workdir / "logs" / "train"
    rule_dir.mkdir(parents=True)
    (rule_dir / "resnet_fold0.log").write_text("epoch 1 loss 0.9\n")
    out = io.StringIO()
    assert logs.show_logs(workdir, "train", False, None, out=out) == 0
    assert "resnet_fold0.log <==" in out.getvalue() and "epoch 1 loss 0.9" in out.getvalue()
    with pytest.raises(ConfigError, match="no logs for rule 'ensemble'.*rules with logs: train"):
        logs.show_logs(workdir, "ensemble", False, None, out=io.StringIO())

    followed, stop = io.StringIO(), threading.Event()
    thread = threading.Thread(target=logs.show_logs, args=(workdir, "train", True, None),
                              kwargs={"out": followed, "poll_s": 0.05, "stop": stop})
    thread.start()
    try:
        with open(rule_dir / "resnet_fold0.log", "a") as f:
            f.write("epoch 2 loss 0.7\n")
        (rule_dir / "resnet_fold1.log").write_text("fold 1 started\n")
        deadline = time.monotonic() + 5
        while "fold 1 started" not in followed.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(5)
    text = followed.getvalue()
    assert text.count("epoch 1 loss 0.9") == 1  # old lines are not repeated
    assert "epoch 2 loss 0.7" in text and "resnet_fold1.log <==" in text and "fold 1 started" in text


def test_logs_tail_a_large_log_in_bounded_memory(workdir):
    rule_dir = workdir / "logs" / "train"
    rule_dir.mkdir(parents=True)
    line = "epoch {:07d} " + "x" * 88 + "\n"  # 100 bytes a line
    with open(rule_dir / "big.log", "w") as f:
        for start in range(0, 300_000, 10_000):
            f.write("".join(line.format(i) for i in range(start, start + 10_000)))
    (rule_dir / "one_long_line.log").write_text("y" * 3_000_000)  # a progress bar without newline
    out = io.StringIO()
    tracemalloc.start()
    try:
        assert logs.show_logs(workdir, "train", False, None, out=out) == 0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    text = out.getvalue()
    assert peak < 8_000_000, f"peak {peak / 1e6:.1f} MB for a 30 MB log"
    shown = [ln for ln in text.splitlines() if ln.startswith("epoch")]
    assert len(shown) == logs.TAIL_LINES and shown[-1].startswith("epoch 0299999")
    assert shown[0].startswith(f"epoch {300_000 - logs.TAIL_LINES:07d}")
    assert "earlier lines not shown" in text
    assert "y" * 1000 in text and "y" * (logs.TAIL_BYTES + 1) not in text
