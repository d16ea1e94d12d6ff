"""Augmentation properties: swaps are involutions mapping the right chains; mixup keeps sums."""
import torch

from hms_core import contract
from hms_core.train import augment as aug
from hms_core.train.losses import kl_loss, vote_weights


def test_chain_swap_maps_left_to_right_and_twice_is_identity():
    x = torch.randn(3, contract.N_CHAINS, 50)
    swapped = aug.swap_hemispheres(x, "chains")
    names = contract.BIPOLAR_NAMES
    assert torch.equal(swapped[:, names.index("Fp2-F8")], x[:, names.index("Fp1-F7")])
    assert torch.equal(swapped[:, names.index("P3-O1")], x[:, names.index("P4-O2")])
    assert torch.equal(swapped[:, names.index("Fz-Cz")], x[:, names.index("Fz-Cz")])
    assert torch.equal(aug.swap_hemispheres(swapped, "chains"), x)


def test_referential_swap_maps_homologous_electrodes_and_keeps_the_midline():
    x = torch.randn(3, contract.N_EEG_CHANNELS, 50)
    swapped = aug.swap_hemispheres(x, "referential")
    names = contract.EEG_CHANNELS
    for left, right in (("Fp1", "Fp2"), ("F3", "F4"), ("C3", "C4"), ("P3", "P4"), ("F7", "F8"),
                        ("T3", "T4"), ("T5", "T6"), ("O1", "O2")):
        assert torch.equal(swapped[:, names.index(right)], x[:, names.index(left)])
        assert torch.equal(swapped[:, names.index(left)], x[:, names.index(right)])
    for mid in ("Fz", "Cz", "Pz"):
        assert torch.equal(swapped[:, names.index(mid)], x[:, names.index(mid)])
    assert torch.equal(aug.swap_hemispheres(swapped, "referential"), x)
    # the swap commutes with the montage: chains of swapped channels = swapped chains
    from hms_core.signal.montage import bipolar_montage

    assert torch.equal(aug.swap_hemispheres(bipolar_montage(x), "chains"), bipolar_montage(swapped))


def test_signal_fields_share_one_time_shift():
    torch.manual_seed(0)
    from hms_core.signal.montage import bipolar_montage

    referential = torch.randn(6, contract.N_EEG_CHANNELS, 400)
    batch = {"chains": bipolar_montage(referential), "referential": referential,
             "target": torch.softmax(torch.randn(6, 6), 1)}
    cfg = aug.AugmentConfig(hemisphere_swap_p=0.5, time_shift_max_s=1.0, channel_mask_p=0.0,
                            time_mask_p=0.0, freq_mask_p=0.0)
    out = aug.augment_batch(batch, ("chains", "referential"), cfg)
    assert not torch.equal(out["referential"], referential)  # shifted (and some swapped)
    # chains and referential channels of a window moved together: the montage still holds
    assert torch.allclose(out["chains"], bipolar_montage(out["referential"]), atol=1e-6)


def test_region_swap_maps_ll_rl_lp_rp_and_twice_is_identity():
    x = torch.randn(2, 4, 5, 7)
    swapped = aug.swap_hemispheres(x, "kaggle_spec")
    r = contract.SPEC_REGIONS
    assert torch.equal(swapped[:, r.index("RL")], x[:, r.index("LL")])
    assert torch.equal(swapped[:, r.index("LP")], x[:, r.index("RP")])
    assert torch.equal(aug.swap_hemispheres(swapped, "eeg_spec"), x)


def test_mixup_targets_sum_to_one_and_mix_inputs():
    torch.manual_seed(0)
    target = torch.softmax(torch.randn(8, 6), dim=1)
    x = torch.randn(8, 18, 20)
    perm = torch.randperm(8)
    mixed, t = aug.mixup({"chains": x}, target, 0.3, perm)
    assert torch.allclose(t.sum(dim=1), torch.ones(8))
    assert torch.allclose(mixed["chains"], 0.3 * x + 0.7 * x[perm])


def test_time_shift_is_a_circular_roll_per_row():
    x = torch.arange(2 * 3 * 10, dtype=torch.float32).view(2, 3, 10)
    torch.manual_seed(1)
    y = aug.time_shift(x, 4)
    for i in range(2):
        shifts = [k for k in range(-4, 5) if torch.equal(torch.roll(x[i], k, dims=-1), y[i])]
        assert shifts, "each row must be a roll of the original"


def test_augment_batch_masks_and_keeps_labels():
    torch.manual_seed(0)
    cfg = aug.AugmentConfig(hemisphere_swap_p=1.0, time_shift_max_s=0.0, channel_mask_p=0.5,
                            time_mask_p=1.0, time_mask_max_frac=0.5, freq_mask_p=1.0,
                            freq_mask_max_frac=0.5)
    batch = {"chains": torch.ones(4, 18, 100), "eeg_spec": torch.rand(4, 4, 16, 20) + 5.0,
             "target": torch.softmax(torch.randn(4, 6), 1)}
    out = aug.augment_batch(batch, ("chains", "eeg_spec"), cfg)
    assert torch.equal(out["target"], batch["target"])
    assert (out["chains"] == 0).any()
    spec, mean = out["eeg_spec"], batch["eeg_spec"].mean(dim=(1, 2, 3), keepdim=True)
    assert (spec == mean).any() and (spec != mean).any()  # masked cells get the window mean
    assert (out["chains"] == 1).any()


def test_kl_loss_matches_definition_and_weights():
    logits = torch.randn(5, 6)
    target = torch.softmax(torch.randn(5, 6), 1)
    target[0] = torch.tensor([1.0, 0, 0, 0, 0, 0])
    p = torch.softmax(logits, 1)
    per_row = torch.where(target > 0, target * torch.log(target / p), torch.zeros(())).sum(1)
    assert torch.allclose(kl_loss(logits, target), per_row.mean(), atol=1e-6)
    w = vote_weights(torch.tensor([1.0, 5, 10, 20, 2]), full_weight_votes=10)
    assert torch.allclose(w, torch.tensor([0.1, 0.5, 1.0, 1.0, 0.2]))
    assert torch.allclose(kl_loss(logits, target, weights=w), (per_row * w).sum() / w.sum(),
                          atol=1e-6)


def test_swap_of_some_windows_mirrors_those_and_keeps_the_rest():
    for field, shape in (("chains", (5, contract.N_CHAINS, 40)), ("referential", (5, contract.N_EEG_CHANNELS, 40)),
                         ("kaggle_spec", (5, 4, 3, 7))):
        x = torch.randn(*shape)
        swap = torch.tensor([True, False, True, True, False])
        got = aug.swap_hemispheres_where(x, field, swap)
        mirrored = aug.swap_hemispheres(x, field)
        assert torch.equal(got[swap], mirrored[swap]) and torch.equal(got[~swap], x[~swap])
