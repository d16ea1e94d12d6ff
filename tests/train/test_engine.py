"""Engine behaviour in-process: run keys, finished reruns, performance switches on CPU."""
import json
import logging
import os

import numpy as np
import pytest
import torch
from torch import nn

from hms_core.config import from_mapping
from hms_core.errors import ConfigError
from hms_core.train.data import ArrayDataset
from hms_core.train.device import select_device
from hms_core.train.engine import fit
from hms_core.train.engine_config import EngineConfig
from hms_core.train.losses import kl_loss

torch.set_num_threads(1)


def _data(n=32, shape=(8,)):
    rng = np.random.default_rng(0)
    return ArrayDataset(x=rng.normal(size=(n, *shape)).astype(np.float32),
                        target=rng.dirichlet(np.ones(6), size=n).astype(np.float32))


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 6))


def _cfg(**kw):
    base = dict(epochs=2, batch_size=8, lr=1e-2, progress=False, seed=1)
    return EngineConfig(**{**base, **kw})


def _loss(seen=None):
    def loss_fn(model, batch):
        logits = model(batch["x"])
        if seen is not None:
            seen.append((logits.dtype, batch["x"]))
        return kl_loss(logits, batch["target"]), {"n": torch.tensor(1.0)}
    return loss_fn


def _eval(data):
    return lambda m: {"val_kl": float(kl_loss(m(data.arrays["x"]), data.arrays["target"]))}


def test_stale_checkpoint_is_ignored_and_finished_run_is_not_retrained(tmp_path, caplog):
    data = _data()
    first = fit(_mlp(), loss_fn=_loss(), train_data=data, eval_fn=_eval(data), cfg=_cfg(),
                checkpoint_dir=tmp_path, run_key="inputs-A")
    assert first.resumed_from_step is None and first.global_step == 8
    assert len(first.history) == 2 and first.best_epoch in (0, 1)
    assert first.history[0]["train_n"] == pytest.approx(1.0)
    again = fit(_mlp(), loss_fn=_loss(), train_data=data, eval_fn=_eval(data), cfg=_cfg(),
                checkpoint_dir=tmp_path, run_key="inputs-A")
    assert again.resumed_from_step == 8 and again.history == first.history
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    with caplog.at_level(logging.WARNING):
        other = fit(_mlp(), loss_fn=_loss(), train_data=data, cfg=_cfg(),
                    checkpoint_dir=tmp_path, run_key="inputs-B")
    assert other.resumed_from_step is None
    assert "ignoring stale checkpoint" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # same inputs, other training parameters
        changed = fit(_mlp(), loss_fn=_loss(), train_data=data, cfg=_cfg(lr=5e-3),
                      checkpoint_dir=tmp_path, run_key="inputs-B")
    assert changed.resumed_from_step is None and "ignoring stale checkpoint" in caplog.text
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["finished"] and state["global_step"] == 8


def test_step_hooks_see_every_step_before_its_checkpoint(tmp_path):
    seen = []

    def hook(state):
        last = tmp_path / "last.pt"
        saved = torch.load(last, weights_only=True)["global_step"] if last.exists() else None
        seen.append((state.epoch, state.step_in_epoch, state.global_step, saved))

    fit(_mlp(), loss_fn=_loss(), train_data=_data(), cfg=_cfg(checkpoint_every_steps=1),
        checkpoint_dir=tmp_path, run_key="hooks", on_step_end=[hook])
    assert [s[:3] for s in seen] == [(e, i, 4 * e + i) for e in (0, 1) for i in range(1, 5)]
    assert [s[3] for s in seen] == [None, 1, 2, 3, 4, 5, 6, 7]


def test_bf16_autocast_on_cpu_trains(tmp_path):
    seen = []
    data = _data()
    result = fit(_mlp(), loss_fn=_loss(seen), train_data=data, cfg=_cfg(precision="bf16"),
                 checkpoint_dir=tmp_path, run_key="bf16")
    assert seen[0][0] == torch.bfloat16
    assert all(np.isfinite(h["train_loss"]) for h in result.history)
    assert next(result.model.parameters()).dtype == torch.float32


