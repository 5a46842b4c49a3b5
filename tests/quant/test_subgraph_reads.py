"""A subgraph (If body) reading a Conv -> Relu output from the outer scope: ORT's QDQ quantizer drops the Relu (the
Q/DQ after the Conv clamps at the zero point) and gives the Conv the Relu's name, so the body read the raw Conv
output, negatives included (silero-vad's LSTM sits in such an If: decision agreement 0.69). quantize rewires the
body to the DequantizeLinear every other reader uses."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort
from onnxcompress.config import QuantConfig
from onnxcompress.data import Dataset
from onnxcompress.quant.qdq import quantize


def relu_read_in_if(c=8):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((c, 1, 3)).astype(np.float32) * 0.5, "w0"),
             numpy_helper.from_array(rng.standard_normal(c).astype(np.float32) * 0.1, "b0"),
             numpy_helper.from_array(rng.standard_normal((c, c, 1)).astype(np.float32) * 0.3, "w1"),
             numpy_helper.from_array(np.array([2], np.int64), "axis2"),
             numpy_helper.from_array(np.array(-1e30, np.float32), "low")]
    body_out = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, None)  # noqa: E731
    then_g = helper.make_graph([helper.make_node("ReduceMean", ["r0"], ["t"], axes=[2], keepdims=0)], "then", [], [body_out("t")])
    else_g = helper.make_graph([helper.make_node("ReduceMax", ["r0"], ["e"], axes=[2], keepdims=0)], "else", [], [body_out("e")])
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", pads=[1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             helper.make_node("Conv", ["r0", "w1"], ["y"], name="conv1"),  # a main-graph reader: r0 gets Q/DQ
             helper.make_node("ReduceMax", ["x"], ["xmax"], name="xmax", keepdims=0),  # a data-dependent condition
             helper.make_node("Greater", ["xmax", "low"], ["cond"], name="cond"),  # (a constant If is inlined)
             helper.make_node("If", ["cond"], ["z"], name="branch", then_branch=then_g, else_branch=else_g)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", c, 16]),
                           helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", c])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def test_if_body_reads_the_dequantized_relu():
    m = relu_read_in_if()
    x = np.random.default_rng(1).standard_normal((32, 1, 16)).astype(np.float32)
    q, rec = quantize(m, Dataset([{"x": x}], None, "t"), QuantConfig(mode="static", speed_check_seconds=0))
    onnx.checker.check_model(q, full_check=True)
    assert "Relu" not in [n.op_type for n in q.graph.node]  # ORT's quantizer dropped it: the case this covers
    assert rec.stats["subgraph_reads_dequantized"] == ["r0"]
    iff = next(n for n in q.graph.node if n.op_type == "If")
    dq_outs = {n.output[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}
    body_reads = {i for a in iff.attribute for n in a.g.node for i in n.input}
    assert body_reads and body_reads <= dq_outs
    ref, got = run_ort(m, {"x": x[:8]}), run_ort(q, {"x": x[:8]})
    assert (got[1] >= 0).all()  # a mean of Relu outputs: before the fix, negative Conv outputs leaked in
    step = float(np.abs(ref[1]).max()) / 100
    assert np.abs(got[1] - ref[1]).max() < step, np.abs(got[1] - ref[1]).max()
    assert np.abs(got[0] - ref[0]).max() < float(np.abs(ref[0]).max()) / 20
