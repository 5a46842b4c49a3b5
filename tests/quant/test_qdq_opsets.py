"""Quantizing models made elsewhere: opset 10-12 exports (no per-channel `axis` there), models below
opset 10, and models that are already quantized."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort
from onnxcompress.cli import main
from onnxcompress.config import QuantConfig
from onnxcompress.data import Dataset
from onnxcompress.errors import InputError
from onnxcompress.quant.qdq import quantize
from onnxcompress.quant.search import quantize_model

torch = pytest.importorskip("torch")


def cnn(tmp_path, opset):
    """A torch CNN (conv-BN-ReLU, strided conv-BN-hardswish, GAP, Linear) exported with the TorchScript
    exporter at `opset`, as older exporters (PaddlePaddle, tf2onnx) ship them."""
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.b1 = torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16)
            self.c2, self.b2 = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.BatchNorm2d(32)
            self.fc = torch.nn.Linear(32, 10)

        def forward(self, x):
            x = torch.relu(self.b1(self.c1(x)))
            x = torch.nn.functional.hardswish(self.b2(self.c2(x)))
            return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))

    net = Net().eval()
    with torch.no_grad():  # non-trivial BN statistics
        for b in (net.b1, net.b2):
            b.running_mean.uniform_(-0.5, 0.5)
            b.running_var.uniform_(0.5, 2.0)
    p = tmp_path / f"cnn{opset}.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 16, 16),), str(p), dynamo=False, opset_version=opset,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}})
    return onnx.load(str(p))


def _data(n=32, seed=0):
    return Dataset([{"x": np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)}], None, "t")


def _loads_and_is_close(m, q):
    onnx.checker.check_model(q, full_check=True)
    x = {"x": np.random.default_rng(7).standard_normal((16, 3, 16, 16)).astype(np.float32)}
    ref = run_ort(m, x)[0]
    for optimize in (False, True):  # ORT's optimizer rewrites Q/DQ into int8 kernels: both must load and agree
        got = run_ort(q, x, optimize=optimize)[0]
        cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
        assert cos.min() > 0.999, (optimize, cos.min())
        assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()


def _axes(q):
    return [n.name for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
            and any(a.name == "axis" for a in n.attribute)]


@pytest.mark.parametrize("opset", [10, 11, 12])
def test_old_opset_gets_per_tensor_weights_with_the_reason(tmp_path, opset):
    m = cnn(tmp_path, opset)
    q, rec = quantize(m, _data(), QuantConfig(mode="static"))  # the raw model, as when the upgrade is not possible
    assert [o.version for o in q.opset_import if o.domain == ""] == [opset]  # never relabelled
    assert _axes(q) == [] and not rec.stats["target"]["per_channel"]
    assert any("per-tensor weights" in n and f"opset {opset}" in n for n in rec.stats["notes"])
    assert any(s.target == "settings" and "opset 13" in s.reason for s in rec.skipped)
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("Conv") == 2 and "Round" not in ops  # opset 10: no opset-11 op from bias quantization
    _loads_and_is_close(m, q)
    from onnxcompress.quant.audit import audit

    a = audit(q)
    assert a["int8_nodes"] == a["compute_nodes"] == 3  # every conv and the Gemm on int8 kernels


@pytest.mark.parametrize("opset", [11, 12])
def test_upgraded_opset_gets_per_channel(tmp_path, opset):
    m = cnn(tmp_path, opset)
    up = onnx.version_converter.convert_version(m, 13)  # what the front door does when it converts exactly
    q, rec = quantize(up, _data(), QuantConfig(mode="static"))
    assert rec.stats["target"]["per_channel"] and rec.stats["notes"] == [] and len(_axes(q)) >= 3
    _loads_and_is_close(m, q)


def test_dynamic_at_opset_11_is_valid(tmp_path):
    m = cnn(tmp_path, 11)
    q, rec = quantize(m, None, QuantConfig(mode="dynamic"))
    assert _axes(q) == [] and any("per-tensor" in n for n in rec.stats["notes"])
    onnx.checker.check_model(q, full_check=True)
    ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"])


def test_below_opset_10_is_refused_in_one_line():
    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 9)])
    m.ir_version = 4
    with pytest.raises(InputError, match=r"opset 9 is below 10.*re-export") as e:
        quantize(m, None, QuantConfig(mode="dynamic"))
    assert "\n" not in str(e.value)


def _ort_dynamic(tmp_path):
    from onnxruntime.quantization import quantize_dynamic

    from test_fallback import outlier_mlp

    src, dst = tmp_path / "mlp.onnx", tmp_path / "mlp.int8.onnx"
    onnx.save_model(outlier_mlp(), str(src))
    quantize_dynamic(str(src), str(dst))
    return dst


def test_already_quantized_is_refused_by_the_library_and_the_cli(tmp_path):
    pre = _ort_dynamic(tmp_path)
    m = onnx.load(str(pre))
    assert "MatMulInteger" in {n.op_type for n in m.graph.node}
    cal = Dataset([{"x": np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)}], None, "t")
    for call in (lambda: quantize(m, cal, QuantConfig(mode="static")),
                 lambda: quantize_model(m, cal, cal, QuantConfig(mode="auto", speed_check_seconds=0))):
        with pytest.raises(InputError) as e:
            call()
        msg = str(e.value)
        assert "already quantized" in msg and "MatMulInteger" in msg and "dynamic int8" in msg
        assert "FP32 original" in msg and "\n" not in msg
    np.savez(tmp_path / "cal.npz", x=cal.chunks[0]["x"])
    before = pre.read_bytes()
    r = CliRunner().invoke(main, ["quantize", str(pre), "-o", str(tmp_path / "q.onnx"), "-c", str(tmp_path / "cal.npz")])
    assert r.exit_code == 2 and "already quantized" in r.stderr and "Traceback" not in r.output
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "q.onnx").exists() and pre.read_bytes() == before


def test_toposort_counts_what_subgraphs_read():
    """ORT's quantizer can leave a node that only an If body reads after the If (silero-vad at opset 15):
    ORT runs it, onnx.checker refuses it. _toposort moves the producer first."""
    from onnxcompress.quant.qdq import _toposort

    body = lambda name: helper.make_graph(  # noqa: E731
        [helper.make_node("Identity", ["late"], [name + "_o"], name=name)], name, [],
        [helper.make_tensor_value_info(name + "_o", TensorProto.FLOAT, [2])])
    nodes = [helper.make_node("If", ["flag"], ["z"], name="if", then_branch=body("a"), else_branch=body("b")),
             helper.make_node("Relu", ["x"], ["late"], name="late")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
                                       helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 15)])
    m.ir_version = 8
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(m)
    assert _toposort(m) and [n.name for n in m.graph.node] == ["late", "if"]
    onnx.checker.check_model(m)
    assert not _toposort(m)  # already in order: untouched
