"""eeg_image: rows in the documented order, gain-free scaling, central crop, ONNX parity,
backbone weights from a local file only."""
import numpy as np
import pytest
import timm
import torch

from hms_core import contract
from hms_core.errors import ConfigError
from hms_core.models import create_model
from hms_core.models.eeg_image import AVERAGE_ROW_ORDER, auto_strips, robust_scale, stack_strips

torch.set_num_threads(1)
KW = dict(backbone="test_efficientnet", image_size=48)
T = contract.WINDOW_SAMPLES


def _window(batch=2, seed=0, n=contract.N_CHAINS):
    g = torch.Generator().manual_seed(seed)
    return 30.0 * torch.randn(batch, n, T, generator=g)


def test_rows_are_grouped_by_region_and_strips_hold_consecutive_time():
    model = create_model("eeg_image", montage="chains", crop_s=10.0, downsample=4, **KW)
    assert model.input_fields == ("chains",)
    assert model.n_strips == auto_strips(18, 500) == 5  # 18 x 500 -> 90 x 100: near square
    chains = 0.01 * _window()
    rt = contract.BIPOLAR_NAMES.index("F8-T4")  # an RL chain: row 5 by the docstring
    chains[:, rt] += 200.0 * torch.sin(torch.arange(T) * 2 * torch.pi * 2.0 / contract.SAMPLING_RATE_HZ)
    rows = model.signal_rows(chains)
    assert rows.shape == (2, 18, 500)
    loud = rows.abs().mean(dim=-1).argmax(dim=1)
    assert loud.tolist() == [5, 5] and contract.REGION_CHAIN_ROWS["RL"][1] == 5
    strips = stack_strips(rows, model.n_strips)
    assert strips.shape == (2, 1, 90, 100)
    for k in range(5):  # image row k * 18 + r is row r in time segment k
        assert torch.equal(strips[:, 0, k * 18 + 5], rows[:, 5, k * 100:(k + 1) * 100])
    image = model.build_image(chains)
    assert image.shape == (2, 2, 48, 48)
    pos = image[0, 1, :, 0]
    assert pos.min() >= -1 and pos.max() <= 1 and torch.equal(image[0, 1], image[1, 1])


def test_average_reference_rows_follow_the_chains_by_region():
    model = create_model("eeg_image", montage="chains+average", **KW)
    assert model.input_fields == ("chains", "referential") and model.n_rows == 37
    chains, ref = 0.01 * _window(), 0.01 * _window(seed=1, n=contract.N_EEG_CHANNELS)
    ref[:, contract.EEG_CHANNELS.index("T4")] += 300.0 * torch.randn(2, T)
    rows = model.signal_rows(chains, ref)
    # T4 is the 3rd channel of the right temporal group: row 18 + 5 + 2 = 25
    assert AVERAGE_ROW_ORDER[7] == contract.EEG_CHANNELS.index("T4")
    assert rows.abs().mean(dim=-1).argmax(dim=1).tolist() == [25, 25]
    assert model(chains, ref).shape == (2, contract.N_CLASSES)


def test_robust_scaling_ignores_gain_and_offset_and_clips():
    x = _window()
    a = robust_scale(x, clip=10.0)
    b = robust_scale(7.5 * x + 40.0, clip=10.0)
    assert torch.allclose(a, b, atol=1e-4)
    assert torch.allclose(a.abs().flatten(1).median(dim=1).values, torch.ones(2), atol=1e-2)
    # one window's scale does not depend on another's
    assert torch.allclose(robust_scale(torch.cat([x[:1], 100 * x[1:]]), 10.0), a, atol=1e-4)
    spiky = x.clone()
    spiky[:, 3, 100] = 1e5
    assert robust_scale(spiky, clip=10.0).max() == 10.0
    # a chain twice as loud stays twice as loud (one scale per window, not per chain)
    louder = x.clone()
    louder[:, 0] *= 2.0
    z = robust_scale(louder, clip=1e6)
    ratio = z[:, 0].abs().mean(dim=-1) / z[:, 1:].abs().mean(dim=(1, 2))
    assert torch.all((ratio > 1.7) & (ratio < 2.3))
    assert torch.equal(robust_scale(torch.zeros(1, 18, 50), 10.0), torch.zeros(1, 18, 50))


