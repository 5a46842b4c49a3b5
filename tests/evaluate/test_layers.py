"""Per-layer comparison (evaluate/layers.py): which candidate tensor stands for each reference tensor."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcompress.data import Dataset
from onnxcompress.evaluate.layers import layer_sqnr, shared_tensors


def _graphs():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    c = [numpy_helper.from_array(np.array(6.0, np.float32), "six")]
    ref = helper.make_graph([helper.make_node("Mul", ["x", "x"], ["m"]), helper.make_node("Div", ["m", "six"], ["d"]),
                             helper.make_node("Relu", ["d"], ["r"]), helper.make_node("Neg", ["r"], ["y"])],
                            "ref", [x], [y], c)
    # the candidate: m quantized straight to the grid after /6 (scale s x 6 on Q, s on DQ: the Div folded away);
    # r quantized normally (one scale for Q and DQ)
    q = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("s6", 6 / 127), ("s", 1 / 127), ("sr", 1 / 127))]
    q.append(numpy_helper.from_array(np.array(0, np.int8), "z"))
    cand = helper.make_graph(
        [helper.make_node("Mul", ["x", "x"], ["m"]),
         helper.make_node("QuantizeLinear", ["m", "s6", "z"], ["m_q"]),
         helper.make_node("DequantizeLinear", ["m_q", "s", "z"], ["m_dq"]),
         helper.make_node("Relu", ["m_dq"], ["r"]),
         helper.make_node("QuantizeLinear", ["r", "sr", "z"], ["r_q"]),
         helper.make_node("DequantizeLinear", ["r_q", "sr", "z"], ["r_dq"]),
         helper.make_node("Neg", ["r_dq"], ["y"])], "cand", [x], [y], q)
    def mk(g):
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8  # the older onnxruntime in .ci/openvino's venv refuses newer IR versions
        return m

    return mk(ref), mk(cand)


def test_a_folded_requantization_is_compared_on_the_float_tensor():
    ref, cand = _graphs()
    pairs = shared_tensors(ref, cand)
    assert pairs["m"] == ("m", "Mul")  # its DQ holds m / 6: not the tensor m
    assert pairs["r"] == ("r_dq", "Relu")  # an ordinary Q -> DQ: what the int8 kernel sees
    x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(8, 4)
    rows = {r["tensor"]: r for r in layer_sqnr(ref, cand, Dataset([{"x": x}], None, "t"), samples=8)}
    assert rows["m"]["sqnr_db"] is None or rows["m"]["sqnr_db"] > 100  # the float Mul is exact
    # r: int8 rounding of values in [0, 1/6] at step 1/127: SQNR well above the 1.58 dB a 6x factor gives
    assert 20 < rows["r"]["sqnr_db"] < 100
