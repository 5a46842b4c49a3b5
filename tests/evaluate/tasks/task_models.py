"""Small task models built in-test with onnx.helper, and damaged copies of them (weights fake-quantized
per tensor, the way a coarse int8 scheme damages a layer whose columns have very different ranges)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "task", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def fake_quant(m: onnx.ModelProto, name: str, bits: int = 8) -> onnx.ModelProto:
    """A copy with initializer `name` rounded to a symmetric per-tensor grid of `bits` bits."""
    out = onnx.ModelProto()
    out.CopyFrom(m)
    t = next(i for i in out.graph.initializer if i.name == name)
    w = numpy_helper.to_array(t)
    step = np.abs(w).max() / (2 ** (bits - 1) - 1)
    t.CopyFrom(numpy_helper.from_array((np.round(w / step) * step).astype(np.float32), name))
    return out


def yolo_head(classes: int = 3, transposed: bool = True, objectness: bool = False, anchors: int = 256,
              feat: int = 8, seed: int = 0) -> onnx.ModelProto:
    """feats [N, A, F] -> MatMul -> Relu -> MatMul -> |box| (cx, cy, w, h in pixels) ++ Sigmoid(scores):
    [N, A, 4+C(+1)], or [N, 4+C(+1), A] when transposed (v8). Box columns are ~100x the score columns."""
    rng = np.random.default_rng(seed)
    attrs = 4 + int(objectness) + classes
    w2 = rng.standard_normal((16, attrs)).astype(np.float32)
    w2[:, :4] *= 12.0
    w2[:, 4:] *= 0.6
    b2 = np.zeros(attrs, np.float32)
    b2[:4] = [64, 64, 16, 16]
    b2[4:] = -1.0
    inits = {"w1": rng.standard_normal((feat, 16)).astype(np.float32) * 0.7, "b1": np.zeros(16, np.float32),
             "w2": w2, "b2": b2, "starts": np.array([4], np.int64), "ends": np.array([attrs], np.int64),
             "zero": np.array([0], np.int64), "four": np.array([4], np.int64), "axis": np.array([2], np.int64)}
    nodes = [helper.make_node("MatMul", ["feats", "w1"], ["m1"], name="fc1"),
             helper.make_node("Add", ["m1", "b1"], ["a1"], name="add1"),
             helper.make_node("Relu", ["a1"], ["h"], name="relu"),
             helper.make_node("MatMul", ["h", "w2"], ["m2"], name="head"),
             helper.make_node("Add", ["m2", "b2"], ["raw"], name="add2"),
             helper.make_node("Slice", ["raw", "zero", "four", "axis"], ["box_raw"], name="box_slice"),
             helper.make_node("Abs", ["box_raw"], ["box"], name="box_abs"),
             helper.make_node("Slice", ["raw", "starts", "ends", "axis"], ["logits"], name="score_slice"),
             helper.make_node("Sigmoid", ["logits"], ["scores"], name="sigmoid"),
             helper.make_node("Concat", ["box", "scores"], ["rows"], name="concat", axis=2)]
    out_shape = ["N", attrs, anchors] if transposed else ["N", anchors, attrs]
    if transposed:
        nodes.append(helper.make_node("Transpose", ["rows"], ["output0"], name="transpose", perm=[0, 2, 1]))
    else:
        nodes[-1].output[0] = "output0"
    return model(nodes, [helper.make_tensor_value_info("feats", TensorProto.FLOAT, ["N", anchors, feat])],
                 [helper.make_tensor_value_info("output0", TensorProto.FLOAT, out_shape)], inits)


def ctc_recognizer(classes: int = 12, feat: int = 12, seed: int = 0) -> onnx.ModelProto:
    """feats [N, T, F] -> MatMul -> Add -> Softmax over classes: [N, T, C] probabilities (blank = 0)."""
    rng = np.random.default_rng(seed)
    w = (np.eye(feat, classes) * 4.0 + rng.standard_normal((feat, classes)) * 0.05).astype(np.float32)
    inits = {"w": w, "b": np.zeros(classes, np.float32)}
    nodes = [helper.make_node("MatMul", ["feats", "w"], ["m"], name="proj"),
             helper.make_node("Add", ["m", "b"], ["logits"], name="bias"),
             helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1)]
    return model(nodes, [helper.make_tensor_value_info("feats", TensorProto.FLOAT, ["N", "T", feat])],
                 [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", "T", classes])], inits)


def ctc_data(n: int = 16, steps: int = 60, feat: int = 12, seed: int = 1) -> np.ndarray:
    """Mostly blank steps (feature 0 high), a few character steps with a small margin over the blank."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, steps, feat)).astype(np.float32) * 0.05
    x[:, :, 0] += 1.0
    for i in range(n):
        for t in rng.choice(steps, 5, replace=False):
            x[i, t, 0] = 0.9
            x[i, t, rng.integers(1, feat)] += 1.0
    return x


def seg_net(classes: int = 4, seed: int = 0) -> onnx.ModelProto:
    """image [N, 3, H, W] -> Conv 3x3 -> Relu -> Conv 1x1 -> [N, C, H, W] class scores; class 3 has
    weights 50x smaller than the others (a rare class with a small output range)."""
    rng = np.random.default_rng(seed)
    w2 = rng.standard_normal((classes, 8, 1, 1)).astype(np.float32)
    w2[classes - 1] *= 0.02
    b2 = np.zeros(classes, np.float32)
    inits = {"w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.5, "b1": np.zeros(8, np.float32),
             "w2": w2, "b2": b2}
    nodes = [helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["masks"], name="classifier")]
    return model(nodes, [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 16, 16])],
                 [helper.make_tensor_value_info("masks", TensorProto.FLOAT, ["N", classes, 16, 16])], inits)


def embedder(dim: int = 64, feat: int = 16, seed: int = 0) -> onnx.ModelProto:
    """x [N, F] -> MatMul -> Add (a large common direction, as sentence embeddings have) -> [N, D]."""
    rng = np.random.default_rng(seed)
    inits = {"w": rng.standard_normal((feat, dim)).astype(np.float32) * 0.1,
             "b": (rng.standard_normal(dim) * 4.0).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="proj"),
             helper.make_node("Add", ["m", "b"], ["embedding"], name="bias")]
    return model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", feat])],
                 [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", dim])], inits)