def test_crop_keeps_only_the_centre():
    model = create_model("eeg_image", crop_s=10.0, **KW).eval()
    chains = _window()
    image = model.build_image(chains)
    edited = chains.clone()
    centre = slice(contract.CENTER_START_SAMPLE, contract.CENTER_START_SAMPLE + contract.CENTER_SAMPLES)
    edited[..., :centre.start] = 500.0 * torch.randn_like(edited[..., :centre.start])
    edited[..., centre.stop:] = 0.0
    assert torch.equal(model.build_image(edited), image)
    edited[:, 0, centre.start + 1000] += 5000.0
    assert not torch.equal(model.build_image(edited), image)
    whole = create_model("eeg_image", crop_s=50.0, downsample=10, **KW)
    assert whole.signal_rows(chains).shape == (2, 18, 1000)


def test_errors():
    with pytest.raises(ConfigError, match="montage.*'average'"):
        create_model("eeg_image", montage="average", **KW)
    with pytest.raises(ConfigError, match="crop_s"):
        create_model("eeg_image", crop_s=0, **KW)
    with pytest.raises(ConfigError, match="n_strips"):
        create_model("eeg_image", n_strips=0, **KW)
    with pytest.raises(ConfigError, match="models.eeg_image.backbone"):
        create_model("eeg_image", backbone="no_such_net")


@pytest.mark.parametrize("montage", ["chains", "chains+average"])
def test_onnx_export_matches_torch(montage, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = create_model("eeg_image", montage=montage, **KW).eval()
    fields = model.input_fields
    x = [_window(n=contract.N_CHAINS if f == "chains" else contract.N_EEG_CHANNELS, seed=i)
         for i, f in enumerate(fields)]
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, tuple(x), str(path), dynamo=False, opset_version=17,
                      input_names=list(fields), output_names=["logits"],
                      dynamic_axes={n: {0: "batch"} for n in (*fields, "logits")})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x3 = [torch.cat([t, 3.0 * t[:1]]) for t in x]  # another batch size, another gain
    got = sess.run(None, {f: t.numpy() for f, t in zip(fields, x3)})[0]
    np.testing.assert_allclose(got, model(*x3).detach().numpy(), atol=1e-4)


def test_backbone_weights_come_from_a_local_file_only(tmp_path, monkeypatch):
    import timm.models._builder as builder

    def refuse(*args, **kwargs):
        raise AssertionError(f"tried to download weights: {args}")

    for name in ("download_cached_file", "load_state_dict_from_hf", "load_state_dict_from_url"):
        if hasattr(builder, name):
            monkeypatch.setattr(builder, name, refuse)
    torch.manual_seed(3)
    reference = timm.create_model("test_efficientnet", pretrained=False).state_dict()
    path = tmp_path / "w.pth"
    torch.save(reference, path)
    kwargs = dict(KW, pretrained=True, pretrained_path=str(path))
    model = create_model("eeg_image", **kwargs)
    loaded = model.backbone.state_dict()
    assert torch.equal(loaded["bn1.weight"], reference["bn1.weight"])
    # stem adapted to 2 channels (signal + row position) from the 3 RGB ones
    assert loaded["conv_stem.weight"].shape[1] == 2
    assert loaded["classifier.weight"].shape[0] == contract.N_CLASSES
    portable = model.portable_kwargs(kwargs)
    assert "pretrained" not in portable and "pretrained_path" not in portable
    with pytest.raises(ConfigError, match="pretrained is false"):
        create_model("eeg_image", pretrained_path=str(path), **KW)
