"""The exported signature keeps every declared input, even one no kept member reads."""
import numpy as np
import onnxruntime as ort
import torch

from hms_core.export.onnx import _write_onnx


class ChainsOnly(torch.nn.Module):
    def forward(self, raw_uv, spec_power):  # spec_power unused, as when only a 1-D member is kept
        return (raw_uv.mean(dim=-1) * 2).softmax(-1)


def test_unused_input_stays_in_the_graph(tmp_path):
    path = tmp_path / "m.onnx"
    example = (torch.randn(2, 6, 8), torch.randn(2, 3, 4))
    _write_onnx(ChainsOnly(), example, path, input_names=["raw_uv", "spec_power"],
                output_names=["probs"], opset=17, metadata={})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["raw_uv", "spec_power"]
    assert session.get_inputs()[1].shape == ["batch", 3, 4]
    raw = np.random.default_rng(0).normal(size=(3, 6, 8)).astype(np.float32)
    probs = session.run(None, {"raw_uv": raw, "spec_power": np.zeros((3, 3, 4), np.float32)})[0]
    np.testing.assert_allclose(probs, ChainsOnly()(torch.from_numpy(raw), None).numpy(), atol=1e-6)
