"""qeeg: the features measure what their names say, on synthetic signals; standardiser; export."""
import numpy as np
import pytest
import torch

from hms_core import contract
from hms_core.errors import ConfigError
from hms_core.models import create_model
from hms_core.models.qeeg import FEATURE_GROUPS, RunningStandardizer, block_mean

torch.set_num_threads(1)
FS = contract.SAMPLING_RATE_HZ
T = contract.WINDOW_SAMPLES
SECONDS = torch.arange(T) / FS


def _features(x, **kwargs):
    """Named raw features of one window ``x (18, T)`` (all groups)."""
    model = create_model("qeeg", features=FEATURE_GROUPS, **kwargs).eval()
    with torch.no_grad():
        values = model.qeeg_features(x[None].float())[0]
    return model, dict(zip(model.feature_names, values.tolist()))


def _noise(seed=0, std_uv=2.0, n=contract.N_CHAINS):
    return torch.randn(n, T, generator=torch.Generator().manual_seed(seed)) * std_uv


def test_a_10hz_sine_lands_in_alpha_and_welch_matches_scipy():
    signal = pytest.importorskip("scipy.signal")
    x = _noise()
    x[0] += 50 * torch.sin(2 * torch.pi * 10 * SECONDS)
    model, f = _features(x, decimate=1)
    _, halved = _features(x)  # default: features at 100 Hz
    assert halved["chains:full:logpow:Fp1-F7:8-13Hz"] == pytest.approx(np.log(1250), abs=0.05)
    bands = ("0.5-4Hz", "4-8Hz", "8-13Hz", "13-30Hz", "30+Hz")
    rel = {b: f[f"chains:full:relpow:Fp1-F7:{b}"] for b in bands}
    assert max(rel, key=rel.get) == "8-13Hz" and rel["8-13Hz"] > np.log(0.9)
    assert f["chains:center:relpow:Fp1-F7:8-13Hz"] > np.log(0.9)
    # 50 uV amplitude: 1250 uV^2 of power, all of it in the alpha band.
    assert f["chains:full:logpow:Fp1-F7:8-13Hz"] == pytest.approx(np.log(1250), abs=0.05)
    assert f["chains:full:logpow:Fp2-F8:8-13Hz"] < np.log(50)
    # The Welch band powers are scipy's (Hann, 2 s, half overlap, mean removed).
    freqs, psd = signal.welch(x.numpy().astype(np.float64), fs=FS, nperseg=400, noverlap=200)
    df = freqs[1] - freqs[0]
    ref = [psd[..., (freqs >= lo) & (freqs < hi)].sum(-1) * df
           for lo, hi in ((0.5, 4), (4, 8), (8, 13), (13, 30), (30, 101))]
    got = model.extractors["chains"].segment_powers(x[None]).mean(dim=2)[0].numpy()
    np.testing.assert_allclose(got, np.stack(ref, axis=-1), rtol=1e-4)


def test_left_only_signal_gives_positive_asymmetry():
    x = _noise()
    left = list(contract.REGION_CHAIN_ROWS["LL"]) + list(contract.REGION_CHAIN_ROWS["LP"])
    x[left] += 40 * torch.sin(2 * torch.pi * 2 * SECONDS)  # 2 Hz delta on the left only
    _, f = _features(x)
    assert f["chains:full:asym:Fp1-F7/Fp2-F8:0.5-4Hz"] > 3.0  # log P(left) - log P(right)
    assert f["chains:full:asym:LL/RL:0.5-4Hz"] > 3.0
    assert f["chains:center:absasym:LP/RP:0.5-4Hz"] > 3.0
    _, g = _features(x[list(contract.CHAIN_HEMISPHERE_SWAP)])
    assert g["chains:full:asym:LL/RL:0.5-4Hz"] == pytest.approx(-f["chains:full:asym:LL/RL:0.5-4Hz"], abs=1e-3)
    assert g["chains:full:absasym:LL/RL:0.5-4Hz"] == pytest.approx(f["chains:full:absasym:LL/RL:0.5-4Hz"], abs=1e-3)
    # Left-only power is focal: its spread across chains beats a generalised signal's.
    general = _noise()
    general += 40 * torch.sin(2 * torch.pi * 2 * SECONDS)
    _, h = _features(general)
    assert f["chains:full:spread:signals:0.5-4Hz"] > h["chains:full:spread:signals:0.5-4Hz"] + 1.0


def _spike_train(period_s, seed=0):
    x = _noise(seed, std_uv=5.0)
    spike = 150 * torch.exp(-0.5 * ((torch.arange(41) - 20) / 4.0) ** 2)  # ~40 ms wide
    for start in np.arange(0.5, contract.WINDOW_S - 1, period_s):
        i = int(start * FS)
        x[:, i:i + 41] += spike
    return x


