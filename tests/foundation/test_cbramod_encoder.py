"""braindecode's CBraMod as a foundation encoder: the registry, the wrapper's interface, the
published weights format (written here from a random model, never downloaded) and its errors,
and CBraMod through pretraining, resnet1d_gru and the transfer study."""
from __future__ import annotations

import json

import pytest
import torch
from braindecode.models import CBraMod

from hms_core import contract
from hms_core.errors import ConfigError, DataError
from hms_core.models.cbramod_encoder import CBraModEncoder
from hms_core.models.encoder_registry import ENCODER_NAMES, build_encoder, build_from_spec, encoder_spec
from hms_core.models.foundation import EEGFoundationEncoder, save_foundation
from hms_core.models.registry import create_model

from encoder_checks import TINY_RESNET, export_resnet_with, pretrain_from_published, small_study, untrained_parameters

TINY = {"depth": 1, "heads": 4, "mlp_ratio": 1.0, "dropout": 0.0, "max_patches": 4}
# small sizes each registered encoder accepts
TINY_SIZES = {"hms": {"dim": 16, "heads": 2, "depth": 1, "max_patches": 3}, "cbramod": TINY,
              "biot": {"dim": 32, "depth": 1, "heads": 4, "max_patches": 4},
              "labram": {"depth": 1, "heads": 4, "mlp_ratio": 1.0, "max_patches": 4}}


def _published(path, *, n_layer=1, dim_feedforward=200, n_chans=contract.N_EEG_CHANNELS, **config_edits):
    """A random braindecode CBraMod saved as the hub publishes it (model.safetensors + config.json)."""
    torch.manual_seed(1)
    model = CBraMod(n_outputs=4, n_chans=n_chans, n_times=800, sfreq=200, n_layer=n_layer, nhead=4,
                    dim_feedforward=dim_feedforward, drop_prob=0.0)
    model.save_pretrained(path)
    if config_edits:
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**config, **config_edits}))
    return model


@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_every_registered_encoder_has_the_encoder_interface(name):
    encoder = build_encoder(name, **TINY_SIZES[name]).eval()
    x = torch.randn(2, len(encoder.channel_names), contract.WINDOW_SAMPLES) * 50
    patches = encoder.patchify(x)
    assert patches.shape == (2, encoder.n_chans, encoder.n_patches, encoder.patch_samples)
    mask = torch.zeros(patches.shape[:3], dtype=torch.bool)
    mask[:, 0, 1] = True
    tokens = encoder.encode_patches(patches)
    masked = encoder.encode_patches(patches, mask=mask)
    assert tokens.shape == (2, encoder.n_chans * encoder.n_patches, encoder.dim)
    assert not torch.allclose(tokens, masked)  # the mask replaces a patch's content
    assert encoder.forward_features(x).shape == (2, encoder.feature_dim)
    assert sorted(encoder.hemisphere_swap) == list(range(encoder.n_chans))
    rebuilt = build_from_spec(encoder_spec(encoder))
    assert type(rebuilt) is type(encoder) and rebuilt.init_kwargs() == encoder.init_kwargs()


@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_resnet1d_gru_finetuning_any_encoder_gives_every_trainable_parameter_a_gradient(name):
    encoder = build_encoder(name, **TINY_SIZES[name])
    model = create_model("resnet1d_gru", widths=(8,), strides=(2,), stem_width=8, gru_hidden=8,
                         foundation_mode="finetune", foundation_kwargs=encoder_spec(encoder))
    inputs = [torch.randn(2, 19 if field == "referential" else 18, 10000) * 50 for field in model.input_fields]
    model(*inputs).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad  # DistributedDataParallel needs every trainable parameter used
    assert all(model.foundation.get_parameter(n).requires_grad is False for n in encoder.masking_parameters)


def test_every_trainable_cbramod_parameter_gets_a_gradient():
    encoder = CBraModEncoder(**TINY)
    encoder.forward_features(torch.randn(2, 19, 1000) * 50).sum().backward()
    assert not untrained_parameters(encoder)  # DistributedDataParallel needs every trainable parameter used
    assert not any(p.requires_grad for p in encoder.backbone.proj_out.parameters())


def test_unknown_or_unwired_encoder_is_a_config_error():
    with pytest.raises(ConfigError, match=r"pretrain.encoder.*'eegpt'.*hms.*cbramod.*biot.*labram"):
        build_encoder("eegpt")


def test_cbramod_constraints_are_config_errors():
    with pytest.raises(ConfigError, match="pretrain.model.dim.*width 200.*got 64"):
        CBraModEncoder(**{**TINY, "dim": 64})
    with pytest.raises(ConfigError, match="pretrain.model.patch_s.*200 samples"):
        CBraModEncoder(**TINY, patch_s=2.0)
    with pytest.raises(ConfigError, match="19 referential channels.*got n_chans 18"):
        CBraModEncoder(**TINY, n_chans=18)
    with pytest.raises(ConfigError, match="pretrain.model.heads: 3 does not divide"):
        CBraModEncoder(**{**TINY, "heads": 3})


def test_published_cbramod_weights_load_into_the_encoder(tmp_path):
    published = _published(tmp_path / "cbramod-pretrained")
    assert (tmp_path / "cbramod-pretrained" / "model.safetensors").is_file()
    encoder = CBraModEncoder(**TINY)
    encoder.load_init_weights(tmp_path / "cbramod-pretrained")  # the folder, as downloaded
    for key, value in published.state_dict().items():
        if not key.startswith("final_layer."):  # the published task head is skipped
            assert torch.equal(encoder.backbone.state_dict()[key], value), key
    again = CBraModEncoder(**TINY)
    again.load_init_weights(tmp_path / "cbramod-pretrained" / "model.safetensors")  # or the file
    x = torch.randn(2, 19, 1000) * 50
    assert torch.equal(encoder.eval().forward_features(x), again.eval().forward_features(x))


