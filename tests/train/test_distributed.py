"""Multi-process training (torchrun, gloo on CPU, 2 processes) against one process.

Tolerance of the 1-vs-2-process comparison: the child's model has no dropout, batch norm
or augmentation, so the only difference is float32 summation order (DDP averages two
half-batch gradients where one process sums the whole batch). That perturbs the weights
by ~1e-7 per step; over 24 Adam steps the validation KL moved by < 1e-7 nats when
measured, and we allow 1e-5 nats (and 1e-5 on the weights).
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import dist_child  # noqa: E402

from hms_core.errors import ConfigError  # noqa: E402
from hms_core.train import distributed  # noqa: E402

torch.set_num_threads(1)
HERE = Path(__file__).parent
KL_TOL = 1e-5


def _env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("HMS_TEST_SLOW_STEP_S", "HMS_TEST_PROGRESS", "HMS_TEST_MICRO_BATCH")}
    env.update({"OMP_NUM_THREADS": "1",
                "PYTHONPATH": os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]), **extra})
    return env


def _torchrun(ckpt_dir, out, *child_args, **env_extra):
    return distributed.launch_torchrun(2, [str(ckpt_dir), str(out), *child_args],
                                       module="dist_child", env=_env(**env_extra), timeout_s=120)


def _load(path):
    return torch.load(path, weights_only=True)


def _assert_same_run(a, b):
    for part in ("model", "ema", "returned"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    for pid, st in a["optimizer"]["state"].items():
        for name, value in st.items():
            assert torch.equal(value, b["optimizer"]["state"][pid][name]), (pid, name)
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    assert [h["val_kl"] for h in a["history"]] == [h["val_kl"] for h in b["history"]]


@pytest.fixture(scope="module")
def two_proc(tmp_path_factory):
    """An uninterrupted 2-process run: (rank-0 output, its directory)."""
    d = tmp_path_factory.mktemp("two")
    assert _torchrun(d / "ckpt", d / "out.pt") == 0
    return _load(d / "out.pt"), d


def test_shard_bounds_partition_in_order():
    for n in (0, 1, 5, 8, 21):
        for world in (1, 2, 3):
            parts = [distributed.shard_bounds(n, r, world) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            sizes = [b - a for a, b in parts]
            assert max(sizes) - min(sizes) <= 1


def test_single_process_helpers_are_noops():
    info = distributed.init_from_env("cpu") if "WORLD_SIZE" not in os.environ else None
    assert info is None or (info.world_size == 1 and info.is_rank0 and not info.distributed)
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    rows = np.arange(12.0).reshape(6, 2)
    assert distributed.gather_rows(rows) is not None and np.array_equal(
        distributed.gather_rows(rows), rows)
    assert distributed.choose_backend("cpu") == "gloo"


def test_single_process_communicator_is_the_identity():
    comm = distributed.communicator(distributed.DistInfo(), torch.device("cpu"))
    assert isinstance(comm, distributed.SingleProcess)
    assert (comm.rank, comm.world_size, comm.is_rank0) == (0, 1, True)
    model, batches = torch.nn.Linear(2, 2), [[3, 1], [0, 2]]
    loss, logs = torch.tensor(0.25, requires_grad=True), {"kl": torch.tensor(0.5)}
    assert comm.wrap(model, torch.device("cpu")) is model
    assert comm.shard(batches, 0) is batches
    assert comm.scale_loss(loss, 2, 2) is loss
    assert comm.batch_mean(loss, logs, 2, 2) == (0.25, logs, 2)
    assert comm.agree_signal(15) == 15 and comm.agree_signal(None) is None
    assert comm.gather("rng") == ["rng"] and comm.broadcast(logs) is logs
    assert comm.barrier() is None


def test_data_parallel_shards_each_global_batch_and_weights_the_loss_by_rows():
    rank1 = distributed.DataParallel(distributed.DistInfo(rank=1, world_size=2, backend="gloo"),
                                     torch.device("cpu"))
    assert not rank1.is_rank0
    assert rank1.shard([[0, 1, 2, 3, 4], [5, 6]], 0) == [[3, 4], [6]]
    with pytest.raises(ConfigError, match="batch of epoch 3 has 1 rows, fewer than the 2"):
        rank1.shard([[0, 1], [2]], 3)
    assert float(rank1.scale_loss(torch.tensor(0.5), 2, 5)) == pytest.approx(0.5 * 2 * 2 / 5)


def test_launcher_sets_cuda_visible_devices_from_allocation(monkeypatch):
    seen = {}

    class FakePopen:  # subprocess is not ours; capture what would run
        def __init__(self, cmd, env, **kwargs):
            seen.update(cmd=cmd, env=env)

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(distributed.subprocess, "Popen", FakePopen)
    rc = distributed.launch_torchrun(2, ["--fold", "0"], gpu_ids=[5, 7, 9], env={"PATH": "/bin"})
    assert rc == 0 and seen["env"]["CUDA_VISIBLE_DEVICES"] == "5,7"
    assert seen["cmd"][1:] == ["-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                               "--nproc_per_node", "2", "-m", distributed.FOLD_MAIN_MODULE,
                               "--fold", "0"]
    with pytest.raises(ConfigError, match="only 1 GPU ids"):
        distributed.launch_torchrun(2, [], gpu_ids=["3"])
    assert distributed.visible_gpu_ids({"CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
    assert distributed.visible_gpu_ids({"CUDA_VISIBLE_DEVICES": ""}) == []


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, two_proc):
    two, d = two_proc
    one = dist_child.train(tmp_path / "ckpt", tmp_path / "one.pt")
    assert two["world_size"] == 2 and one["world_size"] == 1
    kl_one = [h["val_kl"] for h in one["history"]]
    kl_two = [h["val_kl"] for h in two["history"]]
    np.testing.assert_allclose(kl_two, kl_one, rtol=0, atol=KL_TOL)
    assert kl_two[-1] < kl_two[0]  # it learned something
    for key in one["returned"]:
        torch.testing.assert_close(two["returned"][key], one["returned"][key], rtol=0, atol=1e-5)
    rank1 = _load(d / "out.pt.rank1.pt")  # every rank ends with the same weights and history
    for key in two["returned"]:
        assert torch.equal(two["returned"][key], rank1["returned"][key])
    assert rank1["history"] == two["history"]


@pytest.mark.slow
def test_two_processes_with_micro_batches_match_whole_batches(tmp_path, two_proc):
    """Each rank's 4 rows in slices of 3 and 1 (only the last slice all-reduces, ``no_sync``
    before it): the same run up to float summation order."""
    assert _torchrun(tmp_path / "ckpt", tmp_path / "out.pt", HMS_TEST_MICRO_BATCH="3") == 0
    sliced, whole = _load(tmp_path / "out.pt"), two_proc[0]
    for key in whole["returned"]:
        torch.testing.assert_close(sliced["returned"][key], whole["returned"][key], rtol=0, atol=1e-5)
    rank1 = _load(tmp_path / "out.pt.rank1.pt")
    for key in sliced["returned"]:
        assert torch.equal(sliced["returned"][key], rank1["returned"][key])
    assert _load(tmp_path / "ckpt" / "last.pt")["micro_batch_size"] == 3


@pytest.mark.slow
def test_sigterm_then_sigkill_mid_epoch_resume_exactly(tmp_path, two_proc):
    """One job (started by ``launch_torchrun``) is stopped by SIGTERM, the rerun is SIGKILLed as a
    whole mid-epoch, the third run finishes: all equal to the uninterrupted 2-process run."""
    progress = tmp_path / "progress.txt"
    launcher = ("import sys; from hms_core.train.distributed import launch_torchrun; "
                f"sys.exit(launch_torchrun(2, [{str(tmp_path / 'ckpt')!r}, "
                f"{str(tmp_path / 'run.pt')!r}], module='dist_child'))")
    proc = subprocess.Popen([sys.executable, "-c", launcher], env=_env(HMS_TEST_SLOW_STEP_S="0.6",
                                          HMS_TEST_PROGRESS=str(progress)),
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:  # into the second epoch (steps 9-16)
        if progress.exists() and len(progress.read_text().splitlines()) >= 10:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # launcher -> torchrun -> both ranks
    _, stderr = proc.communicate(timeout=90)
    assert proc.returncode != 0 and not (tmp_path / "run.pt").exists()
    assert "passing it on to the torchrun job" in stderr, stderr[-4000:]
    assert stderr.count("checkpointing after the current step") == 2, stderr[-4000:]
    # rank 0 alone writes (the message is absent when the stop fell on an epoch end)
    assert stderr.count("emergency checkpoint written") <= 1, stderr[-4000:]
    stopped = _load(tmp_path / "ckpt" / "last.pt")
    assert not stopped["finished"] and 10 <= stopped["global_step"] < 20
    assert len(stopped["rng_per_rank"]) == 2 and stopped["world_size"] == 2

    kill_at = 23  # epoch 3 of 3 (steps 17-24), three steps after the step-20 checkpoint
    rc = _torchrun(tmp_path / "ckpt", tmp_path / "run.pt", "--kill-at-step", str(kill_at))
    assert rc == -signal.SIGKILL and not (tmp_path / "run.pt").exists()
    assert _load(tmp_path / "ckpt" / "last.pt")["global_step"] == 20

    assert _torchrun(tmp_path / "ckpt", tmp_path / "run.pt") == 0
    resumed = _load(tmp_path / "run.pt")
    assert resumed["resumed_from"] == 20
    _assert_same_run(two_proc[0], resumed)


@pytest.mark.slow
def test_fold_main_under_torchrun_writes_the_single_process_outputs(tmp_path, monkeypatch):
    """train_fold in 2 ranks: rank 0 writes weights + OOF in the single-process row order,
    and is the only rank that tracks the job (one MLflow run, opened once).

    resnet1d_gru has batch norm, whose batch statistics are per rank under DDP, so the
    predictions are close to (not equal to) one process': measured max |dlogp| 0.003 and
    |dKL| 4e-4 nats; we allow 0.02 nats.
    """
    from mlflow_runs import search_runs
    from test_fold import CFG, _write_store

    from hms_core.train import fold_main
    from hms_core.contract import LOGP_COLUMNS
    from hms_core.train.fold import train_fold

    _, folds = _write_store(tmp_path / "batch_0000.zarr")
    folds.to_csv(tmp_path / "folds.csv", index=False)
    no_aug = {"hemisphere_swap_p": 0, "time_shift_max_s": 0, "channel_mask_p": 0,
              "time_mask_p": 0, "freq_mask_p": 0, "mixup_alpha": 0}
    cfg = {"training": {**CFG["training"], "augment": no_aug},
           "models": {"resnet1d_gru": CFG["models"]["resnet1d_gru"]}}
    stores = [tmp_path / "batch_0000.zarr"]
    one = train_fold(stores, tmp_path / "folds.csv", "resnet1d_gru", 1, cfg,
                     weights_out=tmp_path / "w1.pt", oof_out=tmp_path / "o1.parquet",
                     checkpoint_dir=tmp_path / "c1")
    monkeypatch.chdir(tmp_path)  # the run folder: the ranks' MLflow store
    tracked = {**cfg, "tracking": {"backend": "mlflow"}}
    args = fold_main.fold_args(stores, tmp_path / "folds.csv", "resnet1d_gru", 1, tracked,
                               weights_out=tmp_path / "w2.pt", oof_out=tmp_path / "o2.parquet",
                               checkpoint_dir=tmp_path / "c2", config_path=tmp_path / "cfg.json",
                               status_path=tmp_path / "status.json")
    assert distributed.launch_torchrun(2, args, env=_env(), timeout_s=120) == 0
    o1, o2 = pd.read_parquet(tmp_path / "o1.parquet"), pd.read_parquet(tmp_path / "o2.parquet")
    assert list(o2.columns) == list(o1.columns) and o2["label_id"].tolist() == o1["label_id"].tolist()
    np.testing.assert_allclose(o2[list(LOGP_COLUMNS)], o1[list(LOGP_COLUMNS)], atol=0.05)
    two = _load(tmp_path / "w2.pt")["metrics"]
    assert abs(two["kl_all"] - one["kl_all"]) < 0.02 and two["n_rows"] == one["n_rows"]
    assert (tmp_path / "status.json").exists()
    runs = search_runs(tmp_path).set_index("tags.mlflow.runName")
    job = runs.loc["train_resnet1d_gru_fold1"]
    assert len(runs) == 2 and job["status"] == "FINISHED"
    assert pd.isna(job.get("tags.resumed"))  # a second rank would have reopened the run
    assert job["metrics.kl_all"] == pytest.approx(two["kl_all"])
