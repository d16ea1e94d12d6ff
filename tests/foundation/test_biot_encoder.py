"""braindecode's BIOT as a foundation encoder: its tokens against braindecode's own forward, the
masked patches hidden from every overlapping frame, the published weights format (written
here from a random model, never downloaded) and its errors, and BIOT through pretraining,
resnet1d_gru, the transfer study and the ONNX export."""
from __future__ import annotations

import json

import pytest
import torch
from braindecode.models import BIOT

from hms_core import contract
from hms_core.errors import ConfigError, DataError
from hms_core.models.biot_encoder import BIOTEncoder
from hms_core.models.registry import create_model

from encoder_checks import TINY_RESNET, export_resnet_with, pretrain_from_published, small_study, untrained_parameters

TINY = {"dim": 32, "depth": 1, "heads": 4, "dropout": 0.0, "max_patches": 4}
# BIOT's own montage: the 16 TCP chains in 10-10 names, then the two SHHS channels.
BIOT_18_NAMES = ("FP1-F7", "F7-T7", "T7-P7", "P7-O1", "FP2-F8", "F8-T8", "T8-P8", "P8-O2", "FP1-F3", "F3-C3",
                 "C3-P3", "P3-O1", "FP2-F4", "F4-C4", "C4-P4", "P4-O2", "C3-A2", "C4-A1")


def _published(path, *, num_layers=1, embed_dim=32, n_chans=contract.N_CHAINS, n_outputs=2, **config_edits):
    """A random braindecode BIOT saved as the hub publishes it (model.safetensors + config.json)."""
    torch.manual_seed(1)
    model = BIOT(n_outputs=n_outputs, n_chans=n_chans, n_times=2000, sfreq=200, embed_dim=embed_dim, num_heads=4,
                 num_layers=num_layers)
    model.save_pretrained(path)
    if config_edits:
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**config, **config_edits}))
    return model


def test_biot_tokens_are_braindecodes():
    encoder = BIOTEncoder(**TINY).eval()
    x = torch.randn(2, 18, 1000) * 50
    with torch.no_grad():
        reference = encoder.backbone.encoder(encoder.crop(x) / encoder.input_scale_uv)  # torch.stft inside
        assert torch.allclose(encoder.forward_features(x), reference, atol=1e-5)
        tokens = encoder.encode_patches(encoder.patchify(x))
    assert tokens.shape == (2, 18 * 4, 32)


def test_a_masked_patch_leaks_through_no_overlapping_frame():
    encoder = BIOTEncoder(**TINY).eval()
    patches = encoder.patchify(torch.randn(1, 18, 1000) * 50)
    mask = torch.zeros(patches.shape[:3], dtype=torch.bool)
    mask[0, 5, 2] = True
    changed = patches.clone()
    changed[0, 5, 2] = torch.randn(200) * 3
    with torch.no_grad():
        assert torch.equal(encoder.encode_patches(patches, mask=mask), encoder.encode_patches(changed, mask=mask))
        assert not torch.allclose(encoder.encode_patches(patches), encoder.encode_patches(changed))
        # the half-hop frame shared with the patch before sees the hidden one: also hidden
        mask[0, 5, 2], mask[0, 5, 1] = False, True
        assert not torch.allclose(encoder.encode_patches(patches, mask=mask),
                                  encoder.encode_patches(changed, mask=mask))


def test_every_trainable_biot_parameter_gets_a_gradient():
    encoder = BIOTEncoder(**TINY)
    patches = encoder.patchify(torch.randn(2, 18, 1000) * 50)
    mask = torch.zeros(patches.shape[:3], dtype=torch.bool)
    mask[:, 0, 0] = True
    encoder.encode_patches(patches, mask=mask).sum().backward()
    assert not untrained_parameters(encoder)  # DistributedDataParallel needs every trainable parameter used
    assert not any(p.requires_grad for p in encoder.backbone.final_layer.parameters())


def test_biot_constraints_are_config_errors():
    with pytest.raises(ConfigError, match="18 bipolar chains.*got n_chans 16"):
        BIOTEncoder(**TINY, n_chans=16)
    with pytest.raises(ConfigError, match="needs 200 Hz, got 250"):
        BIOTEncoder(**TINY, sfreq=250)
    with pytest.raises(ConfigError, match="pretrain.model.patch_s: biot's patches.*200-sample STFT frames"):
        BIOTEncoder(**TINY, patch_s=2.0)
    with pytest.raises(ConfigError, match="pretrain.model.mlp_ratio.*fixed at 4x.*got 2.0"):
        BIOTEncoder(**TINY, mlp_ratio=2.0)
    with pytest.raises(ConfigError, match="pretrain.model.heads: 3 does not divide biot's width 32"):
        BIOTEncoder(**{**TINY, "heads": 3})
    with pytest.raises(ConfigError, match="pretrain.model.dim: biot needs an even"):
        BIOTEncoder(**{**TINY, "dim": 33, "heads": 3})


