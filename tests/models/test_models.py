"""Every registered model: shapes, feature/head split, gradients; registry behaviour."""
import numpy as np
import pytest
import torch

from hms_core import contract
from hms_core.errors import ConfigError
from hms_core.models import create_model, list_models
from hms_core.models.efficientnet import (N_POSITION_CHANNELS, central_crop, image_size_for_epoch,
                                          pool_time, standardise_log_power)

torch.set_num_threads(1)

# Tiny settings per registered model; a newly registered model must be added here.
TINY_KWARGS = {
    "resnet1d_gru": dict(stem_width=8, widths=(8, 16), strides=(4, 4), gru_hidden=8,
                         input_downsample=4),
    "efficientnet": dict(backbone="test_efficientnet", image_size=48),
    "foundation_linear": dict(dim=16, depth=1, heads=2, max_patches=4),
    "qeeg": dict(inputs=("chains", "average"), hidden=4),
    "eeg_image": dict(backbone="test_efficientnet", image_size=48),
}
FIELD_SHAPES = {
    "chains": (contract.N_CHAINS, contract.WINDOW_SAMPLES),
    "referential": (contract.N_EEG_CHANNELS, contract.WINDOW_SAMPLES),
    "eeg_spec": (4, 32, 48),
    "eeg_mel": (4, 16, 48),
    "kaggle_spec": (4, contract.SPEC_N_FREQS, contract.SPEC_WINDOW_ROWS),
}


def _inputs(model, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *FIELD_SHAPES[f], generator=g) * (50 if f in ("chains", "referential") else 1)
            for f in model.input_fields]


def test_every_registered_model_has_test_settings():
    assert set(list_models()) <= set(TINY_KWARGS), "add the new model to TINY_KWARGS"


@pytest.mark.parametrize("name", sorted(TINY_KWARGS))
def test_forward_shapes_features_head_and_grads(name):
    if name not in list_models():
        pytest.skip(f"{name} is not registered in this checkout")
    torch.manual_seed(0)
    model = create_model(name, **TINY_KWARGS[name])
    assert isinstance(model.input_fields, tuple) and model.input_fields
    inputs = _inputs(model)
    model.eval()
    logits = model(*inputs)
    assert logits.shape == (2, contract.N_CLASSES)
    features = model.forward_features(*inputs)
    assert features.ndim == 2 and features.shape[0] == 2
    assert torch.allclose(model.forward_head(features), logits, atol=1e-5)
    model.train()
    model(*inputs).logsumexp(dim=1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert len(grads) >= 0.9 * n_trainable  # (a mask token may sit unused outside pretraining)
    assert all(torch.isfinite(g).all() for g in grads)


def test_registry_errors_and_none_kwargs():
    with pytest.raises(ConfigError, match="registered models: .*resnet1d_gru"):
        create_model("no_such_model")
    with pytest.raises(ConfigError, match="models.resnet1d_gru"):
        create_model("resnet1d_gru", not_a_kwarg=3)
    m = create_model("resnet1d_gru", gru_hidden=None, **{k: v for k, v in
                     TINY_KWARGS["resnet1d_gru"].items() if k != "gru_hidden"})
    assert m.gru.hidden_size == 128  # None did not override the default


def test_resnet_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    a = create_model("resnet1d_gru", dropout=0.0, **TINY_KWARGS["resnet1d_gru"])
    b = create_model("resnet1d_gru", dropout=0.0, **TINY_KWARGS["resnet1d_gru"])
    b.load_state_dict(a.state_dict())
    b.set_grad_checkpointing(True)
    x = _inputs(a)
    for m in (a, b):
        m.train()
        m(*x).square().mean().backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), n


def test_resnet_foundation_branch_frozen_and_portable(tmp_path):
    foundation = pytest.importorskip("hms_core.models.foundation")
    enc = foundation.EEGFoundationEncoder(dim=16, depth=1, heads=2, max_patches=4)
    path = tmp_path / "enc.pth"
    foundation.save_foundation(enc, path)
    kw = dict(TINY_KWARGS["resnet1d_gru"], foundation_path=str(path), foundation_mode="frozen")
    model = create_model("resnet1d_gru", **kw)
    assert model.feature_dim == 4 * 8 + 16
    x = _inputs(model)
    model.train()
    assert not model.foundation.training
    model(*x).sum().backward()
    assert all(p.grad is None for p in model.foundation.parameters())
    assert model.head.weight.grad is not None
    rebuilt = create_model("resnet1d_gru", **model.portable_kwargs(kw))
    rebuilt.load_state_dict(model.state_dict())
    model.eval(), rebuilt.eval()
    assert torch.equal(model(*x), rebuilt(*x))
    with pytest.raises(ConfigError, match="foundation_path"):
        create_model("resnet1d_gru", foundation_mode="frozen")


