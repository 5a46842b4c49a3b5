import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from conftest import run_ort  # noqa: E402
from onnxcompress.config import ExportConfig  # noqa: E402
from onnxcompress.errors import ExportError  # noqa: E402
from onnxcompress.export import TensorSpec, export  # noqa: E402


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        return self.fc(y.mean((2, 3)))


class TwoInputs(torch.nn.Module):
    def forward(self, a, b):
        return a * 2 + b.sum(-1, keepdim=True), a.mean(-1)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_export_matches_torch_with_dynamic_batch(tmp_path, exporter):
    net = Net().eval()
    out = tmp_path / "net.onnx"
    rec = export(net, [TensorSpec("x", (1, 3, 8, 8))], out, ExportConfig(exporter=exporter))
    assert rec.stats["exporter"] == exporter
    assert rec.stats["max_abs_error"] < 1e-4 and rec.stats["checked_inputs"] == 4
    assert not (tmp_path / "net.onnx.data").exists()  # one file for small models
    m = onnx.load(str(out))
    onnx.checker.check_model(m)
    x = np.random.default_rng(3).standard_normal((5, 3, 8, 8)).astype(np.float32)  # batch 5: dynamic axis
    (got,) = run_ort(out, {m.graph.input[0].name: x})
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_several_inputs_and_outputs(tmp_path):
    rec = export(TwoInputs(), [TensorSpec("a", (2, 4)), TensorSpec("b", (2, 3))], tmp_path / "two.onnx",
                 ExportConfig(exporter="torchscript"), output_names=["y", "z"])
    m = onnx.load(str(tmp_path / "two.onnx"))
    assert [i.name for i in m.graph.input] == ["a", "b"] and [o.name for o in m.graph.output] == ["y", "z"]
    assert rec.stats["max_abs_error"] < 1e-6


def test_auto_falls_back_and_records_why(tmp_path):
    class Bad(torch.nn.Module):
        def forward(self, x):
            raise ValueError("cannot trace me")

    with pytest.raises(ExportError, match="every exporter.*cannot trace me"):
        export(Bad(), [TensorSpec("x", (1, 2))], tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()