@pytest.mark.parametrize("period_s", [0.8, 1.2, 2.0])
def test_periodic_spike_train_raises_periodicity_at_its_period(period_s):
    model, f = _features(_spike_train(period_s))
    _, quiet = _features(_noise(std_uv=5.0))
    extractor = model.extractors["chains"]
    x = block_mean(_spike_train(period_s)[None], model.decimate)  # what the extractor sees
    acf = extractor.envelope_acf(extractor.envelope(x))[0, 0]  # chain Fp1-F7
    at = lambda lag_s: float(acf[int(np.argmin(np.abs(extractor.lags_s - lag_s)))])  # noqa: E731
    first_peak = extractor.lags_s[int(np.argmax(acf.numpy() > 0.8))]
    assert first_peak == pytest.approx(period_s, abs=0.11)  # then again at its multiples
    assert at(period_s) > 0.8 and at(1.5 * period_s) < 0.3
    for span in ("full", "center"):
        assert f[f"chains:{span}:periodicity:Fp1-F7"] > 0.8
        assert f[f"chains:{span}:periodicity:LL"] > quiet[f"chains:{span}:periodicity:LL"] + 0.5
    assert f["chains:full:spikerate:T3-T5"] == pytest.approx(1 / period_s, rel=0.2)
    assert quiet["chains:full:spikerate:T3-T5"] < 0.2
    assert f["chains:full:kurtosis:T3-T5"] > quiet["chains:full:kurtosis:T3-T5"] + 0.5
    assert f["chains:full:sync:all"] > 0.8 > quiet["chains:full:sync:all"] + 0.5
    # The lag bin holding the period beats the bin below it and the quiet window.
    bins = ("0.3-0.6s", "0.6-1s", "1-1.5s", "1.5-2.5s")
    k = next(i for i, b in enumerate(bins) if float(b.split("-")[0]) <= period_s < float(b.split("-")[1][:-1]))
    at_period = f[f"chains:full:envacf:LL:{bins[k]}"]
    assert at_period > f[f"chains:full:envacf:LL:{bins[k - 1]}"] + 0.2
    assert at_period > quiet[f"chains:full:envacf:LL:{bins[k]}"] + 0.2


@pytest.mark.parametrize("level_uv", [0.0, 100.0])
def test_constant_and_zero_inputs_give_finite_features(level_uv):
    x = torch.full((contract.N_CHAINS, T), level_uv)
    ref = torch.full((contract.N_EEG_CHANNELS, T), level_uv)
    model = create_model("qeeg", inputs=["chains", "referential", "average"], features=FEATURE_GROUPS)
    model.eval()
    with torch.no_grad():
        features = model.qeeg_features(x[None], ref[None])
        logits = model(x[None], ref[None])
    assert torch.isfinite(features).all() and torch.isfinite(logits).all()


def test_inputs_option_fields_and_average_reference():
    model = create_model("qeeg", inputs=["chains", "average"])
    assert model.input_fields == ("chains", "referential")
    assert create_model("qeeg", inputs=["average"]).input_fields == ("referential",)
    # The average reference removes what all electrodes share: a common 3 Hz wave.
    ref = _noise(n=contract.N_EEG_CHANNELS) + 60 * torch.sin(2 * torch.pi * 3 * SECONDS)
    both = create_model("qeeg", inputs=["referential", "average"], features=["logtotal"]).eval()
    with torch.no_grad():
        f = dict(zip(both.feature_names, both.qeeg_features(ref[None])[0].tolist()))
    assert f["referential:full:logtotal:Cz"] > np.log(1000)
    assert f["average:full:logtotal:Cz"] < np.log(20)
    with pytest.raises(ConfigError, match="models.qeeg.inputs"):
        create_model("qeeg", inputs=["bipolar"])
    with pytest.raises(ConfigError, match="models.qeeg.features"):
        create_model("qeeg", features=["alpha"])
    with pytest.raises(ConfigError, match="models.qeeg.bands_hz"):
        create_model("qeeg", bands_hz=[[4, 2]])
    with pytest.raises(ConfigError, match="models.qeeg.n_chans"):
        create_model("qeeg", n_chans=19)


def test_running_standardizer_is_the_training_set_scaler():
    torch.manual_seed(0)
    data = torch.randn(300, 5) * torch.tensor([1.0, 10.0, 0.1, 3.0, 1.0]) + 7.0
    norm = RunningStandardizer(5, clip_std=50.0)
    norm.train()
    for batch in data.split(32):
        norm(batch)
    assert torch.allclose(norm.mean, data.mean(0), atol=1e-4)
    assert torch.allclose(norm.var, data.var(0, unbiased=False), rtol=1e-4)
    norm.eval()
    z = norm(data)
    assert torch.allclose(z.mean(0), torch.zeros(5), atol=1e-4)
    assert torch.allclose(z.std(0, unbiased=False), torch.ones(5), atol=1e-2)
    before = norm.mean.clone()
    norm(data * 3)  # eval: statistics frozen
    assert torch.equal(norm.mean, before)
    clipped = RunningStandardizer(5, clip_std=2.0).train()
    assert clipped(data).abs().max() <= 2.0


@pytest.mark.parametrize("inputs", [("chains",), ("chains", "referential", "average")])
def test_qeeg_exports_to_onnx_and_matches_torch(tmp_path, inputs):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = create_model("qeeg", inputs=inputs, hidden=8)
    model.train()
    shapes = {"chains": contract.N_CHAINS, "referential": contract.N_EEG_CHANNELS}
    x = [torch.randn(4, shapes[f], T) * 30 for f in model.input_fields]
    model(*x)  # one training batch: running statistics are no longer the defaults
    model.eval()
    path = tmp_path / "qeeg.onnx"
    torch.onnx.export(model, tuple(x), str(path), dynamo=False, opset_version=17,
                      input_names=list(model.input_fields), output_names=["logits"],
                      dynamic_axes={**{f: {0: "batch"} for f in model.input_fields},
                                    "logits": {0: "batch"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x3 = [torch.cat([v[:2], v[:1] * 2]) for v in x]  # another batch size
    got = session.run(None, {f: v.numpy() for f, v in zip(model.input_fields, x3)})[0]
    with torch.no_grad():
        want = model(*x3).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
