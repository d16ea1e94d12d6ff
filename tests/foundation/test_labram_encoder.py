"""braindecode's Labram as a foundation encoder: its tokens against braindecode's own forward,
the mask, the published weights format (written here from a random model, never downloaded)
and its errors, and LaBraM through pretraining, resnet1d_gru, the transfer study and the ONNX
export."""
from __future__ import annotations

import pytest
import torch
from braindecode.models import Labram

from hms_core import contract
from hms_core.errors import ConfigError, DataError
from hms_core.models.labram_encoder import LaBraMEncoder
from hms_core.models.registry import create_model

from encoder_checks import TINY_RESNET, export_resnet_with, pretrain_from_published, small_study, untrained_parameters

TINY = {"depth": 1, "heads": 4, "mlp_ratio": 1.0, "dropout": 0.0, "max_patches": 4}


def _published(path, *, num_layers=1, mlp_ratio=1.0, n_times=3000, n_chans=128):
    """A random braindecode Labram saved as the hub publishes it (model.safetensors + config.json)."""
    torch.manual_seed(1)
    model = Labram(n_outputs=2, n_chans=n_chans, n_times=n_times, sfreq=200, num_layers=num_layers, num_heads=4,
                   mlp_ratio=mlp_ratio)
    model.save_pretrained(path)
    return model


def test_labram_tokens_are_braindecodes():
    encoder = LaBraMEncoder(**TINY).eval()
    x = torch.randn(2, 19, 1000) * 50
    with torch.no_grad():
        reference = encoder.backbone(encoder.crop(x) / encoder.input_scale_uv, return_features=True,
                                     ch_names=list(contract.EEG_CHANNELS))["features"]
        assert torch.allclose(encoder.forward_tokens(x), reference, atol=1e-5)
        patches = encoder.patchify(x)
        mask = torch.zeros(patches.shape[:3], dtype=torch.bool)
        mask[0, 3, 2] = True
        changed = patches.clone()
        changed[0, 3, 2] = torch.randn(200) * 3
        assert torch.equal(encoder.encode_patches(patches, mask=mask), encoder.encode_patches(changed, mask=mask))
        assert not torch.allclose(encoder.encode_patches(patches), encoder.encode_patches(changed))


def test_every_trainable_labram_parameter_gets_a_gradient():
    encoder = LaBraMEncoder(**TINY)
    patches = encoder.patchify(torch.randn(2, 19, 1000) * 50)
    mask = torch.zeros(patches.shape[:3], dtype=torch.bool)
    mask[:, 0, 0] = True
    encoder.encode_patches(patches, mask=mask).sum().backward()
    assert not untrained_parameters(encoder)  # DistributedDataParallel needs every trainable parameter used
    assert not any(p.requires_grad for p in encoder.backbone.final_layer.parameters())


def test_labram_constraints_are_config_errors():
    with pytest.raises(ConfigError, match="pretrain.model.dim.*width 200.*got 64"):
        LaBraMEncoder(**TINY, dim=64)
    with pytest.raises(ConfigError, match="pretrain.model.patch_s: labram's patches are 200 samples"):
        LaBraMEncoder(**TINY, patch_s=2.0)
    with pytest.raises(ConfigError, match="19 referential channels.*got n_chans 18"):
        LaBraMEncoder(**TINY, n_chans=18)
    with pytest.raises(ConfigError, match="pretrain.model.heads: 3 does not divide labram's width 200"):
        LaBraMEncoder(**{**TINY, "heads": 3})


def test_published_labram_weights_load_into_the_encoder(tmp_path):
    published = _published(tmp_path / "labram-pretrained")  # 128 channels, 15 patches, a 2-class head
    encoder = LaBraMEncoder(**TINY)
    encoder.load_init_weights(tmp_path / "labram-pretrained")
    for key, value in published.state_dict().items():
        if key == "temporal_embedding":  # the first rows: those of 4 patches and [CLS]'s
            assert torch.equal(encoder.backbone.temporal_embedding, value[:, :5]), key
        elif not key.startswith("final_layer."):
            assert torch.equal(encoder.backbone.state_dict()[key], value), key
    again = LaBraMEncoder(**TINY)
    again.load_init_weights(tmp_path / "labram-pretrained" / "model.safetensors")
    x = torch.randn(2, 19, 1000) * 50
    assert torch.equal(encoder.eval().forward_features(x), again.eval().forward_features(x))


def test_published_labram_weights_that_do_not_fit_are_named(tmp_path):
    _published(tmp_path / "deeper", num_layers=2)
    with pytest.raises(DataError, match=r"unexpected keys \(\d+\): \['blocks.1"):
        LaBraMEncoder(**TINY).load_init_weights(tmp_path / "deeper")
    _published(tmp_path / "wider", mlp_ratio=4.0)
    with pytest.raises(DataError, match=r"shape mismatches.*mlp.*file \(800, 200\) vs encoder \(200, 200\)"):
        LaBraMEncoder(**TINY).load_init_weights(tmp_path / "wider")
    _published(tmp_path / "short", n_times=600)
    with pytest.raises(DataError, match=r"covers 3 patches, the encoder reads 4; set pretrain.model.max_patches <= 3"):
        LaBraMEncoder(**TINY).load_init_weights(tmp_path / "short")


def test_labram_pretrains_from_published_weights_and_transfers(tiny_store, tmp_path):
    _published(tmp_path / "labram-pretrained")
    encoder = pretrain_from_published("labram", tmp_path / "labram-pretrained", {**TINY, "dim": 200}, tiny_store, tmp_path)
    assert isinstance(encoder, LaBraMEncoder) and encoder.input_field == "referential"
    model = create_model("resnet1d_gru", foundation_path=str(tmp_path / "enc.pth"), foundation_mode="frozen",
                         **TINY_RESNET)
    assert model.input_fields == ("chains", "referential")
    assert model(torch.randn(2, 18, 10000) * 50, torch.randn(2, 19, 10000) * 50).shape == (2, contract.N_CLASSES)
    study = small_study(tiny_store, tmp_path)
    assert study["encoder"] == "labram" and len(study["runs"]) == 4


def test_resnet1d_gru_with_a_labram_encoder_exports_with_parity(tmp_path):
    pytest.importorskip("onnxruntime")
    report = export_resnet_with(LaBraMEncoder(**TINY), "finetune", tmp_path)
    assert report["passed"] and report["input_fields"] == ["chains", "referential"]
