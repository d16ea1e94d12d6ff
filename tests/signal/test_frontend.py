import io
import warnings

import numpy as np
import pytest
import torch

from hms_core.config import from_mapping
from hms_core.errors import ConfigError
from hms_core.signal.filters import ZeroPhaseFIR, design_kernel
from hms_core.signal.frontend import FrontendConfig, WindowFrontend, kaggle_spec_image, window_shapes
from hms_core.signal.montage import bipolar_montage

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def frontend():
    return WindowFrontend().eval()


def test_shapes_nan_robustness_and_clip(frontend):
    x = torch.randn(2, 20, 10000) * 30 + 200
    x[0, 3, 1000:3000] = float("nan")
    x[1, 0, 5000:5100] = 1e5  # a huge artifact
    with torch.no_grad():
        chains, spec, mel = frontend(x)
    shapes = window_shapes(frontend.cfg)
    assert tuple(chains.shape[1:]) == shapes["chains"] == (18, 10000)
    assert tuple(spec.shape[1:]) == shapes["eeg_spec"] and tuple(mel.shape[1:]) == shapes["eeg_mel"]
    assert all(torch.isfinite(t).all() for t in (chains, spec, mel))
    assert chains.abs().max() <= 1024


def test_chains_equal_numpy_reference(frontend):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1, 20, 10000)) * 20 + 50).astype(np.float32)
    centred = x - x.mean(axis=-1, keepdims=True)
    chains = bipolar_montage(centred)
    kernel = design_kernel(frontend.cfg.filter)
    from scipy.ndimage import convolve1d

    expected = np.clip(convolve1d(chains.astype(np.float64), kernel, axis=-1, mode="mirror"), -1024, 1024)
    with torch.no_grad():
        got = frontend.chains(torch.from_numpy(x)).numpy()
    assert np.abs(got - expected).max() < 1e-3


def test_referential_is_the_filtered_clipped_eeg_and_chains_are_its_differences(frontend):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((2, 20, 10000)) * 20 + 50).astype(np.float32)
    x[0, 5, 3000:3400] = np.nan  # a NaN stretch: it counts as 0 after the channel's mean
    x[1, 2, 7000:7050] = 5e4  # an artifact far above the clip level
    x[:, 19] *= 100  # the EKG channel never reaches the referential field
    finite = ~np.isnan(x[:, :19])
    mean = np.where(finite, x[:, :19], 0).sum(-1, keepdims=True) / finite.sum(-1, keepdims=True)
    centred = np.where(finite, x[:, :19] - mean, 0).astype(np.float64)
    from scipy.ndimage import convolve1d

    filtered = convolve1d(centred, design_kernel(frontend.cfg.filter), axis=-1, mode="mirror")
    with torch.no_grad():
        chains, referential = frontend.signals(torch.from_numpy(x))
        fields = frontend.fields(torch.from_numpy(x), ("referential", "eeg_mel"))
    assert tuple(referential.shape[1:]) == window_shapes(frontend.cfg)["referential"] == (19, 10000)
    assert np.abs(referential.numpy() - np.clip(filtered, -1024, 1024)).max() < 1e-3
    assert referential.abs().max() == 1024  # the artifact is clipped
    assert np.abs(chains.numpy() - np.clip(bipolar_montage(filtered), -1024, 1024)).max() < 1e-3
    assert torch.equal(fields["referential"], referential) and list(fields) == ["referential", "eeg_mel"]
    with pytest.raises(ValueError, match="kaggle_spec"):
        frontend.fields(torch.from_numpy(x), ("kaggle_spec",))


def test_onnx_export_matches_torch(frontend):
    import onnxruntime

    class Graph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.frontend = frontend

        def forward(self, raw_uv, power):
            return (*self.frontend(raw_uv), self.frontend.referential(raw_uv), kaggle_spec_image(power))

    raw = torch.randn(2, 20, 10000) * 30
    power = torch.rand(2, 300, 400) * 50
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Graph(), (raw, power), buffer, opset_version=17, dynamo=False,
                          input_names=["raw_uv", "power"], dynamic_axes={"raw_uv": {0: "b"}, "power": {0: "b"}})
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    x = (torch.randn(3, 20, 10000) * 30).numpy()
    x[1, 4, 200:900] = np.nan
    p = (torch.rand(3, 300, 400) * 50).numpy()
    p[0, 3, 9] = np.nan
    outputs = session.run(None, {"raw_uv": x, "power": p})
    with torch.no_grad():
        expected = Graph()(torch.from_numpy(x), torch.from_numpy(p))
    for got, want in zip(outputs, expected):
        assert got.shape == tuple(want.shape)
        assert np.abs(got - want.numpy()).max() < 1e-3


def test_frontend_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match="colour"):
        from_mapping(FrontendConfig, {"colour": 1}, "preprocessing")
    with pytest.raises(ConfigError, match="clip_uv"):
        from_mapping(FrontendConfig, {"clip_uv": -1}, "preprocessing")
    with pytest.raises(ConfigError, match="hop"):
        from_mapping(FrontendConfig, {"spectrogram": {"hop": 0}}, "preprocessing")
    cfg = from_mapping(FrontendConfig, {"filter": {"h_freq_hz": 40.0}, "spectrogram": {"n_fft": 256, "fmax_hz": 40.0}}, "preprocessing")
    assert window_shapes(cfg)["eeg_spec"] == (4, 51, 250)
    assert isinstance(WindowFrontend(cfg).fir, ZeroPhaseFIR)
