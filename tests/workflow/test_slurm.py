"""The workflow on a real SLURM cluster (one node, localhost) through profiles/slurm.

The cluster comes from ``slurm_cluster.start_cluster``; its node has this machine's CPUs and
two placeholder ``gpu`` GRES (no devices), so the profile's GPU requests are scheduled as
GPU jobs while torch still runs on the CPU. The profile is used as written except for what
a 2-core test node cannot grant (see ``write_test_profile``).
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from slurm_cluster import SlurmCluster, SlurmUnavailable, start_cluster

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "profiles" / "slurm" / "config.yaml"

pytestmark = pytest.mark.slow

def profile_partitions() -> list[str]:
    """Every partition the SLURM profile names, the default first."""
    cfg = yaml.safe_load(PROFILE.read_text())
    names = [cfg["default-resources"]["slurm_partition"]]
    names += [res["slurm_partition"] for res in cfg.get("set-resources", {}).values()
              if "slurm_partition" in res]
    return list(dict.fromkeys(names))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> SlurmCluster:
    # A short root keeps the munge socket path far below the 108-byte AF_UNIX limit.
    pytest.importorskip("snakemake_executor_plugin_slurm",
                        reason="snakemake-executor-plugin-slurm is not installed (pip install '.[slurm]')")
    root = tmp_path_factory.mktemp("slurm")
    try:
        running = start_cluster(root, partitions=profile_partitions(), gpus=2)
    except SlurmUnavailable as exc:
        pytest.skip(f"SLURM cannot start here: {exc}")
    try:
        yield running
    finally:
        running.stop()


# One-after-the-other steps with one job each; parallel ones (exports) stay apart, since a
# group job asks for the sum of its parallel members' CPUs and GPUs.
SERIAL_GROUPS = {"data": ("fetch_data", "validate_data", "make_folds"),
                 "finish": ("results", "report_figures")}


def write_test_profile(dest: Path, cluster: SlurmCluster) -> Path:
    """profiles/slurm adapted to the test node; returns the profile folder.

    Changes, and why: every ``cpus_per_task`` becomes 1 and every ``mem_mb`` at most a
    quarter of the node (a 2-core node rejects a job asking 8 CPUs or 64 GB); there is no
    slurmdbd, so job states come from ``squeue``; status checks start after 1 s instead of
    40 s; SLURM logs of successful jobs are kept for the assertions; the serial one-job
    steps at both ends of the DAG run as two group jobs (``SERIAL_GROUPS``), because each
    SLURM job costs two Snakemake start-ups plus the plugin's growing status-poll interval
    (1, 11, 21 ... s) on a 2-core CI machine. Batches and folds stay one job each;
    partitions, GPU requests, retries, requeue and everything else stay as the profile says.
    """
    cfg = yaml.safe_load(PROFILE.read_text())
    mem_cap = cluster.memory_mb // 4
    for res in [cfg["default-resources"], *cfg.get("set-resources", {}).values()]:
        if "cpus_per_task" in res:
            res["cpus_per_task"] = 1
        if "mem_mb" in res:
            res["mem_mb"] = min(int(res["mem_mb"]), mem_cap)
    cfg.update({
        "slurm-status-command": "squeue",
        "slurm-init-seconds-before-status-checks": 1,
        "seconds-between-status-checks": 1,
        "slurm-keep-successful-logs": True,
        "latency-wait": 5,
        "groups": [f"{rule}={group}" for group, rules in SERIAL_GROUPS.items() for rule in rules],
    })
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


def start_snakemake(cluster: SlurmCluster, snakefile: Path, workdir: Path, profile: Path | None,
                    *args: str) -> subprocess.Popen:
    """Snakemake as a child process; output goes to ``workdir/../<name>.out``."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "--directory", str(workdir),
           "--workflow-profile", "none", *args]
    if profile is not None:
        cmd += ["--profile", str(profile)]
    out = (workdir.parent / f"{workdir.name}.out").open("w")
    env = {**cluster.env, "PYTHONHASHSEED": "0"}
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, text=True)


def finish(proc: subprocess.Popen, workdir: Path, cluster: SlurmCluster, timeout_s: float) -> None:
    """Wait for Snakemake; on failure or timeout raise with its output, job logs and daemon logs."""
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait(timeout=30)
    if proc.returncode != 0:
        out = (workdir.parent / f"{workdir.name}.out").read_text(errors="replace")
        logs = "\n".join(f"== {p}\n{p.read_text(errors='replace')[-2000:]}"
                         for p in sorted(workdir.glob("logs/**/*.log")))
        slurm_logs = "\n".join(f"== {p}\n{p.read_text(errors='replace')[-2000:]}"
                               for p in sorted(workdir.glob(".snakemake/slurm_logs/**/*.log")))
        raise AssertionError(f"snakemake exited {proc.returncode}:\n{out[-6000:]}\n{logs}\n"
                             f"{slurm_logs}\n{cluster.jobs()}\n{cluster.log_tail()}")


