"""The failure class of PaddleOCR's direction classifier (MobileNetV3, opset 11, int8 slower than FP32): a
written-out hardswish (x * Clip(x + 3, 0, 6) / 6) whose Div ORT cannot run in int8, a squeeze-excite block, and
a depthwise conv whose channel count is not a multiple of 16 (ORT's generic int8 depthwise kernel). Structure
only: what gets folded, what stays int8, what a layer kept FP32 reads; never a time."""
import numpy as np
import onnx
import pytest

from conftest import run_ort
from onnxcompress.config import QuantConfig
from onnxcompress.data import Dataset
from onnxcompress.io import load_model
from onnxcompress.quant.audit import INT8_KERNELS, audit, fp32_layer_times
from onnxcompress.quant.qdq import quantize

torch = pytest.importorskip("torch")
# 7-bit weights: ORT's optimized int8 kernels match the reference on every x86 CPU (with 8-bit weights, AVX2 without
# VNNI saturates 16-bit sums: the optimized-session comparison below failed on such a host with conftest's VNNI pin)
HOST_SAFE = "avx2"


def _hswish(x):
    return x * torch.clamp(x + 3.0, 0.0, 6.0) / 6.0  # as PaddlePaddle and torch < 1.6 wrote it out


def mbv3_block(tmp_path, opset=11):
    """stem conv-BN-hardswish; expand 1x1; depthwise 5x5 on 40 channels; SE (GAP, 1x1, ReLU, 1x1, HardSigmoid,
    Mul); project 1x1; residual Add; head. Exported at opset 11, loaded through the front door like the CLI."""
    torch.manual_seed(0)
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.b0 = nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16)
            self.exp, self.b1 = nn.Conv2d(16, 40, 1, bias=False), nn.BatchNorm2d(40)
            self.dw, self.b2 = nn.Conv2d(40, 40, 5, padding=2, groups=40, bias=False), nn.BatchNorm2d(40)
            self.se1, self.se2 = nn.Conv2d(40, 10, 1), nn.Conv2d(10, 40, 1)
            self.proj, self.b3 = nn.Conv2d(40, 16, 1, bias=False), nn.BatchNorm2d(16)
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            x = _hswish(self.b0(self.stem(x)))
            y = _hswish(self.b1(self.exp(x)))
            y = _hswish(self.b2(self.dw(y)))
            s = nn.functional.hardsigmoid(self.se2(torch.relu(self.se1(nn.functional.adaptive_avg_pool2d(y, 1)))))
            y = self.b3(self.proj(y * s)) + x
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))

    net = Block().eval()
    with torch.no_grad():
        for b in (net.b0, net.b1, net.b2, net.b3):
            b.running_mean.uniform_(-0.5, 0.5)
            b.running_var.uniform_(0.5, 2.0)
    p = tmp_path / "mbv3.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 24, 48),), str(p), dynamo=False, opset_version=opset,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}})
    return load_model(p)


def _data(n=32, seed=0):
    return Dataset([{"x": np.random.default_rng(seed).standard_normal((n, 3, 24, 48)).astype(np.float32)}], None, "t")


def _close(m, q):
    x = {"x": _data(8, seed=5).chunks[0]["x"]}
    for optimize in (False, True):
        ref, got = run_ort(m, x)[0], run_ort(q, x, optimize=optimize)[0]
        assert np.abs(ref - got).max() < 0.1 * np.abs(ref).max()


def _by_op(model, op):
    return [n for n in model.graph.node if n.op_type == op]


def test_hardswish_div_is_folded_into_the_quantize_scale(tmp_path):
    m = mbv3_block(tmp_path)
    divs = len(_by_op(m, "Div"))
    assert divs == 3 and any(n.op_type == "Clip" for n in m.graph.node)  # the written-out hardswish
    q, rec = quantize(m, _data(), QuantConfig(mode="static", target=HOST_SAFE))
    # every hardswish's "/ 6" sat between a DequantizeLinear and a QuantizeLinear: folded into the scale
    assert rec.stats["scalar_requant_folded"] == divs and _by_op(q, "Div") == []
    a = audit(q)
    assert a["float_islands"] == [] and a["fused_share"] == 1.0
    onnx.checker.check_model(q, full_check=True)
    _close(m, q)


def test_convs_kept_fp32_stay_fp32_and_their_neighbours_stay_int8(tmp_path):
    m = mbv3_block(tmp_path)
    convs = _by_op(m, "Conv")
    dw = next(n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute))
    se2 = next(n.name for n in convs if n.input[0] in {r.output[0] for r in _by_op(m, "Relu")})  # SE's second conv
    q, _ = quantize(m, _data(), QuantConfig(mode="static", exclude=(dw, se2), target=HOST_SAFE))
    prod = {o: n for n in q.graph.node for o in n.output}
    inits = {i.name for i in q.graph.initializer}
    nodes = {n.name: n for n in q.graph.node}
    assert nodes[dw].input[1] in inits and nodes[se2].input[1] in inits  # float weights
    # the depthwise conv reads the float hardswish (its only reader: no Q/DQ left there)
    assert prod[nodes[dw].input[0]].op_type == "Div"
    # se2 reads the first SE conv's int8 output: through a DequantizeLinear, so that conv stays QLinearConv;
    # per channel (axis 1, the same scale) so that ORT's WeightBiasQuantization, which takes only per-tensor
    # inputs, does not quantize se2's weights again
    dq = prod[nodes[se2].input[0]]
    assert dq.op_type == "DequantizeLinear" and any(a.name == "axis" and a.i == 1 for a in dq.attribute)
    a = audit(q)
    roles = {r["node"]: (r["role"], r["kernel"]) for r in a["nodes"]}
    assert all(roles[k][0] == "fp32" and roles[k][1] not in INT8_KERNELS for k in (dw, se2)) and a["float_islands"] == []
    assert all(role == "int8" for name, (role, _) in roles.items() if name not in (dw, se2)), roles
    onnx.checker.check_model(q, full_check=True)
    _close(m, q)


def test_fp32_layer_times_cover_every_conv(tmp_path):
    """The speed guard compares each int8 layer with the same layer of the FP32 model: ORT renames NCHWc convs
    after their (fused) output tensor, and every conv must still be found (no time is asserted)."""
    m = mbv3_block(tmp_path)
    times = fp32_layer_times(m, {"x": _data(1).chunks[0]["x"]}, runs=3)
    assert {n.name for n in _by_op(m, "Conv")} <= set(times)
