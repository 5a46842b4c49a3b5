"""The channel-wise prune handlers (passes/prune/channelwise.py): activations, Cast, pools/Pad/Resize,
InstanceNormalization, PRelu and elementwise ops with a constant.

One pattern per op: Conv c1 (4 -> 6, 1x1) whose channel 2 is dead (weights 0, bias `v`) -> OP -> Conv c2 (1x1,
no padding) -> output. A handler that computes the dead channel's constant after the op right lets the removal
fold it into c2's bias: channel 2 goes and ONNX Runtime (optimizations off) computes the same output before and
after. A constant the op makes data-dependent keeps the channel (nothing removed, output unchanged); an op the
handler cannot follow blocks the channel with its reason."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from onnxcompress.passes.prune import remove_zeroed_channels

from .test_handlers import Net, image, init, reasons, same_outputs, set_init, shape, zero

F = np.float32


def build(op, v: float, opset: int = 17, extra_inputs: dict | None = None) -> onnx.ModelProto:
    """x -> c1 (channel 2: weights 0, bias v) -> op(net, h) -> c2 -> y."""
    net = Net(seed=4)
    h = net.conv("x", "c1", 4, 6)
    y = net.conv(op(net, h), "c2", 6, 3)
    m = net.model({"x": ["N", 4, 6, 6], **(extra_inputs or {})}, [y], opset)
    m = zero(m, "c1_w", [2])
    b = init(m, "c1_b").copy()
    b[2] = v
    set_init(m, "c1_b", b)
    return m


def unary(op: str, **attrs):
    return lambda net, h: net.op(op, [h], "u", **attrs)


def with_consts(op: str, *consts, **attrs):
    """op(h, consts...); a const None is an omitted optional input."""
    def f(net, h):
        names = [net.const(f"k{i}", c) if c is not None else "" for i, c in enumerate(consts)]
        return net.op(op, [h, *names], "u", **attrs)
    return f


def chain(*ops):
    def f(net, h):
        for i, op in enumerate(ops):
            h = op(net, h)
            net.nodes[-1].name = net.nodes[-1].output[0] = f"u{i}"
            h = f"u{i}"
        return h
    return f


PER_CHANNEL = (np.arange(6, dtype=F) * 0.3 - 0.7).reshape(1, 6, 1, 1)

# (id, op builder, dead channel's bias, opset): each folds exactly, so channel 2 is removed
REMOVED = [
    ("relu", unary("Relu"), 0.6, 17),
    ("leakyrelu", unary("LeakyRelu", alpha=0.2), -0.6, 17),
    ("sigmoid", unary("Sigmoid"), 0.6, 17),
    ("hardsigmoid", unary("HardSigmoid", alpha=0.3, beta=0.4), 0.6, 17),
    ("hardswish", unary("HardSwish"), 1.3, 17),
    ("tanh", unary("Tanh"), -0.6, 17),
    ("elu", unary("Elu", alpha=0.5), -0.6, 17),
    ("softplus", unary("Softplus"), 0.6, 17),
    ("neg", unary("Neg"), 0.6, 17),
    ("abs", unary("Abs"), -0.6, 17),
    ("erf", unary("Erf"), 0.6, 17),
    ("identity", unary("Identity"), 0.6, 17),
    ("dropout-inference", unary("Dropout"), 0.6, 17),
    ("gelu", unary("Gelu"), -0.6, 20),
    ("gelu-tanh", unary("Gelu", approximate="tanh"), 0.6, 20),
    ("clip-attrs", unary("Clip", min=-0.2, max=0.5), 0.6, 10),
    ("clip-inputs", with_consts("Clip", F(-0.2), F(0.5)), -0.6, 17),
    ("clip-max-only", with_consts("Clip", None, F(0.5)), 0.6, 17),
    ("cast-fp16-roundtrip", chain(unary("Cast", to=TensorProto.FLOAT16), unary("Cast", to=TensorProto.FLOAT)), 0.1, 17),
    ("cast-int-roundtrip", chain(unary("Cast", to=TensorProto.INT32), unary("Cast", to=TensorProto.FLOAT)), 2.7, 17),
    ("maxpool", unary("MaxPool", kernel_shape=[2, 2], strides=[2, 2]), 0.6, 17),
    ("avgpool-exclude-pad", unary("AveragePool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]), 0.6, 17),
    ("avgpool-include-pad-zero", unary("AveragePool", kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1),
     0.0, 17),
    ("globalavgpool", unary("GlobalAveragePool"), 0.6, 17),
    ("globalmaxpool", unary("GlobalMaxPool"), 0.6, 17),
    ("pad-reflect", with_consts("Pad", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), mode="reflect"), 0.6, 17),
    ("pad-same-value", with_consts("Pad", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), F(0.6)), 0.6, 17),
    ("resize-scales", with_consts("Resize", None, np.array([1, 1, 2, 2], F)), 0.6, 17),
    ("instancenorm-zero", with_consts("InstanceNormalization", np.linspace(0.5, 1.5, 6).astype(F),
                                      np.linspace(-0.3, 0.3, 6).astype(F)), 0.0, 17),
    ("prelu", with_consts("PRelu", np.linspace(0.1, 0.6, 6).astype(F).reshape(6, 1, 1)), -0.6, 17),
    ("add-per-channel", with_consts("Add", PER_CHANNEL), 0.6, 17),
    ("mul-per-channel", with_consts("Mul", PER_CHANNEL), 0.6, 17),
    ("div-per-channel", with_consts("Div", PER_CHANNEL + 2), 0.6, 17),
    ("add-scalar", with_consts("Add", F(0.25)), 0.6, 17),
    ("mul-spatial-const-times-zero", with_consts("Mul", np.linspace(-1, 1, 36).astype(F).reshape(1, 1, 6, 6)), 0.0, 17),
]


def const_first(op: str, c):
    return lambda net, h: net.op(op, [net.const("k", c), h], "u")


REMOVED += [("sub-const-first", const_first("Sub", PER_CHANNEL), 0.6, 17),
            ("div-const-first", const_first("Div", PER_CHANNEL + 2), 0.6, 17)]


@pytest.mark.parametrize("op,v,opset", [c[1:] for c in REMOVED], ids=[c[0] for c in REMOVED])
def test_dead_channel_constant_is_carried_through_and_folded(op, v, opset):
    m = build(op, v, opset)
    out, rec = remove_zeroed_channels(m)
    assert rec.stats["groups_removed"] == 1, reasons(rec)
    assert shape(out, "c1_w") == (5, 4, 1, 1) and shape(out, "c2_w") == (3, 5, 1, 1)
    for t in m.graph.initializer:  # the op's per-channel operands are sliced with the channel
        if t.name.startswith("k") and init(m, t.name).size == 6:
            assert init(out, t.name).size == 5, (t.name, shape(out, t.name))
    onnx.checker.check_model(out, full_check=True)
    same_outputs(m, out, image())


# (id, op builder, dead channel's bias): the constant becomes data-dependent, the channel stays, nothing is lost
DATA_DEPENDENT = [
    ("avgpool-include-pad", unary("AveragePool", kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1), 0.6),
    ("pad-other-value", with_consts("Pad", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)), 0.6),
    ("lppool", unary("LpPool", kernel_shape=[2, 2]), 0.6),
    ("instancenorm-nonzero", with_consts("InstanceNormalization", np.ones(6, F), np.zeros(6, F)), 0.6),
    ("mul-spatial-const", with_consts("Mul", np.linspace(-1, 1, 36).astype(F).reshape(1, 1, 6, 6)), 0.6),
]


@pytest.mark.parametrize("op,v", [c[1:] for c in DATA_DEPENDENT], ids=[c[0] for c in DATA_DEPENDENT])
def test_constant_made_data_dependent_keeps_the_channel(op, v):
    m = build(op, v)
    out, rec = remove_zeroed_channels(m)
    assert rec.stats["groups_removed"] == 0
    assert shape(out, "c1_w") == (6, 4, 1, 1)
    same_outputs(m, out, image())


# (id, op builder, extra graph inputs, reason): the handler refuses the op; the channel is kept with the reason
BLOCKED = [
    ("clip-bound-not-constant", lambda net, h: net.op("Clip", [h, "lo"], "u"), {"lo": []},
     "Clip bounds are not constants"),
    ("dropout-training", with_consts("Dropout", F(0.0), np.array(True)), {}, "Dropout in training mode"),
    ("pad-channel-axis", with_consts("Pad", np.array([0, 1, 0, 0, 0, 1, 0, 0], np.int64)), {},
     "Pad on the channel axis"),
    ("resize-sizes", with_consts("Resize", None, None, np.array([1, 6, 12, 12], np.int64)), {},
     "Resize with explicit sizes"),
    ("mul-operand-not-constant", lambda net, h: net.op("Mul", [h, "s"], "u"), {"s": [1, 1, 1, 1]},
     "Mul with a non-constant operand that is not tracked"),
]


@pytest.mark.parametrize("op,inputs,why", [c[1:] for c in BLOCKED], ids=[c[0] for c in BLOCKED])
def test_op_the_handler_cannot_follow_blocks_with_its_reason(op, inputs, why):
    m = build(op, 0.0, extra_inputs=inputs)
    out, rec = remove_zeroed_channels(m)
    assert rec.stats["groups_removed"] == 0
    assert f"'u': {why}" in reasons(rec), reasons(rec)
    assert shape(out, "c1_w") == (6, 4, 1, 1)


def test_shared_per_channel_constant_blocks_both_users():
    net = Net(seed=4)
    h = net.conv("x", "c1", 4, 6)
    k = net.const("k", PER_CHANNEL)
    a, b = net.op("Mul", [h, k], "m1"), net.op("Add", [h, k], "a1")
    y = net.conv(net.op("Add", [a, b], "s"), "c2", 6, 3)
    m = zero(net.model({"x": ["N", 4, 6, 6]}, [y]), "c1_w", [2])
    out, rec = remove_zeroed_channels(m)
    assert rec.stats["groups_removed"] == 0
    assert "per-channel constant is shared with another node" in reasons(rec)