def jobs_of(cluster: SlurmCluster, comment_prefix: str) -> list[dict[str, str]]:
    return [j for j in cluster.jobs() if j["comment"].startswith(comment_prefix)]


def cancel_when(cluster: SlurmCluster, proc: subprocess.Popen, comment_prefix: str,
                ready, timeout_s: float) -> dict[str, str] | None:
    """scancel the first running job whose comment starts with ``comment_prefix`` once
    ``ready(job)`` holds; returns that job, or None if none qualified before Snakemake ended."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        for job in jobs_of(cluster, comment_prefix):
            if job["state"] == "RUNNING" and ready(job):
                detail = cluster.job_detail(job["id"])
                cluster.run("scancel", job["id"])
                return {**job, "detail": detail}
        time.sleep(0.1)
    return None


# -- the real workflow: tiny config, locally and on SLURM -----------------------------------

SNAKEFILE = REPO / "Snakefile"
TINY = REPO / "tests" / "workflow" / "tiny.yaml"
# Both runs use tiny.yaml plus: a checkpoint after every optimiser step (not part of the
# result: the engine leaves it out of the run key), so a job can be cancelled mid-training;
# and one GPU per training job, which the test node's placeholder GPUs grant.
TINY_OVERRIDES = {"training": {"checkpoint_every_steps": 1}, "compute": {"gpus_per_job": 1}}
TARGETS: tuple[str, ...] = ()  # the default target: the whole DAG
# Paths a run writes that name its own executor or clock, not a pipeline result.
RUN_SPECIFIC = (".snakemake/",)


def merged(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merged(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def checkpoint_state(workdir: Path, job: dict[str, str]) -> tuple[int, bool]:
    """(global step, finished) of the newest last.pt of a train_fold SLURM job; (0, False) if none."""
    import torch

    model, fold = job["comment"].removeprefix("rule_train_fold_wildcards_").rsplit("_", 1)
    paths = sorted((workdir / f"models/checkpoints/train_{model}_fold{fold}").glob("**/last.pt"),
                   key=lambda p: p.stat().st_mtime)
    if not paths:
        return 0, False
    try:
        state = torch.load(paths[-1], map_location="cpu", weights_only=True)
    except Exception:  # being replaced right now: try again on the next poll
        return 0, False
    return int(state["global_step"]), bool(state.get("finished"))


def result_files(workdir: Path) -> set[str]:
    return {str(p.relative_to(workdir)) for p in workdir.rglob("*")
            if p.is_file() and not str(p.relative_to(workdir)).startswith(RUN_SPECIFIC)}


@pytest.fixture(scope="module")
def hms_runs(cluster, tmp_path_factory):
    """The tiny DAG run locally and, at the same time, on SLURM, where one train_fold job
    is scancelled once it has checkpointed a step; returns (local dir, SLURM dir, that job)."""
    import torch  # noqa: F401  (imported before the cancel loop, which must react fast)

    base = tmp_path_factory.mktemp("hms")
    config = base / "tiny_slurm.yaml"
    config.write_text(yaml.safe_dump(merged(yaml.safe_load(TINY.read_text()), TINY_OVERRIDES)))
    profile = write_test_profile(base / "profile", cluster)
    local, remote = base / "local", base / "slurm"
    local.mkdir()
    remote.mkdir()
    started = time.monotonic()
    local_proc = start_snakemake(cluster, SNAKEFILE, local, None, *TARGETS, "--cores", "2",
                                 "--resources", "gpu=1", "--configfile", str(config))
    slurm_proc = start_snakemake(cluster, SNAKEFILE, remote, profile, *TARGETS,
                                 "--configfile", str(config))

    def mid_training(job):
        step, finished = checkpoint_state(remote, job)
        return step >= 1 and not finished

    try:
        cancelled = cancel_when(cluster, slurm_proc, "rule_train_fold_", mid_training, 600)
        finish(slurm_proc, remote, cluster, timeout_s=600)
        finish(local_proc, local, cluster, timeout_s=300)
    finally:
        for proc in (local_proc, slurm_proc):
            if proc.poll() is None:
                proc.kill()
    print(f"local + SLURM runs of the tiny DAG: {time.monotonic() - started:.0f} s")
    return local, remote, cancelled


def test_slurm_run_fans_out_one_job_per_batch_and_fold(hms_runs, cluster):
    cfg = merged(yaml.safe_load(TINY.read_text()), TINY_OVERRIDES)
    models = [m for m, spec in cfg["models"].items() if spec.get("enabled", True)]
    completed = {j["comment"] for j in cluster.jobs() if j["state"] == "COMPLETED"}
    batches = {f"rule_preprocess_batch_wildcards_{b:04d}" for b in range(cfg["preprocessing"]["n_batches"])}
    folds = {f"rule_train_fold_wildcards_{m}_{k}" for m in models for k in range(cfg["folds"]["n_folds"])}
    assert batches <= completed, batches - completed
    assert folds <= completed, folds - completed


def test_training_got_a_gpu_partition_and_gpu_preprocessing_neither(hms_runs, cluster):
    profile = yaml.safe_load(PROFILE.read_text())
    jobs = [j for j in cluster.jobs() if j["state"] == "COMPLETED"]
    train = [cluster.job_detail(j["id"]) for j in jobs if j["comment"].startswith("rule_train_fold_")]
    # compute.gpus_per_job = 1 became `--gpus=1`; only a running job shows the GPU it was
    # allocated, so that is read from the job cancelled while it ran.
    assert train and {d.get("TresPerJob") for d in train} == {"gres:gpu:1"}, train
    cancelled = hms_runs[2]
    assert cancelled is not None and cancelled["detail"].get("JOB_GRES") == "gpu:1", cancelled
    assert {d["Partition"] for d in train} == {profile["set-resources"]["train_fold"]["slurm_partition"]}
    preprocess = [cluster.job_detail(j["id"]) for j in jobs
                  if j["comment"].startswith("rule_preprocess_batch_")]
    default_partition = profile["default-resources"]["slurm_partition"]
    assert preprocess and {d["Partition"] for d in preprocess} == {default_partition}
    assert not any("gpu" in d.get("TresPerJob", "") for d in preprocess)


def test_slurm_run_writes_the_same_files_as_a_local_run(hms_runs):
    local, remote, _ = hms_runs
    assert result_files(remote) == result_files(local)


def differences(a, b, path="") -> list[str]:
    """Where two loaded checkpoints differ: tensors bit for bit, everything else by ==,
    except ``seconds`` entries (wall-clock durations, which no two runs share)."""
    import torch

    if torch.is_tensor(a) and torch.is_tensor(b):
        return [] if a.dtype == b.dtype and torch.equal(a, b) else [path]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path} keys"]
        return [d for key in a if key != "seconds"
                for d in differences(a[key], b[key], f"{path}.{key}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path} length"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [path]


def test_slurm_results_equal_local_results(hms_runs):
    """Same seeds, one thread per job: data, stores, weights (every models/final/*.pth, the
    ensemble too) and out-of-fold predictions are identical, including the fold whose job was
    cancelled and resumed mid-epoch."""
    import pandas as pd
    import torch

    local, remote, _ = hms_runs
    exact = [p for p in sorted(result_files(local))
             if p.startswith(("data/raw/", "data/processed/")) or p in ("data/folds.csv", "data/manifest.sha256")]
    assert any(p.startswith("data/processed/") for p in exact)
    assert [p for p in exact if (local / p).read_bytes() != (remote / p).read_bytes()] == []
    weights = sorted((local / "models/final").glob("*.pth"))
    assert len(weights) >= 4
    for path in weights:
        mine = torch.load(path, map_location="cpu", weights_only=True)
        theirs = torch.load(remote / path.relative_to(local), map_location="cpu", weights_only=True)
        assert differences(mine, theirs) == [], path.name
    for path in sorted((local / "oof").glob("*.parquet")):
        pd.testing.assert_frame_equal(pd.read_parquet(path), pd.read_parquet(remote / path.relative_to(local)))


def test_cancelled_training_job_resumed_from_its_checkpoint(hms_runs, cluster):
    _, remote, cancelled = hms_runs
    assert cancelled is not None, "no train_fold job was caught mid-training to cancel"
    model, fold = cancelled["comment"].removeprefix("rule_train_fold_wildcards_").rsplit("_", 1)
    attempts = {j["id"]: j["state"] for j in cluster.jobs() if j["comment"] == cancelled["comment"]}
    assert attempts[cancelled["id"]] == "CANCELLED"
    assert sorted(s for i, s in attempts.items() if i != cancelled["id"]) == ["COMPLETED"]
    log = (remote / f"logs/train_fold/{model}_fold{fold}.log").read_text()
    resumed = [int(m) for m in re.findall(r"resuming .* \(global step (\d+)\)", log)]
    final_step, finished = checkpoint_state(remote, cancelled)
    assert resumed and 0 < resumed[0] < final_step, (resumed, final_step, log[-3000:])
    assert finished