def test_published_biot_weights_load_into_the_encoder(tmp_path):
    names = [{"ch_name": n} for n in (*BIOT_18_NAMES[:16], "FZ-CZ", "CZ-PZ")]  # 10-10 names = ours
    published = _published(tmp_path / "biot-pretrained", chs_info=names)
    encoder = BIOTEncoder(**TINY)
    encoder.load_init_weights(tmp_path / "biot-pretrained")
    for key, value in published.state_dict().items():
        if not key.startswith("final_layer."):  # a 2-class published head: ours is kept
            assert torch.equal(encoder.backbone.state_dict()[key], value), key
    again = BIOTEncoder(**TINY)
    again.load_init_weights(tmp_path / "biot-pretrained" / "model.safetensors")
    x = torch.randn(2, 18, 1000) * 50
    assert torch.equal(encoder.eval().forward_features(x), again.eval().forward_features(x))


def test_a_16_channel_biot_checkpoint_fills_the_tcp_chains(tmp_path):
    tcp_names = [{"ch_name": n} for n in BIOT_18_NAMES[:16]]
    published = _published(tmp_path / "prest-16chs", n_chans=16, chs_info=tcp_names)
    encoder = BIOTEncoder(**TINY)
    midline = encoder.backbone.encoder.channel_tokens.weight[16:].detach().clone()  # Fz-Cz, Cz-Pz
    encoder.load_init_weights(tmp_path / "prest-16chs")
    tokens = encoder.backbone.encoder.channel_tokens.weight
    assert torch.equal(tokens[:16], published.encoder.channel_tokens.weight) and torch.equal(tokens[16:], midline)
    state = encoder.backbone.state_dict()
    for key, value in published.state_dict().items():
        if key != "encoder.channel_tokens.weight" and not key.startswith("final_layer."):
            assert torch.equal(state[key], value), key


def test_published_biot_weights_that_do_not_fit_are_named(tmp_path):
    _published(tmp_path / "deeper", num_layers=2)
    with pytest.raises(DataError, match=r"unexpected keys \(\d+\): \['encoder.transformer.layers.layers.1"):
        BIOTEncoder(**TINY).load_init_weights(tmp_path / "deeper")
    _published(tmp_path / "wider", embed_dim=64)
    with pytest.raises(DataError, match=r"shape mismatches.*channel_tokens.weight: file \(18, 64\) vs encoder \(18, 32\)"):
        BIOTEncoder(**TINY).load_init_weights(tmp_path / "wider")
    _published(tmp_path / "other22", n_chans=22, chs_info=None)
    with pytest.raises(DataError, match="built for 22 channels, the encoder reads 18"):
        BIOTEncoder(**TINY).load_init_weights(tmp_path / "other22")
    _published(tmp_path / "tcp_reordered", n_chans=16, chs_info=[{"ch_name": n} for n in BIOT_18_NAMES[15::-1]])
    with pytest.raises(DataError, match="same set in another order"):
        BIOTEncoder(**TINY).load_init_weights(tmp_path / "tcp_reordered")
    _published(tmp_path / "shhs", chs_info=[{"ch_name": n} for n in BIOT_18_NAMES])
    with pytest.raises(DataError, match=r"missing \['Fz-Cz', 'Cz-Pz'\], extra \['C3-A2', 'C4-A1'\]"):
        BIOTEncoder(**TINY).load_init_weights(tmp_path / "shhs")


def test_biot_pretrains_from_published_weights_and_transfers(tiny_store, tmp_path):
    _published(tmp_path / "biot-pretrained")
    encoder = pretrain_from_published("biot", tmp_path / "biot-pretrained", {**TINY, "mlp_ratio": 4.0}, tiny_store, tmp_path)
    assert isinstance(encoder, BIOTEncoder) and encoder.input_field == "chains"
    published = BIOT.from_pretrained(tmp_path / "biot-pretrained")
    assert not torch.equal(encoder.backbone.encoder.channel_tokens.weight,
                           published.encoder.channel_tokens.weight)  # continued pretraining moved it
    model = create_model("resnet1d_gru", foundation_path=str(tmp_path / "enc.pth"), foundation_mode="finetune",
                         **TINY_RESNET)
    assert model.input_fields == ("chains",)  # the encoder reads the chains the model reads
    assert model(torch.randn(2, 18, 10000) * 50).shape == (2, contract.N_CLASSES)
    study = small_study(tiny_store, tmp_path)
    assert study["encoder"] == "biot" and len(study["runs"]) == 4


def test_resnet1d_gru_with_a_biot_encoder_exports_with_parity(tmp_path):
    pytest.importorskip("onnxruntime")
    report = export_resnet_with(BIOTEncoder(**TINY), "finetune", tmp_path)
    assert report["passed"] and report["input_fields"] == ["chains"]
