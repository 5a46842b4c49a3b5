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


class SeqModel(torch.nn.Module):
    """Token ids and a mask sharing a dynamic sequence axis."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(10, 4)

    def forward(self, ids, mask):
        return (self.emb(ids) * mask.unsqueeze(-1)).sum(1)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_named_dynamic_axes_batch_and_sequence(tmp_path, exporter):
    from onnxcompress.torchload import parse_input_spec

    specs = [parse_input_spec("ids:Nxseq=6:int64"), parse_input_spec("mask:Nxseq=6")]
    rec = export(SeqModel(), specs, tmp_path / "s.onnx", ExportConfig(exporter=exporter))
    assert rec.stats["exporter"] == exporter and rec.stats["max_abs_error"] < 1e-5
    m = onnx.load(str(tmp_path / "s.onnx"))
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input}
    assert dims == {"ids": ["N", "seq"], "mask": ["N", "seq"]}
    ids = np.random.default_rng(0).integers(0, 10, (3, 11)).astype(np.int64)
    mask = np.ones((3, 11), np.float32)
    with torch.no_grad():
        ref = SeqModel()(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(run_ort(tmp_path / "s.onnx", {"ids": ids, "mask": mask})[0], ref, rtol=1e-5, atol=1e-6)


def test_checked_on_provided_inputs_with_errors_recorded(tmp_path):
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32) * 100
    rec = export(Net(), [TensorSpec("x", (1, 3, 8, 8))], tmp_path / "n.onnx", ExportConfig(exporter="torchscript"),
                 check_inputs=[(x,)])
    s = rec.stats
    assert s["checked_provided"] == 1 and s["checked_inputs"] == 5
    assert 0 < s["max_abs_error_provided"] < 1e-2 and 0 <= s["max_rel_error"] < 1e-5
    assert len(s["outputs"]) == 1


def test_auto_falls_back_when_dynamo_output_mismatches(tmp_path, monkeypatch):
    import onnxcompress.export as E

    real = E._export_once

    def corrupt_dynamo(module, args, specs, names, path, config, exporter):
        model = real(module, args, specs, names, path, config, exporter)
        if exporter == "dynamo":  # a wrong weight: the numeric check must catch it
            init = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
            arr = onnx.numpy_helper.to_array(init) + 1.0
            init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
        return model

    monkeypatch.setattr(E, "_export_once", corrupt_dynamo)
    rec = export(Net(), [TensorSpec("x", (1, 3, 8, 8))], tmp_path / "n.onnx")
    assert rec.stats["exporter"] == "torchscript"
    assert "exporter:dynamo" in rec.stats["fallback_reason"] and "differs from torch" in rec.stats["fallback_reason"]
    with pytest.raises(ExportError, match="differs from torch"):
        export(Net(), [TensorSpec("x", (1, 3, 8, 8))], tmp_path / "d.onnx", ExportConfig(exporter="dynamo"))
    assert not (tmp_path / "d.onnx").exists()


def test_hard_coded_batch_is_caught(tmp_path):
    class Flat(torch.nn.Module):
        def forward(self, x):
            n = int(x.shape[0])  # a python int: the tracer records the constant, ONNX is batch-2 only
            return x.reshape(n, 3, 1) * 2

    with pytest.raises(ExportError, match="torchscript"):
        export(Flat(), [TensorSpec("x", (2, 3))], tmp_path / "f.onnx", ExportConfig(exporter="torchscript"))
    rec = export(Flat(), [TensorSpec("x", (2, 3))], tmp_path / "f.onnx",
                 ExportConfig(exporter="torchscript", dynamic_batch=False))
    assert rec.stats["max_abs_error"] == 0


def test_opset_choice(tmp_path):
    rec = export(Net(), [TensorSpec("x", (1, 3, 8, 8))], tmp_path / "n.onnx", ExportConfig(exporter="torchscript", opset=13))
    assert rec.stats["opset"] == 13 == onnx.load(str(tmp_path / "n.onnx")).opset_import[0].version


def test_over_2gb_goes_to_external_data_beside_the_file(tmp_path, monkeypatch):
    import onnxcompress.io as io_mod

    monkeypatch.setattr(io_mod, "MAX_PROTOBUF", 1000)  # pretend the limit is 1 KB: Net's weights exceed it
    rec = export(Net(), [TensorSpec("x", (1, 3, 8, 8))], tmp_path / "n.onnx", ExportConfig(exporter="torchscript"))
    assert rec.stats["external_data"] and (tmp_path / "n.onnx.data").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.onnx", "n.onnx.data"]
    x = np.ones((2, 3, 8, 8), np.float32)
    with torch.no_grad():
        ref = Net().eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_ort(tmp_path / "n.onnx", {"x": x})[0], ref, rtol=1e-5, atol=1e-5)
