"""Dead channels a model ships with are removed only where their layer's width stays aligned."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcompress.passes.prune.remove import ALIGN_KEPT
from onnxcompress.passes.prune.structured import remove_selected, structured_removal

from conftest import run_ort


def _net(dead_row: int = 5) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(16, 3, 3, 3)).astype(np.float32)
    w1[dead_row] = 0.0  # a channel the model was trained into zero (EfficientNet-Lite0 has five)
    b1 = np.zeros(16, np.float32)  # relu(0 + 0) = 0: the dead channel is exactly removable
    w2 = rng.normal(size=(8, 16, 1, 1)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
         helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 8, 8])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _width(m: onnx.ModelProto) -> int:
    return next(numpy_helper.to_array(i).shape[0] for i in m.graph.initializer if i.name == "w1")


def test_a_dead_channel_stays_when_removing_it_would_unalign_the_layer():
    model = _net()
    x = np.random.default_rng(1).normal(size=(2, 3, 8, 8)).astype(np.float32)
    nothing = lambda ctx: (set(), {}, {})  # noqa: E731 - a picker choosing no channel
    kept = remove_selected(model, nothing, align=8)
    assert _width(kept.model) == 16
    assert any(s.reason.startswith(ALIGN_KEPT) for s in kept.record.skipped)
    dropped = remove_selected(model, nothing, align=1)
    assert _width(dropped.model) == 15  # without alignment the dead channel goes, exactly
    ref = run_ort(model, {"x": x})[0]
    for r in (kept, dropped):
        np.testing.assert_allclose(run_ort(r.model, {"x": x})[0], ref, rtol=1e-5, atol=1e-5)


def test_pruning_at_a_ratio_takes_the_dead_channel_first_and_stays_aligned():
    r = structured_removal(_net(), 0.5, align=8, min_channels=8)
    assert _width(r.model) == 8
    onnx.checker.check_model(r.model, full_check=True)
