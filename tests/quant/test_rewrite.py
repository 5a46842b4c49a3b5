"""HardSwish written out before static quantization (quant/rewrite.py): ORT has no int8 HardSwish, its quantizer
expands it into float HardSigmoid + Mul between DQ and Q; written out as x * Clip(x + 3, 0, 6) / 6 it runs as
QLinearAdd + QLinearMul. Structure (what ORT's optimizer runs) and numerics against ORT with optimizations off;
never a time."""
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort
from onnxcompress.config import QuantConfig
from onnxcompress.data import Dataset
from onnxcompress.quant.audit import audit
from onnxcompress.quant.qdq import quantize
from onnxcompress.quant.rewrite import write_out_hardswish
from onnxcompress.runtime.session import make_session


def hswish_net():
    """Conv(3->16, 3x3) -> HardSwish -> Conv(16->16, 1x1) -> HardSwish -> Conv(16->8, 1x1), opset 14."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.5).astype(np.float32), f"w{i}")
             for i, s in enumerate([(16, 3, 3, 3), (16, 16, 1, 1), (8, 16, 1, 1)])]
    inits += [numpy_helper.from_array(rng.standard_normal(s[0]).astype(np.float32), f"b{i}")
              for i, s in enumerate([(16,), (16,), (8,)])]
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("HardSwish", ["c0"], ["h0"], name="hs0"),
             helper.make_node("Conv", ["h0", "w1", "b1"], ["c1"], name="conv1"),
             helper.make_node("HardSwish", ["c1"], ["h1"], name="hs1"),
             helper.make_node("Conv", ["h1", "w2", "b2"], ["y"], name="conv2")]
    g = helper.make_graph(nodes, "hs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 16, 16])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    m.ir_version = 8
    return m


def _x(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32) * 2.0


def test_written_out_hardswish_equals_hardswish():
    m = hswish_net()
    w, rec = write_out_hardswish(m)
    onnx.checker.check_model(w, full_check=True)
    assert rec.stats["written_out"] == 2 and len(rec.changed) == 2
    assert not any(n.op_type == "HardSwish" for n in w.graph.node)
    assert [n.op_type for n in w.graph.node].count("Div") == 2
    assert {n.name for n in w.graph.node if n.op_type == "Div"} == {"hs0", "hs1"}  # names and outputs kept
    assert any(n.op_type == "HardSwish" for n in m.graph.node)  # the input model is left alone
    x = {"x": _x(4)}
    ref, got = run_ort(m, x)[0], run_ort(w, x)[0]
    assert np.abs(ref - got).max() <= 1e-5 * np.abs(ref).max()
    kept, rec = write_out_hardswish(m, keep=frozenset({"hs1"}))
    assert [n.name for n in kept.graph.node if n.op_type == "HardSwish"] == ["hs1"] and rec.stats["written_out"] == 1


def test_static_int8_runs_hardswish_on_int8_kernels():
    m = hswish_net()
    q, rec = quantize(m, Dataset([{"x": _x(32)}], None, "t"), QuantConfig(mode="static", target="avx2"))
    assert rec.stats["hardswish"]["written_out"] == 2
    assert not any(n.op_type in ("HardSwish", "HardSigmoid") for n in q.graph.node)
    assert not any(n.op_type == "Div" for n in q.graph.node)  # the /6 folded into the quantization scale
    a = audit(q)
    assert a["float_islands"] == [] and a["int8_nodes"] == a["compute_nodes"] == 3
    with tempfile.TemporaryDirectory() as d:  # what ORT's optimizer makes of it
        make_session(q, threads=1, optimized_path=str(Path(d) / "opt.onnx"))
        ops = [n.op_type for n in onnx.load(str(Path(d) / "opt.onnx")).graph.node]
    assert ops.count("QLinearConv") == 3 and ops.count("QLinearAdd") == 2 and ops.count("QLinearMul") == 2
    assert not any(op in ("HardSigmoid", "HardSwish", "Mul", "Div", "Add") for op in ops)
    x = {"x": _x(8, seed=3)}
    ref = run_ort(m, x)[0]
    for optimize in (False, True):
        got = run_ort(q, x, optimize=optimize)[0]  # quantization noise of this random 3-layer net: 3.2% RMS
        assert np.sqrt(((ref - got) ** 2).mean() / (ref ** 2).mean()) < 0.05 and np.abs(ref - got).max() < 0.1 * np.abs(ref).max()


def test_dynamic_mode_and_excluded_hardswish_are_left_as_they_are():
    m = hswish_net()
    q, rec = quantize(m, Dataset([{"x": _x(16)}], None, "t"), QuantConfig(mode="static", target="avx2", exclude=("hs0",)))
    assert rec.stats["hardswish"]["written_out"] == 1
    q, rec = quantize(m, None, QuantConfig(mode="dynamic"))
    assert "hardswish" not in rec.stats  # dynamic int8 leaves activations float: nothing to gain
