"""The weight-layer prune handlers (passes/prune/layers.py): Conv, ConvTranspose, Gemm, MatMul as producers
(output channels sliced with weight and bias) and as consumers (input channels sliced, dead channels' constants
folded into the bias, a bias created when there is none), and the layers they refuse, with the reason. Numerics
against the unpruned model in ONNX Runtime, optimizations off; the weight-layer matcher of issue #16 must keep
every case."""
from __future__ import annotations

import numpy as np
import pytest

from onnxcompress.passes.prune import remove_zeroed_channels

from .test_handlers import Net, attr, image, init, reasons, same_outputs, set_init, shape, zero

F = np.float32


def dead_with_bias(m, weight, rows, bias, values, axis=0):
    m = zero(m, weight, rows, axis)
    b = init(m, bias).copy()
    b[rows] = values
    set_init(m, bias, b)
    return m


def test_consumer_conv_without_bias_gets_the_folded_constant_as_a_new_bias():
    net = Net()
    h = net.op("Relu", [net.conv("x", "c1", 4, 6)], "r")
    m = net.model({"x": ["N", 4, 6, 6]}, [net.conv(h, "c2", 6, 3, k=3, bias=False)])
    m = dead_with_bias(m, "c1_w", [0, 4], "c1_b", [0.5, 0.25])
    out, rec = remove_zeroed_channels(m)
    assert rec.stats["groups_removed"] == 2
    c2 = next(n for n in out.graph.node if n.name == "c2")
    assert len(c2.input) == 3 and shape(out, c2.input[2]) == (3,)  # the constants' contribution, as a bias
    w = init(m, "c2_w")
    np.testing.assert_allclose(init(out, c2.input[2]), w[:, [0, 4]].sum(axis=(2, 3)) @ np.array([0.5, 0.25], F),
                               rtol=1e-6)
    assert shape(out, "c2_w") == (3, 4, 3, 3)
    same_outputs(m, out, image())


def test_conv_transpose_producer_and_consumer():
    net = Net()
    up = net.op("ConvTranspose", ["x", net.w("t1_w", 4, 6, 2, 2), net.w("t1_b", 6, scale=0.1)], "t1", strides=[2, 2])
    h = net.op("Relu", [up], "r")
    y = net.op("ConvTranspose", [h, net.w("t2_w", 6, 3, 3, 3), net.w("t2_b", 3, scale=0.1)], "t2")
    m = net.model({"x": ["N", 4, 5, 5]}, [y])
    m = dead_with_bias(m, "t1_w", [1, 3], "t1_b", [-0.5, 0.0], axis=1)  # relu -> 0: nothing to fold
    out, rec = remove_zeroed_channels(m)
    assert rec.stats["groups_removed"] == 2
    assert shape(out, "t1_w") == (4, 4, 2, 2) and shape(out, "t1_b") == (4,) and shape(out, "t2_w") == (4, 3, 3, 3)
    same_outputs(m, out, image(c=4, hw=5))


def test_conv_transpose_consumer_of_a_non_zero_constant_keeps_it():
    """A transposed conv spreads a constant input unevenly at the borders: not folded, the channel stays."""
    net = Net()
    h = net.op("Relu", [net.conv("x", "c1", 4, 6)], "r")
    y = net.op("ConvTranspose", [h, net.w("t_w", 6, 3, 3, 3)], "t")
    m = dead_with_bias(net.model({"x": ["N", 4, 6, 6]}, [y]), "c1_w", [2], "c1_b", [0.5])
    out, rec = remove_zeroed_channels(m)
    assert rec.stats["groups_removed"] == 0
    assert "ConvTranspose 't': dead channel holds constant 0.5 that cannot be folded exactly" in reasons(rec)


@pytest.mark.parametrize("trans_b, alpha, beta, c", [(1, 1.0, 1.0, "vector"), (0, 0.5, 2.0, "vector"),
                                                     (0, 1.5, 1.0, "scalar"), (1, 2.0, 0.5, None), (1, 1.0, 0.0, "vector")])
