"""The foundation encoder: patching, shapes, classifier head, save/load round trip."""
from __future__ import annotations

import pytest
import torch

from hms_core.config import from_mapping
from hms_core import contract
from hms_core.errors import ConfigError, DataError
from hms_core.models.foundation import (
    EEGFoundationEncoder,
    FoundationClassifier,
    FoundationModelConfig,
    load_foundation,
    save_foundation,
)

torch.set_num_threads(1)

TINY = dict(n_times=2000, dim=16, depth=1, heads=2, max_patches=4)


def test_patchify_takes_central_patches_and_scales_uv():
    encoder = EEGFoundationEncoder(**TINY)
    assert encoder.patch_samples == contract.SAMPLING_RATE_HZ  # 1 s patches
    assert encoder.n_patches == 4 and encoder.n_tokens == contract.N_CHAINS * 4
    x = torch.arange(2000, dtype=torch.float32).repeat(2, contract.N_CHAINS, 1)
    patches = encoder.patchify(x)
    assert patches.shape == (2, contract.N_CHAINS, 4, 200)
    # central 800 of 2000 samples start at 600; values divided by input_scale_uv = 100 uV
    assert patches[0, 0, 0, 0].item() == pytest.approx(6.0)
    assert patches[0, 0, 3, 199].item() == pytest.approx(13.99)


def test_forward_features_shape_and_whole_window_default():
    encoder = EEGFoundationEncoder(**{**TINY, "max_patches": None})
    assert encoder.n_patches == 10
    features = encoder.forward_features(torch.randn(3, contract.N_CHAINS, 2000) * 50)
    assert features.shape == (3, encoder.feature_dim) and torch.isfinite(features).all()


def test_channel_and_time_embeddings_make_tokens_position_aware():
    encoder = EEGFoundationEncoder(**TINY).eval()
    x = torch.randn(1, contract.N_CHAINS, 2000) * 50
    x[:, :, :] = x[:, :1, :]  # every chain the same signal
    tokens = encoder.forward_tokens(x).view(1, contract.N_CHAINS, 4, -1)
    assert not torch.allclose(tokens[0, 0], tokens[0, 1])  # chains told apart by channel embedding


def test_bad_input_shape_is_a_clear_error():
    encoder = EEGFoundationEncoder(**TINY)
    with pytest.raises(ValueError, match="expects \\(batch, 18, time\\)"):
        encoder.forward_features(torch.zeros(1, 19, 2000))
    with pytest.raises(ValueError, match="needs at least 800 samples"):
        encoder.forward_features(torch.zeros(1, 18, 500))


def test_config_rejects_unknown_keys_and_bad_heads():
    with pytest.raises(ConfigError, match="unknown key.*'width'"):
        from_mapping(FoundationModelConfig, {"width": 3}, "pretrain.model")
    with pytest.raises(ConfigError, match="heads"):
        from_mapping(FoundationModelConfig, {"dim": 10, "heads": 4}, "pretrain.model")


def test_classifier_frozen_encoder_gets_no_gradient():
    clf = FoundationClassifier(freeze_encoder=True, **TINY)
    logits = clf(torch.randn(4, contract.N_CHAINS, 2000) * 50)
    assert logits.shape == (4, contract.N_CLASSES)
    logits.sum().backward()
    assert all(p.grad is None for p in clf.encoder.parameters())
    assert clf.head.weight.grad is not None
    clf.train()
    assert not clf.encoder.training


def test_save_load_round_trip_gives_same_outputs(tmp_path):
    torch.manual_seed(1)
    encoder = EEGFoundationEncoder(**TINY).eval()
    path = tmp_path / "eeg_foundation_pretrained.pth"
    save_foundation(encoder, path, extra={"objectives": {"masked": {"enabled": True}}})
    payload = torch.load(path, weights_only=True)
    assert payload["model_kwargs"]["dim"] == 16 and payload["channels"] == list(contract.BIPOLAR_NAMES)
    loaded = load_foundation(path)
    x = torch.randn(2, contract.N_CHAINS, 2000) * 50
    assert loaded.feature_dim == encoder.feature_dim and not loaded.training
    assert torch.equal(loaded.forward_features(x), encoder.forward_features(x))


def test_load_foundation_names_a_bad_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_foundation(tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(DataError, match="bad.pth.*not an EEG foundation checkpoint"):
        load_foundation(bad)


def test_encoder_exports_to_onnx_with_matching_features(tmp_path):
    import warnings

    import numpy as np
    import onnxruntime as ort

    encoder = EEGFoundationEncoder(**TINY).eval()
    x = torch.randn(2, contract.N_CHAINS, 2000) * 50
    path = tmp_path / "encoder.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(encoder, (x,), path, opset_version=17, dynamo=False, input_names=["chains"],
                          dynamic_axes={"chains": {0: "batch"}})
    x3 = torch.randn(3, contract.N_CHAINS, 2000) * 50
    got = ort.InferenceSession(str(path)).run(None, {"chains": x3.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, encoder.forward_features(x3).numpy(), atol=1e-4)