@pytest.mark.parametrize("montage, fields, n_chans", [
    ("chains", ("chains",), 18), ("referential", ("referential",), 19),
    ("average", ("referential",), 19), ("chains+average", ("chains", "referential"), 37)])
def test_resnet_montages_read_their_fields_and_export(montage, fields, n_chans, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from hms_core.models.resnet1d_gru import montage_signals

    torch.manual_seed(0)
    model = create_model("resnet1d_gru", montage=montage, **TINY_KWARGS["resnet1d_gru"]).eval()
    assert model.input_fields == fields and model.n_chans == n_chans == model.stem[0].in_channels
    x = _inputs(model, batch=3)
    assert model(*x).shape == (3, contract.N_CLASSES)
    named = dict(zip(fields, x))
    signals = montage_signals(montage, named)
    if montage in ("average", "chains+average"):
        average = signals[:, -19:]
        assert torch.allclose(average.mean(dim=1), torch.zeros(3, contract.WINDOW_SAMPLES), atol=1e-4)
        # a signal common to every electrode (generalised) vanishes from the average reference
        common = named["referential"] + 40.0 * torch.randn(3, 1, contract.WINDOW_SAMPLES)
        assert torch.allclose(montage_signals(montage, {**named, "referential": common})[:, -19:], average, atol=1e-3)
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, tuple(x), str(path), dynamo=False, opset_version=17, input_names=list(fields),
                      output_names=["logits"], dynamic_axes={n: {0: "batch"} for n in (*fields, "logits")})
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {f: t.numpy() for f, t in zip(fields, x)})[0]
    np.testing.assert_allclose(got, model(*x).detach().numpy(), atol=1e-4)


def test_resnet_montage_errors_and_foundation_reads_chains(tmp_path):
    with pytest.raises(ConfigError, match="montage.*'bipolar'.*'chains', 'referential', 'average'"):
        create_model("resnet1d_gru", montage="bipolar")
    with pytest.raises(ConfigError, match="n_chans.*average"):
        create_model("resnet1d_gru", montage="average", n_chans=18)
    foundation = pytest.importorskip("hms_core.models.foundation")
    path = tmp_path / "enc.pth"
    foundation.save_foundation(foundation.EEGFoundationEncoder(dim=16, depth=1, heads=2, max_patches=4), path)
    model = create_model("resnet1d_gru", montage="average", foundation_path=str(path), foundation_mode="frozen",
                         **TINY_KWARGS["resnet1d_gru"]).eval()
    assert model.input_fields == ("referential", "chains")  # the encoder was pretrained on chains
    assert model(*_inputs(model)).shape == (2, contract.N_CLASSES)


def test_efficientnet_image_and_progressive_sizes():
    model = create_model("efficientnet", **TINY_KWARGS["efficientnet"])
    image = model.build_image(*_inputs(model))
    assert image.shape == (2, 1 + N_POSITION_CHANNELS, 48, 48)
    model.image_size = 60
    assert model.build_image(*_inputs(model)).shape == (2, 1 + N_POSITION_CHANNELS, 60, 60)
    assert [image_size_for_epoch(e, 4, (32, 64)) for e in range(4)] == [32, 32, 64, 64]
    with pytest.raises(ConfigError, match="backbone"):
        create_model("efficientnet", backbone="efficientnet_b99")


def test_resnet_exports_to_onnx_and_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = create_model("resnet1d_gru", **TINY_KWARGS["resnet1d_gru"]).eval()
    x = _inputs(model)[0]
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                      input_names=["chains"], output_names=["logits"],
                      dynamic_axes={"chains": {0: "batch"}, "logits": {0: "batch"}})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x3 = torch.cat([x, x[:1]])
    got = sess.run(None, {"chains": x3.numpy()})[0]
    np.testing.assert_allclose(got, model(x3).detach().numpy(), atol=1e-4)


def test_efficientnet_standardisation_keeps_left_right_and_ignores_floor():
    torch.manual_seed(0)
    spec = torch.randn(2, 4, 10, 20) + 7.0
    spec[:, 0] += 2.0  # LL louder than RL: must survive (one statistic over all regions)
    floored = spec.clone()
    floored[1, :, :, :5] = -9.21  # a zero-power / NaN stretch at the log floor
    z = standardise_log_power(floored)
    assert z[:, 0].mean() > z[:, 1].mean() + 1.0
    assert torch.all(z[1, :, :, :5] == 0)
    # the stretch does not change the scale of the rest of the window
    ref = standardise_log_power(spec[1:, :, :, 5:])
    assert torch.allclose(z[1, :, :, 5:].std(), ref.std(), atol=0.05)
    assert z.abs().max() <= 6.0