def test_gemm_as_producer_and_consumer(trans_b, alpha, beta, c):
    net = Net()
    w1 = net.w("w1", *((8, 6) if trans_b else (6, 8)))
    h = net.op("Relu", [net.op("Gemm", ["x", w1, net.w("b1", 8, scale=0.1)], "fc1", transB=trans_b)], "r")
    ins = [h, net.w("w2", *((3, 8) if trans_b else (8, 3)))]
    if c == "vector":
        ins.append(net.w("c2", 3, scale=0.1))
    elif c == "scalar":
        ins.append(net.const("c2", np.array([0.2], F)))
    m = net.model({"x": ["N", 6]}, [net.op("Gemm", ins, "fc2", transB=trans_b, alpha=alpha, beta=beta)])
    m = dead_with_bias(m, "w1", [1, 5], "b1", [0.4, 0.3], axis=0 if trans_b else 1)
    out, rec = remove_zeroed_channels(m)
    assert rec.stats["groups_removed"] == 2
    assert shape(out, "w1") == (6, 6) and shape(out, "b1") == (6,)  # 8 -> 6 outputs, 6 inputs
    assert shape(out, "w2") == ((3, 6) if trans_b else (6, 3))
    fc2 = next(n for n in out.graph.node if n.name == "fc2")
    assert len(fc2.input) == 3  # the folded constants live in C (created when there was none)
    if c is None or beta == 0:
        assert attr(fc2, "beta") == 1.0
    x = {"x": np.random.default_rng(2).standard_normal((5, 6)).astype(F)}
    same_outputs(m, out, x)


def test_matmul_without_a_bias_add_keeps_a_dead_channel_holding_a_constant():
    net = Net()
    h = net.op("Relu", [net.op("Add", [net.op("MatMul", ["x", net.w("w1", 6, 8)], "mm1"), net.w("b1", 8, scale=0.1)],
                               "fc1")], "r")
    m = net.model({"x": ["N", 6]}, [net.op("MatMul", [h, net.w("w2", 8, 3)], "mm2")])
    m = dead_with_bias(m, "w1", [1, 5], "b1", [0.4, -0.3], axis=1)
    out, rec = remove_zeroed_channels(m)
    assert rec.stats["groups_removed"] == 1  # channel 5 (relu -> 0) goes; 1 holds 0.4 and mm2 has no bias to take it
    assert "MatMul 'mm2': dead channel holds constant 0.4" in reasons(rec)
    assert shape(out, "w1") == (6, 7) and shape(out, "b1") == (7,) and shape(out, "w2") == (7, 3)
    same_outputs(m, out, {"x": np.random.default_rng(2).standard_normal((5, 6)).astype(F)})


def test_matmul_on_3d_activations_slices_the_feature_axis():
    """Transformer feed-forward: [N, T, D] @ [D, H] + b -> Relu -> @ [H, D] + b."""
    net = Net()
    h = net.op("Relu", [net.op("Add", [net.op("MatMul", ["x", net.w("w1", 6, 16)], "mm1"), net.w("b1", 16, scale=0.1)],
                               "fc1")], "r")
    y = net.op("Add", [net.op("MatMul", [h, net.w("w2", 16, 6)], "mm2"), net.w("b2", 6, scale=0.1)], "fc2")
    m = dead_with_bias(net.model({"x": ["N", 5, 6]}, [y]), "w1", [0, 7, 8], "b1", [0.4, 0.0, 0.2], axis=1)
    out, rec = remove_zeroed_channels(m)
    assert rec.stats["groups_removed"] == 3
    assert shape(out, "w1") == (6, 13) and shape(out, "w2") == (13, 6)
    same_outputs(m, out, {"x": np.random.default_rng(2).standard_normal((4, 5, 6)).astype(F)})


@pytest.mark.parametrize("case, why", [
    ("grouped", "Conv 'c2': grouped conv (group=2) couples channels in groups"),
    ("shared-weight", "Conv 'c2': weight or bias is not a constant used by this node alone"),
    ("weight-input", "Conv 'c2': weight or bias is not a constant used by this node alone"),
    ("attention", "MatMul of two activations (e.g. attention) couples channels"),
])
def test_layers_that_cannot_be_sliced_block_with_their_reason(case, why):
    net = Net()
    h = net.op("Relu", [net.conv("x", "c1", 4, 6)], "r")
    inputs = {"x": ["N", 4, 6, 6]}
    if case == "grouped":
        y = net.conv(h, "c2", 6, 4, group=2)
    elif case == "shared-weight":
        w = net.w("shared", 6, 6, 1, 1)
        y = net.op("Add", [net.op("Conv", [h, w], "c2"), net.op("Conv", [h, w], "c3")], "y")
    elif case == "weight-input":
        inputs["wx"] = [3, 6, 1, 1]
        y = net.op("Conv", [h, "wx"], "c2")
    else:
        y = net.op("MatMul", [h, h], "att")
    m = zero(net.model(inputs, [y]), "c1_w", [2])
    out, rec = remove_zeroed_channels(m)
    assert rec.stats["groups_removed"] == 0
    assert why in reasons(rec), reasons(rec)
    assert shape(out, "c1_w") == (6, 4, 1, 1)
