"""Pretraining objectives: finite losses that backpropagate, masking, views, orders."""
from __future__ import annotations

import pytest
import torch

from hms_core.config import from_mapping
from hms_core import contract
from hms_core.errors import ConfigError
from hms_core.models.foundation import EEGFoundationEncoder
from hms_core.foundation.head import PretrainModel
from hms_core.foundation.objectives import (
    ContrastiveConfig,
    ObjectivesConfig,
    augment_view,
    info_nce,
    masked_reconstruction_loss,
    random_crops,
    random_patch_mask,
)

torch.set_num_threads(1)

TINY = dict(n_times=2000, dim=16, depth=1, heads=2, max_patches=6)
NAMES = ("masked", "contrastive", "temporal")


def only(name: str, **extra) -> ObjectivesConfig:
    return from_mapping(ObjectivesConfig, {n: {"enabled": n == name, **(extra if n == name else {})} for n in NAMES}, "pretrain.objectives")


@pytest.mark.parametrize(
    "name, extra",
    [("masked", {"target": "time"}), ("masked", {"target": "fourier"}), ("masked", {"target": "both"}),
     ("contrastive", {}), ("temporal", {})],
)
def test_each_objective_is_finite_and_backpropagates_to_the_encoder(name, extra):
    torch.manual_seed(0)
    model = PretrainModel(EEGFoundationEncoder(**TINY), only(name, **extra))
    loss, parts = model(torch.randn(4, contract.N_CHAINS, 2000) * 50)
    assert set(parts) == {name} and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.encoder.blocks.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_weights_scale_the_total():
    torch.manual_seed(0)
    x = torch.randn(4, contract.N_CHAINS, 2000) * 50
    encoder = EEGFoundationEncoder(**TINY)
    cfg = from_mapping(ObjectivesConfig, {"masked": {"weight": 2.0}, "temporal": {"weight": 0.25}}, "pretrain.objectives")
    torch.manual_seed(3)
    total, parts = PretrainModel(encoder, cfg)(x)
    expected = 2.0 * parts["masked"] + 1.0 * parts["contrastive"] + 0.25 * parts["temporal"]
    assert torch.allclose(total, expected)


def test_masked_loss_ignores_unmasked_patches():
    torch.manual_seed(0)
    prediction, target = torch.randn(2, 3, 5, 7), torch.randn(2, 3, 5, 7)
    mask = random_patch_mask(2, 3, 5, 0.5)
    assert mask.sum(dim=(1, 2)).tolist() == [8, 8]  # round(0.5 * 15) per window
    base = masked_reconstruction_loss(prediction, target, mask)
    changed = prediction.clone()
    changed[~mask] += 100.0
    assert torch.equal(masked_reconstruction_loss(changed, target, mask), base)
    changed = prediction.clone()
    changed[mask] += 1.0
    assert masked_reconstruction_loss(changed, target, mask) > base
    manual = ((prediction - target) ** 2).mean(-1)[mask].mean()
    assert torch.allclose(base, manual)


def test_info_nce_prefers_matching_views():
    z = torch.randn(8, 16)
    assert info_nce(z, z + 0.01 * torch.randn(8, 16), 0.1) < info_nce(z, torch.randn(8, 16), 0.1)


def test_augment_view_swaps_hemispheres_and_drops_chains():
    x = torch.arange(contract.N_CHAINS, dtype=torch.float32)[None, :, None].expand(2, -1, 10)
    swapped = augment_view(x, ContrastiveConfig(swap_prob=1.0, chain_drop_prob=0.0, noise_uv=0.0))
    assert swapped[0, :, 0].tolist() == [float(i) for i in contract.CHAIN_HEMISPHERE_SWAP]
    dropped = augment_view(x + 1, ContrastiveConfig(swap_prob=0.0, chain_drop_prob=1.0, noise_uv=0.0))
    assert dropped.abs().sum() == 0


def test_random_crops_shift_within_limits():
    x = torch.arange(100, dtype=torch.float32).repeat(5, 2, 1)
    anchor, shifted = random_crops(x, 20, max_shift=3, center=True)
    assert (anchor[:, 0, 0] == 40).all()
    assert ((shifted[:, 0, 0] - anchor[:, 0, 0]).abs() <= 3).all()
    assert torch.equal(shifted[:, :, 1:] - shifted[:, :, :-1], torch.ones(5, 2, 19))


def test_temporal_forecast_sees_only_the_past():
    torch.manual_seed(0)
    model = PretrainModel(EEGFoundationEncoder(**TINY), only("temporal", n_future=2)).eval()
    x = torch.randn(2, contract.N_CHAINS, 1200) * 50  # exactly the 6 patches the encoder reads
    patches = model.encoder.patchify(x)
    changed = patches.clone()
    changed[:, :, -2:] *= 3.0  # the future patches: only the target changes, not the input
    future = torch.zeros(2, contract.N_CHAINS, 6, dtype=torch.bool)
    future[:, :, -2:] = True
    assert torch.equal(model.encoder.encode_patches(patches, mask=future),
                       model.encoder.encode_patches(changed, mask=future))
    assert model._temporal_loss(changed) != model._temporal_loss(patches)
    with pytest.raises(ConfigError, match="n_future"):
        PretrainModel(EEGFoundationEncoder(**TINY), only("temporal", n_future=6))


def test_objectives_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="masked.target.*'spectrum'"):
        from_mapping(ObjectivesConfig, {"masked": {"target": "spectrum"}}, "pretrain.objectives")
    with pytest.raises(ConfigError, match="contrastive: unknown key.*'temp'"):
        from_mapping(ObjectivesConfig, {"contrastive": {"temp": 0.1}}, "pretrain.objectives")
    with pytest.raises(ConfigError, match="at least one"):
        from_mapping(ObjectivesConfig, {n: {"enabled": False} for n in NAMES}, "pretrain.objectives")
