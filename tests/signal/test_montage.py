import numpy as np
import torch

from hms_core.contract import BIPOLAR_NAMES, CHANNEL_INDEX, N_CHAINS, RAW_CHANNELS
from hms_core.signal.montage import BipolarMontage, bipolar_montage


def test_montage_matches_a_hand_computation():
    # channel i carries the constant 3**i, so every difference is unique
    raw = np.array([[3.0 ** i] * 4 for i in range(len(RAW_CHANNELS))])  # (20, 4)
    chains = bipolar_montage(raw)
    assert chains.shape == (N_CHAINS, 4)
    v = {name: 3.0 ** i for i, name in enumerate(RAW_CHANNELS)}
    hand = {
        "Fp1-F7": v["Fp1"] - v["F7"], "T5-O1": v["T5"] - v["O1"], "Fp2-F8": v["Fp2"] - v["F8"],
        "C3-P3": v["C3"] - v["P3"], "P4-O2": v["P4"] - v["O2"], "Fz-Cz": v["Fz"] - v["Cz"], "Cz-Pz": v["Cz"] - v["Pz"],
    }
    for name, value in hand.items():
        assert chains[BIPOLAR_NAMES.index(name), 0] == value
    assert BIPOLAR_NAMES[:4] == ("Fp1-F7", "F7-T3", "T3-T5", "T5-O1")
    assert "EKG" not in "".join(BIPOLAR_NAMES)


def test_torch_montage_equals_numpy():
    x = np.random.default_rng(1).standard_normal((3, 20, 50)).astype(np.float32)
    got = BipolarMontage()(torch.from_numpy(x)).numpy()
    assert np.array_equal(got, bipolar_montage(x))
    assert np.array_equal(got[:, 0], x[:, CHANNEL_INDEX["Fp1"]] - x[:, CHANNEL_INDEX["F7"]])