def test_efficientnet_image_is_the_worker_tile_plus_constant_channels():
    model = create_model("efficientnet", **TINY_KWARGS["efficientnet"])
    inputs = _inputs(model, batch=3)
    grey = model.tile_image(*inputs)
    image = model.build_image(*inputs)
    assert grey.shape == (3, 1, 48, 48) and torch.equal(image[:, :1], grey)
    assert torch.equal(model.image_channels(grey), image)


def test_standardise_log_power_is_the_masked_z_score():
    torch.manual_seed(1)
    spec = torch.randn(3, 4, 6, 9) * 2 + 5
    spec[0, :, :, :3] = spec[0].min()  # a floor stretch
    spec[2] = 1.0  # a constant window: everything at its minimum
    valid = (spec > spec.amin(dim=(1, 2, 3), keepdim=True) + 1e-3).float()
    count = valid.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1.0)
    mean = (spec * valid).sum(dim=(1, 2, 3), keepdim=True) / count
    std = (((spec - mean) ** 2 * valid).sum(dim=(1, 2, 3), keepdim=True) / count).sqrt()
    expected = ((spec - mean) / (std + 1e-6) * valid).clamp(-6, 6)
    got = standardise_log_power(spec)
    assert torch.allclose(got, expected, atol=1e-6) and torch.all(got[2] == 0)


def test_efficientnet_position_channels():
    model = create_model("efficientnet", **TINY_KWARGS["efficientnet"])
    image = model.build_image(*_inputs(model))
    within, overall = image[0, 1, :, 0], image[0, 2, :, 0]
    tile = image.shape[2] // 4
    assert torch.allclose(within[:tile], within[tile:2 * tile])  # same ramp in every region
    assert within[0] == -1 and within[tile - 1] == 1
    assert overall[0] == -1 and overall[-1] == 1 and torch.all(overall.diff() > 0)
    assert torch.equal(image[0, 1:], image[1, 1:])  # independent of the window
    plain = create_model("efficientnet", position_channels=False, **TINY_KWARGS["efficientnet"])
    assert plain.build_image(*_inputs(plain)).shape[1] == 1


def test_central_crop_keeps_the_labelled_centre_and_pool_time_averages():
    spec = torch.arange(300, dtype=torch.float32).expand(2, 4, 3, 300)  # column index as value
    mid = central_crop(spec, 60.0, 600.0)  # 60 s of a 600 s spectrogram: 30 columns
    assert mid.shape[-1] == 30 and mid[0, 0, 0, 0] == 135 and mid[0, 0, 0, -1] == 164
    assert central_crop(spec, 900.0, 600.0).shape[-1] == 300
    assert central_crop(spec, 0.1, 600.0).shape[-1] == 1
    pooled = pool_time(mid, 3)
    assert pooled.shape == (2, 4, 3, 3)
    assert torch.allclose(pooled[0, 0, 0], torch.tensor([139.5, 149.5, 159.5]))
    assert torch.allclose(pool_time(mid, 1)[..., 0], mid.mean(dim=-1))
    # Gap cells are left out of the means; a column that is all gap stays at the floor.
    gappy = torch.full((1, 4, 2, 6), 3.0)
    gappy[..., :2] = -9.0
    gappy[..., 2] = -9.0 * torch.tensor([1.0, 0.0]).view(1, 1, 2)  # one gap cell, one 0
    pooled = pool_time(gappy, 2, valid=gappy > -8.0)
    assert torch.equal(pooled[0, 0, :, 0], torch.tensor([-9.0, 0.0]))
    assert torch.equal(pooled[0, 0, :, 1], torch.tensor([3.0, 3.0]))


def test_efficientnet_crop_and_time_bins_change_what_the_image_shows():
    kw = dict(TINY_KWARGS["efficientnet"], crop_s={"kaggle_spec": 60.0}, time_bins=1)
    model = create_model("efficientnet", **kw)
    inputs = _inputs(model)
    image = model.build_image(*inputs)
    assert image.shape == (2, 1 + N_POSITION_CHANNELS, 48, 48)
    # One time bin: every column of a source's tile is the same.
    tile = image[:, 0, :, :16]
    assert torch.allclose(tile, tile[..., :1].expand_as(tile), atol=1e-5)
    # Outside the central minute, the 10-minute spectrogram no longer matters.
    edited = [x.clone() for x in inputs]
    k = model.input_fields.index("kaggle_spec")
    edited[k][..., :100] += 5.0 * torch.randn_like(edited[k][..., :100])
    assert torch.equal(model.build_image(*edited), image)
    edited[k][..., 150] += 50.0
    assert not torch.equal(model.build_image(*edited), image)
    with pytest.raises(ConfigError, match="crop_s"):
        create_model("efficientnet", crop_s={"chains": 10}, **TINY_KWARGS["efficientnet"])
    with pytest.raises(ConfigError, match="time_bins"):
        create_model("efficientnet", time_bins=-1, **TINY_KWARGS["efficientnet"])
