"""Conv -> Mul(const) -> Add(const) folded into the Conv, as PaddlePaddle writes its learnable affine blocks
(constant first, shape [1]) and BatchNorm (per-channel [1, C, 1, 1])."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort
from onnxcompress.config import QuantConfig
from onnxcompress.data import Dataset
from onnxcompress.quant.fold import fold_conv_affine
from onnxcompress.quant.qdq import quantize


def paddle_like(c=8):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((c, 3, 3, 3)).astype(np.float32) * 0.3, "w0"),
             numpy_helper.from_array(rng.standard_normal(c).astype(np.float32) * 0.1, "b0"),
             numpy_helper.from_array(rng.standard_normal((c, c, 1, 1)).astype(np.float32) * 0.3, "w1"),
             numpy_helper.from_array((rng.random((1, c, 1, 1)) + 0.5).astype(np.float32), "bn_s"),
             numpy_helper.from_array(rng.standard_normal((1, c, 1, 1)).astype(np.float32), "bn_b"),
             numpy_helper.from_array(rng.standard_normal((1, c, 4, 4)).astype(np.float32), "spatial")]
    const = lambda name, v: helper.make_node("Constant", [], [name], name=name,  # noqa: E731
                                             value=numpy_helper.from_array(np.array([v], np.float32)))
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
             const("scale", 1.7), const("shift", -0.4),
             helper.make_node("Mul", ["scale", "c0"], ["m0"], name="lab_mul"),  # constant first, shape [1]
             helper.make_node("Add", ["shift", "m0"], ["a0"], name="lab_add"),
             helper.make_node("Relu", ["a0"], ["r0"], name="relu"),
             helper.make_node("Conv", ["r0", "w1"], ["c1"], name="conv1"),  # no bias
             helper.make_node("Mul", ["c1", "bn_s"], ["m1"], name="bn_mul"),  # per channel [1, C, 1, 1]
             helper.make_node("Add", ["m1", "bn_b"], ["a1"], name="bn_add"),
             helper.make_node("Mul", ["a1", "spatial"], ["y"], name="not_per_channel")]  # must stay
    g = helper.make_graph(nodes, "paddle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", c, 4, 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def test_fold_is_exact_and_leaves_other_ops():
    m = paddle_like()
    before = m.SerializeToString()
    f, rec = fold_conv_affine(m)
    assert m.SerializeToString() == before  # input untouched
    onnx.checker.check_model(f, full_check=True)
    assert rec.stats["folded"] == 4
    ops = [n.op_type for n in f.graph.node]
    assert ops == ["Conv", "Relu", "Conv", "Mul"] and f.graph.node[-1].name == "not_per_channel"
    x = {"x": np.random.default_rng(1).standard_normal((4, 3, 4, 4)).astype(np.float32)}
    ref, got = run_ort(m, x)[0], run_ort(f, x)[0]
    assert np.allclose(ref, got, rtol=1e-5, atol=1e-5)


def test_quantize_folds_before_quantizing():
    m = paddle_like()
    x = np.random.default_rng(2).standard_normal((32, 3, 4, 4)).astype(np.float32)
    q, rec = quantize(m, Dataset([{"x": x}], None, "t"), QuantConfig(mode="static"))
    assert rec.stats["fold-affine"]["folded"] >= 2  # the [1]-shaped, constant-first pair ORT's fusions skip
    assert not {"lab_mul", "lab_add", "bn_mul", "bn_add"} & {n.name for n in q.graph.node}
    ref, got = run_ort(m, {"x": x[:8]})[0], run_ort(q, {"x": x[:8]})[0]
    assert np.abs(ref - got).max() < 0.05 * np.abs(ref).max()


def test_gemm_bias_of_shape_1xn_quantizes():
    """ORT's pre-processing writes MatMul + Add([1, N]) as Gemm(C=[1, N]); ORT's quantizer then failed with
    a ValueError (jax2tf's magika model). The bias is flattened to [N]: same broadcast."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((1, 8)).astype(np.float32), "b")]
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                           helper.make_node("Add", ["h", "b"], ["y"], name="bias")], "dense",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 15)])
    m.ir_version = 8
    x = rng.standard_normal((32, 16)).astype(np.float32)
    q, rec = quantize(m, Dataset([{"x": x}], None, "t"), QuantConfig(mode="static"))
    assert rec.stats["fold-affine"]["gemm_bias_flattened"] == 1
    ref, got = run_ort(m, {"x": x})[0], run_ort(q, {"x": x})[0]
    assert np.abs(ref - got).max() < 0.05 * np.abs(ref).max()


def test_values_read_by_a_subgraph_keep_their_names():
    """A Constant that only an If body reads stays; a Conv output an If body reads is not renamed."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 2, 1, 1)).astype(np.float32), "w")
    k2 = numpy_helper.from_array(np.array([3.0], np.float32), "k2")
    k = helper.make_node("Constant", [], ["k"], name="k", value=numpy_helper.from_array(np.array([2.0], np.float32)))
    body = lambda name, src: helper.make_graph(  # noqa: E731
        [helper.make_node("Mul", [src, "k"], [name + "_o"], name=name)], name, [],
        [helper.make_tensor_value_info(name + "_o", TensorProto.FLOAT, [1, 4, 3, 3])])
    nodes = [k, helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Mul", ["c", "k"], ["y"], name="scale"),  # folds; only the If bodies still read `k`
             helper.make_node("Conv", ["x", "w"], ["c2"], name="conv2"),
             helper.make_node("Mul", ["c2", "k2"], ["y2"], name="scale2"),  # must not fold: the If reads c2
             helper.make_node("If", ["flag"], ["z"], name="if", then_branch=body("then", "c2"),
                              else_branch=body("else", "y"))]
    g = helper.make_graph(nodes, "sub", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3]),
                                         helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4, 3, 3]) for n in ("y", "y2", "z")], [w, k2])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    f, rec = fold_conv_affine(m)
    onnx.checker.check_model(f)
    assert rec.stats["folded"] == 1 and {"k", "scale2", "conv2"} <= {n.name for n in f.graph.node}
    x = rng.standard_normal((1, 2, 3, 3)).astype(np.float32)
    for flag in (True, False):
        feeds = {"x": x, "flag": np.array(flag)}
        for a, b in zip(run_ort(m, feeds), run_ort(f, feeds)):
            assert np.allclose(a, b, rtol=1e-5, atol=1e-6)