def test_patch_embedding_is_braindecodes_and_exports_to_onnx(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    encoder = CBraModEncoder(**TINY).eval()
    patches = encoder.patchify(torch.randn(2, 19, 1000) * 50)
    mask = torch.zeros(patches.shape[:3], dtype=torch.bool)
    mask[0, 3, 2] = True
    with torch.no_grad():
        for m in (None, mask):
            reference = encoder.backbone.patch_embedding(patches, None if m is None else m.long())
            assert torch.allclose(encoder.embed_patches(patches, m), reference, atol=1e-4)
    x = torch.randn(1, 19, 1000) * 50
    # with gradients on, nn.MultiheadAttention skips its fused fast path, which ONNX lacks
    torch.onnx.export(encoder, (x,), str(tmp_path / "enc.onnx"), dynamo=False, opset_version=17)
    session = onnxruntime.InferenceSession(str(tmp_path / "enc.onnx"))
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert abs(out - encoder(x).detach().numpy()).max() < 1e-4


def test_published_weights_that_do_not_fit_are_named(tmp_path):
    _published(tmp_path / "deeper", n_layer=2)
    with pytest.raises(DataError, match=r"model.safetensors.*unexpected keys \(\d+\): \['encoder.layers.1"):
        CBraModEncoder(**TINY).load_init_weights(tmp_path / "deeper")
    _published(tmp_path / "shallow", n_layer=1)
    with pytest.raises(DataError, match=r"missing keys \(\d+\): \['encoder.layers.1"):
        CBraModEncoder(**{**TINY, "depth": 2}).load_init_weights(tmp_path / "shallow" / "model.safetensors")
    _published(tmp_path / "wider", dim_feedforward=800)
    with pytest.raises(DataError, match=r"shape mismatches.*linear1.weight: file \(800, 200\) vs encoder \(200, 200\)"):
        CBraModEncoder(**TINY).load_init_weights(tmp_path / "wider")
    _published(tmp_path / "other_channels", n_chans=22, chs_info=None)
    with pytest.raises(DataError, match="built for 22 channels, the encoder reads 19"):
        CBraModEncoder(**TINY).load_init_weights(tmp_path / "other_channels")
    names = [{"ch_name": n} for n in (*contract.EEG_CHANNELS[:-1], "A1")]
    _published(tmp_path / "renamed", chs_info=names)
    with pytest.raises(DataError, match=r"missing \['O2'\], extra \['A1'\]"):
        CBraModEncoder(**TINY).load_init_weights(tmp_path / "renamed")
    with pytest.raises(DataError, match="no model.safetensors or pytorch_model.bin"):
        CBraModEncoder(**TINY).load_init_weights(tmp_path)
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(DataError, match="junk.safetensors.*cannot read the weights"):
        CBraModEncoder(**TINY).load_init_weights(tmp_path / "junk.safetensors")


def test_hms_encoder_starts_from_an_earlier_file_and_names_a_mismatch(tmp_path):
    source = EEGFoundationEncoder(dim=16, depth=1, heads=2, max_patches=3)
    save_foundation(source, tmp_path / "enc.pth")
    encoder = EEGFoundationEncoder(dim=16, depth=1, heads=2, max_patches=3)
    encoder.load_init_weights(tmp_path / "enc.pth")
    assert all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(), source.state_dict().values()))
    with pytest.raises(DataError, match=r"shape mismatches \(\d+\).*attn.proj.bias: file \(16,\) vs encoder \(32,\)"):
        EEGFoundationEncoder(dim=32, depth=1, heads=2, max_patches=3).load_init_weights(tmp_path / "enc.pth")


def test_cbramod_pretrains_from_published_weights_and_transfers(tiny_store, tmp_path):
    _published(tmp_path / "cbramod-pretrained")
    encoder = pretrain_from_published("cbramod", tmp_path / "cbramod-pretrained", {**TINY, "dim": 200}, tiny_store, tmp_path)
    assert isinstance(encoder, CBraModEncoder) and encoder.input_field == "referential"
    # resnet1d_gru reads the referential channels for it, beside its own chains.
    model = create_model("resnet1d_gru", foundation_path=str(tmp_path / "enc.pth"), foundation_mode="frozen",
                         **TINY_RESNET)
    assert model.input_fields == ("chains", "referential")
    out = model(torch.randn(2, 18, 10000) * 50, torch.randn(2, 19, 10000) * 50)
    assert out.shape == (2, contract.N_CLASSES)
    rebuilt = create_model("resnet1d_gru", **model.portable_kwargs({"foundation_mode": "frozen", "widths": (8,),
                           "strides": (2,), "stem_width": 8, "gru_hidden": 8}))
    assert isinstance(rebuilt.foundation, CBraModEncoder)
    study = small_study(tiny_store, tmp_path)
    assert study["encoder"] == "cbramod" and len(study["runs"]) == 4
    assert study["pretraining_helps"] is False and not study["verdict"]["enough_runs"]  # 1 fold x 1 seed


def test_resnet1d_gru_with_a_cbramod_encoder_exports_with_parity(tmp_path):
    pytest.importorskip("onnxruntime")
    report = export_resnet_with(CBraModEncoder(**TINY), "frozen", tmp_path)
    assert report["passed"] and report["input_fields"] == ["chains", "referential"]
    assert torch.backends.mha.get_fastpath_enabled()  # restored after the export
