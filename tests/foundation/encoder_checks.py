"""Checks every registered foundation encoder passes, shared by the per-encoder test files."""
from __future__ import annotations

import torch

from hms_core.foundation.pretrain import pretrain
from hms_core.foundation.transfer import transfer_study
from hms_core.models.encoder_registry import encoder_spec
from hms_core.models.foundation import load_foundation
from hms_core.models.registry import create_model

TINY_RESNET = {"widths": (8,), "strides": (2,), "stem_width": 8, "gru_hidden": 8}
SMALL_STUDY = {"epochs": 1, "probe_epochs": 2, "batch_size": 8, "progress": False, "device": "cpu",
               "label_fractions": [1.0], "repeats": 1, "val_folds": [0], "min_patients": 1, "min_windows": 0}


def untrained_parameters(module: torch.nn.Module) -> list[str]:
    """Trainable parameters without a gradient after a backward pass (DistributedDataParallel
    fails on them)."""
    return [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]


def pretrain_from_published(name: str, weights, model_cfg: dict, tiny_store, tmp_path):
    """Continue pretraining encoder ``name`` from published ``weights`` with all our objectives
    on the tiny store; returns the saved encoder, loaded back."""
    cfg = {"encoder": name, "init_weights": str(weights), "model": model_cfg,
           "objectives": {"temporal": {"n_future": 1}}, "epochs": 1, "batch_size": 8, "progress": False,
           "device": "cpu", "holdout_folds": [0], "max_windows": 16}
    metrics = pretrain([tiny_store.store], cfg, out_path=tmp_path / "enc.pth", checkpoint_dir=tmp_path / "ckpt",
                       folds_csv=tiny_store.folds_csv)
    assert set(metrics["last_epoch_loss"]) == {"total", "masked", "contrastive", "temporal"}
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics["last_epoch_loss"].values())
    return load_foundation(tmp_path / "enc.pth")


def small_study(tiny_store, tmp_path) -> dict:
    """The transfer study of ``tmp_path / "enc.pth"`` on one fold, one seed, all labels."""
    return transfer_study([tiny_store.store], tiny_store.folds_csv, tmp_path / "enc.pth", SMALL_STUDY,
                          out_json=tmp_path / "t.json", checkpoint_dir=tmp_path / "t")


def export_resnet_with(encoder: torch.nn.Module, foundation_mode: str, tmp_path) -> dict:
    """Export a resnet1d_gru holding ``encoder`` to ONNX; returns the parity report."""
    from hms_core.export.onnx import export_model

    kwargs = {**TINY_RESNET, "foundation_mode": foundation_mode, "foundation_kwargs": encoder_spec(encoder)}
    model = create_model("resnet1d_gru", **kwargs).eval()
    torch.save({"model_name": "resnet1d_gru", "model_kwargs": kwargs, "state_dict": model.state_dict()},
               tmp_path / "m_fold0.pth")
    n_chans = {"chains": 18, "referential": 19}
    inputs = {field: torch.randn(3, n_chans[field], 10000).numpy() * 50 for field in model.input_fields}
    return export_model([tmp_path / "m_fold0.pth"], tmp_path / "m.onnx", parity_inputs=inputs,
                        cfg={"batch_size": 2, "n_parity_windows": 3})
