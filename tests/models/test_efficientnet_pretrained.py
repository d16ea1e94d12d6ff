"""EfficientNet starts from a local file of timm backbone weights; nothing is downloaded."""
import pytest
import timm
import torch

from hms_core.errors import ConfigError
from hms_core.models.registry import create_model

KW = dict(backbone="test_efficientnet", image_size=48)


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Any attempt to fetch weights fails the test."""
    import timm.models._builder as builder

    def refuse(*args, **kwargs):
        raise AssertionError(f"tried to download weights: {args}")

    for name in ("download_cached_file", "load_state_dict_from_hf", "load_state_dict_from_url"):
        if hasattr(builder, name):
            monkeypatch.setattr(builder, name, refuse)


@pytest.fixture
def weights_file(tmp_path):
    torch.manual_seed(3)
    reference = timm.create_model("test_efficientnet", pretrained=False)  # 3 chans, 1000 classes
    path = tmp_path / "test_efficientnet.pth"
    torch.save(reference.state_dict(), path)
    return path, reference.state_dict()


def test_backbone_weights_come_from_the_file(weights_file):
    path, reference = weights_file
    model = create_model("efficientnet", pretrained=True, pretrained_path=str(path), **KW)
    loaded = model.backbone.state_dict()
    for key, value in reference.items():
        if key.startswith("classifier."):  # 1000 ImageNet classes: a new 6-class head
            assert loaded[key].shape[0] == 6
            continue
        assert torch.equal(loaded[key], value), key
    random_init = create_model("efficientnet", **KW)
    assert not torch.equal(random_init.backbone.conv_stem.weight, reference["conv_stem.weight"])
    assert model(*_inputs()).shape == (2, 6)


def test_stem_is_adapted_to_the_grey_image(weights_file):
    path, reference = weights_file
    model = create_model("efficientnet", pretrained=True, pretrained_path=str(path),
                         position_channels=False, **KW)  # 1 input channel instead of 3
    stem = model.backbone.conv_stem.weight
    assert stem.shape[1] == 1
    torch.testing.assert_close(stem[:, 0], reference["conv_stem.weight"].sum(dim=1))


def test_weights_file_keeps_no_pretrained_keys(weights_file, tmp_path):
    path, _ = weights_file
    kwargs = dict(KW, pretrained=True, pretrained_path=str(path))
    model = create_model("efficientnet", **kwargs)
    portable = model.portable_kwargs(kwargs)
    assert "pretrained" not in portable and "pretrained_path" not in portable
    path.unlink()  # predicting and exporting rebuild the model without the file
    rebuilt = create_model("efficientnet", **portable)
    rebuilt.load_state_dict(model.state_dict())


def test_pretrained_path_errors(tmp_path, weights_file):
    path, _ = weights_file
    with pytest.raises(ConfigError, match="pretrained is false"):
        create_model("efficientnet", pretrained_path=str(path), **KW)
    with pytest.raises(ConfigError, match="not a file"):
        create_model("efficientnet", pretrained=True, pretrained_path=str(tmp_path / "x.pth"), **KW)


def _inputs():
    torch.manual_seed(0)
    return (torch.randn(2, 4, 33, 25), torch.randn(2, 4, 32, 25), torch.randn(2, 4, 100, 300))


def test_unreachable_weights_name_the_setting_that_fixes_it(monkeypatch):
    """Offline with pretrained on and no local file: one ConfigError naming pretrained_path."""
    import timm.models._builder as builder
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("no connection and no cached file")

    for name in ("download_cached_file", "load_state_dict_from_hf", "load_state_dict_from_url"):
        if hasattr(builder, name):
            monkeypatch.setattr(builder, name, offline)
    with pytest.raises(ConfigError, match="pretrained_path"):
        create_model("efficientnet", pretrained=True, **KW)