def test_fp16_needs_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: fp16 is allowed")
    with pytest.raises(ConfigError, match="fp16.*CUDA"):
        fit(_mlp(), loss_fn=_loss(), train_data=_data(), cfg=_cfg(precision="fp16"),
            checkpoint_dir=tmp_path, run_key="fp16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 GradScaler and TF32 need CUDA")
def test_fp16_and_tf32_on_cuda(tmp_path):
    result = fit(_mlp(), loss_fn=_loss(), train_data=_data(), cfg=_cfg(precision="fp16", tf32=True),
                 checkpoint_dir=tmp_path, run_key="fp16")
    assert torch.backends.cuda.matmul.allow_tf32
    assert all(np.isfinite(h["train_loss"]) for h in result.history)


def test_channels_last_model_and_inputs(tmp_path):
    seen = []
    data = _data(shape=(2, 6, 6))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 6))
    fit(model, loss_fn=_loss(seen), train_data=data, cfg=_cfg(channels_last=True, epochs=1),
        checkpoint_dir=tmp_path, run_key="cl")
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert seen[0][1].is_contiguous(memory_format=torch.channels_last)


def test_ema_weights_are_returned(tmp_path):
    data = _data()
    result = fit(_mlp(), loss_fn=_loss(), train_data=data, cfg=_cfg(ema_decay=0.8, select_best=False),
                 checkpoint_dir=tmp_path, run_key="ema")
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    returned = result.model.state_dict()
    assert all(torch.equal(returned[k], state["ema"][k]) for k in returned)
    assert not all(torch.equal(state["model"][k], state["ema"][k]) for k in returned)


def test_compile_aot_eager_backend(tmp_path):
    # Inductor's C++ code generation takes about a minute on the test machine; aot_eager
    # goes through dynamo and AOT autograd without it.
    result = fit(_mlp(), loss_fn=_loss(), train_data=_data(), checkpoint_dir=tmp_path,
                 cfg=_cfg(compile=True, compile_backend="aot_eager", epochs=1), run_key="compile")
    assert not any(k.startswith("_orig_mod") for k in result.model.state_dict())
    assert np.isfinite(result.history[0]["train_loss"])


def test_grad_checkpointing_needs_support(tmp_path):
    with pytest.raises(ConfigError, match="gradient checkpointing"):
        fit(_mlp(), loss_fn=_loss(), train_data=_data(), cfg=_cfg(grad_checkpointing=True),
            checkpoint_dir=tmp_path, run_key="gc")


def test_worker_loading_gives_identical_weights(tmp_path):
    data = _data()
    a = fit(_mlp(), loss_fn=_loss(), train_data=data, cfg=_cfg(num_workers=0),
            checkpoint_dir=tmp_path / "a", run_key="w")
    b = fit(_mlp(), loss_fn=_loss(), train_data=data, cfg=_cfg(num_workers=1, pin_memory=True),
            checkpoint_dir=tmp_path / "b", run_key="w")
    for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        assert torch.equal(x, y)


def test_status_file_and_allocator_env(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    status = tmp_path / "status" / "run.json"
    fit(_mlp(), loss_fn=_loss(), train_data=_data(), cfg=_cfg(status_every_s=0.0),
        checkpoint_dir=tmp_path, run_key="s", status_path=status, status_job="job1",
        status_fields={"model": "mlp", "fold": 0})
    entry = json.loads(status.read_text())["jobs"]["job1"]
    assert entry["stage"] == "training" and entry["model"] == "mlp" and entry["steps"] == 8
    assert entry["step"] == 8 and entry["eta_s"] == 0.0
    if not torch.cuda.is_initialized():
        assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert select_device("cpu").type == "cpu"


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="training: unknown key 'lrr'"):
        from_mapping(EngineConfig, {"lrr": 1}, "training")
    with pytest.raises(ConfigError, match="training.precision: invalid value 'fp8'"):
        from_mapping(EngineConfig, {"precision": "fp8"}, "training")
