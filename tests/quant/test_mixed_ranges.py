"""A YOLOv8-style head concatenates box coordinates (0..320) with class scores (0..1): one int8 scale for the
Concat would round every score to a multiple of ~1.25. The Concat is kept FP32 (reads float inputs)."""
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort
from onnxcompress.config import QuantConfig
from onnxcompress.data import Dataset
from onnxcompress.quant.presets import mixed_range_concats
from onnxcompress.quant.qdq import quantize


def yolo_head(c=8, classes=3, sharp=1.0):
    """`sharp` scales the class logits: confident scores, far from the detection threshold."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4 + classes, c, 1, 1)).astype(np.float32) * 0.5
    w1[4:] *= sharp
    inits = [numpy_helper.from_array(rng.standard_normal((c, 3, 3, 3)).astype(np.float32) * 0.3, "w0"),
             numpy_helper.from_array(w1, "w1"),
             numpy_helper.from_array(np.array([4, classes], np.int64), "split"),
             numpy_helper.from_array(np.array(80.0, np.float32), "stride"),
             numpy_helper.from_array(np.array([0, 4 + classes, -1], np.int64), "shape")]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             helper.make_node("Conv", ["r0", "w1"], ["c1"], name="conv1"),
             helper.make_node("Reshape", ["c1", "shape"], ["flat"], name="flat"),
             helper.make_node("Split", ["flat", "split"], ["box", "cls"], name="split", axis=1),
             helper.make_node("Sigmoid", ["box"], ["box01"], name="box_sigmoid"),
             helper.make_node("Mul", ["box01", "stride"], ["xyxy"], name="box_scale"),
             helper.make_node("Sigmoid", ["cls"], ["scores"], name="cls_sigmoid"),
             helper.make_node("Concat", ["xyxy", "scores"], ["out"], name="head_concat", axis=1)]
    g = helper.make_graph(nodes, "yolo", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4 + classes, 64])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def test_concat_of_boxes_and_scores_stays_fp32_and_scores_survive():
    m = yolo_head()
    x = np.random.default_rng(1).standard_normal((32, 3, 8, 8)).astype(np.float32)
    q, rec = quantize(m, Dataset([{"x": x}], None, "test"), QuantConfig(mode="static"))
    assert any(s.target == "head_concat" and "ranges differ" in s.reason for s in rec.skipped)
    concat = next(n for n in q.graph.node if n.name == "head_concat")
    producers = {o: n.op_type for n in q.graph.node for o in n.output}
    assert all(producers.get(i) != "DequantizeLinear" for i in concat.input)  # float inputs
    ref, got = run_ort(m, {"x": x})[0], run_ort(q, {"x": x})[0]
    score_err = np.abs(ref[:, 4:] - got[:, 4:])
    # measured: max 0.032, mean 0.005 (conv noise through the sigmoid); with the Concat quantized on one
    # uint8 scale over 0..80 it was max 0.165, mean 0.079
    assert score_err.max() < 0.06 and score_err.mean() < 0.01, (score_err.max(), score_err.mean())
    assert np.abs(ref[:, :4] - got[:, :4]).max() < 0.03 * 80


def test_concat_of_similar_ranges_is_left_to_ort():
    ranges = {"a": (0.0, 10.0), "b": (-2.0, 6.0), "c": (0.0, 0.5)}
    node = helper.make_node("Concat", ["a", "b"], ["y"], name="cat", axis=1)
    node2 = helper.make_node("Concat", ["a", "c"], ["z"], name="cat2", axis=1)
    g = helper.make_graph([node, node2], "g", [], [])
    found = dict(mixed_range_concats(helper.make_model(g), ranges))
    assert list(found) == ["cat2"] and "20x" in found["cat2"]


def test_log_reads_the_float_tensor_so_small_values_do_not_become_minus_inf():
    """A mel-spectrogram-like tail: power = conv^2 + eps, then Log. Rounded to int8 on a scale set by the
    largest power, small powers become exactly 0 and Log gives -inf; Log must read the float tensor."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 1, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array(1e-6, np.float32), "eps")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="stft_conv", pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c", "c"], ["p"], name="power"),
             helper.make_node("Add", ["p", "eps"], ["pe"], name="add_eps"),
             helper.make_node("Log", ["pe"], ["y"], name="log")]
    g = helper.make_graph(nodes, "mel", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    x = rng.standard_normal((16, 1, 8, 8)).astype(np.float32)
    x[0] *= 1e-3  # a quiet sample: its powers are far below one int8 step
    q, _ = quantize(m, Dataset([{"x": x}], None, "test"), QuantConfig(mode="static"))
    log = next(n for n in q.graph.node if n.op_type == "Log")
    assert {n.op_type for n in q.graph.node if log.input[0] in n.output} == {"Add"}  # not a DequantizeLinear
    out = run_ort(q, {"x": x})[0]
    assert np.isfinite(out).all()
    ref = run_ort(m, {"x": x})[0]
    loud = ref > 1.0  # powers above e: well inside the int8 range
    assert np.abs(out[loud] - ref[loud]).mean() < 0.05
