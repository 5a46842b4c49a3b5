"""Slice in the channel analysis: channel ids are cut like Split, starts/ends/steps rewritten on removal."""
from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort
from onnxcompress.passes.prune import remove_zeroed_channels
from onnxcompress.passes.prune.structure import slice_range, strided_range

INT64_MIN = int(np.iinfo(np.int64).min)


def slice_net(starts, ends, axes, steps=None, dead=(), reader: bool = False, second_dead: Optional[tuple] = None,
              starts_input: bool = False, legacy: bool = False) -> onnx.ModelProto:
    """input[N,3,6,6] -> Conv(16, 3x3, pad 1) -> Relu -> Slice -> Conv(6, 3x3, pad 1) -> out.

    `dead`: conv1 output channels zeroed (weights and bias: they carry 0). `reader`: a 1x1 conv reads all
    16 channels too (second output), so unselected channels stay live. `second_dead`: a second, parallel
    Conv -> Relu -> Slice branch sharing the Slice's constant inputs, with these channels zeroed.
    `starts_input`: starts is a graph input (not a constant). `legacy`: opset 9, Slice attributes."""
    rng = np.random.default_rng(0)
    n_sel = len(slice_range(16, starts[axes.index(1)], ends[axes.index(1)],
                            (steps or [1] * len(axes))[axes.index(1)])) if 1 in axes else 16
    inits, nodes = [], []
    outputs = []

    def conv(name, x, cin, cout, k, zero=()):
        w = rng.standard_normal((cout, cin, k, k)).astype(np.float32) * 0.3
        b = rng.standard_normal(cout).astype(np.float32) * 0.1
        w[list(zero)] = 0
        b[list(zero)] = 0
        inits.extend([numpy_helper.from_array(w, f"{name}_w"), numpy_helper.from_array(b, f"{name}_b")])
        nodes.append(helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [name], name=name, pads=[k // 2] * 4))
        return name

    slice_in = ["s_starts", "s_ends", "s_axes"] + (["s_steps"] if steps else [])
    for name, v in (("s_starts", starts), ("s_ends", ends), ("s_axes", axes), ("s_steps", steps)):
        if v is not None and not (name == "s_starts" and starts_input) and not legacy:
            inits.append(numpy_helper.from_array(np.array(v, dtype=np.int64), name))
    branches = [("a", dead)] + ([("b", second_dead)] if second_dead is not None else [])
    for tag, zero in branches:
        c1 = conv(f"conv1{tag}", "input", 3, 16, 3, zero)
        nodes.append(helper.make_node("Relu", [c1], [f"r{tag}"], name=f"relu{tag}"))
        if legacy:
            nodes.append(helper.make_node("Slice", [f"r{tag}"], [f"s{tag}"], name=f"slice{tag}", starts=starts,
                                          ends=ends, axes=axes))
        else:
            nodes.append(helper.make_node("Slice", [f"r{tag}"] + slice_in, [f"s{tag}"], name=f"slice{tag}"))
        cin = n_sel if 1 in axes else 16
        outputs.append(conv(f"conv2{tag}", f"s{tag}", cin, 6, 3))
    if reader:
        outputs.append(conv("reader", "ra", 16, 4, 1))
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 6, 6])]
    if starts_input:
        inputs.append(helper.make_tensor_value_info("s_starts", TensorProto.INT64, [len(axes)]))
    graph = helper.make_graph(nodes, "slice", inputs,
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, [None] * 4) for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9 if legacy else 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def feeds(model: onnx.ModelProto, starts=None) -> dict:
    f = {"input": np.random.default_rng(1).standard_normal((2, 3, 6, 6)).astype(np.float32)}
    if starts is not None:
        f["s_starts"] = np.array(starts, dtype=np.int64)
    return f


def assert_same(a: onnx.ModelProto, b: onnx.ModelProto, starts=None) -> None:
    for ra, rb in zip(run_ort(a, feeds(a, starts)), run_ort(b, feeds(b, starts))):
        assert ra.shape == rb.shape
        scale = float(np.abs(ra).max())
        assert np.abs(ra - rb).max() <= 1e-5 * scale + 1e-6, (np.abs(ra - rb).max(), scale)


def weights(model: onnx.ModelProto) -> dict[str, tuple]:
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    return {n.name: inits[n.input[1]] for n in model.graph.node if n.op_type == "Conv"}


def slice_consts(model: onnx.ModelProto, node: str = "slicea") -> list[list[int]]:
    inits = {i.name: numpy_helper.to_array(i).tolist() for i in model.graph.initializer}
    n = next(n for n in model.graph.node if n.name == node)
    return [inits.get(i) for i in n.input[1:]]


def test_slice_range_follows_onnx_runtime():
    for n in (1, 5, 16):
        for start in (-20, -3, -1, 0, 2, 4, 15, 30, INT64_MIN, 2**63 - 1):
            for end in (-20, -3, -1, 0, 3, 12, 30, INT64_MIN, 2**63 - 1):
                for step in (-3, -1, 1, 2):
                    if step < 0 and end == 2**63 - 1:  # ORT reads it as "to the start", the spec as n-1: refused
                        continue
                    x = np.arange(n, dtype=np.float32)
                    model = helper.make_model(helper.make_graph(
                        [helper.make_node("Slice", ["x", "s", "e", "a", "k"], ["y"])], "g",
                        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
                        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                        [numpy_helper.from_array(np.array([v], dtype=np.int64), name)
                         for name, v in (("s", start), ("e", end), ("a", 0), ("k", step))]),
                        opset_imports=[helper.make_opsetid("", 17)])
                    model.ir_version = 8
                    got = run_ort(model, {"x": x})[0]
                    assert got.tolist() == list(slice_range(n, start, end, step)), (n, start, end, step)


def test_strided_range():
    keep = np.ones(16, dtype=bool)
    keep[[7, 8]] = False  # a selected channel and its neighbour in the gap: still stride 2
    assert strided_range(keep, np.arange(14, -1, -2), -2) == (12, -1, -2)
    keep[7] = True  # only the selected one: 14, 12, 10 | 6, 4, 2, 0 -> 13, 11, 9, 6, ... not one range
    assert strided_range(keep, np.arange(14, -1, -2), -2) is None
    assert strided_range(keep, np.arange(4, 12), 1) == (4, 11, 1)  # 4..11 without 8 -> 4..10
    assert strided_range(np.zeros(16, dtype=bool), np.arange(4, 12), 1) == (0, 0, 1)


def test_channel_slice_with_unread_channels_removed():
    m = slice_net([4], [12], [1], dead=(5, 9))
    out, rec = remove_zeroed_channels(m)
    # channels 0-3 and 12-15 are read by nobody after the Slice: removed with the dead 5 and 9
    assert weights(out) == {"conv1a": (6, 3, 3, 3), "conv2a": (6, 6, 3, 3)}
    assert slice_consts(out) == [[0], [6], [1]]
    onnx.checker.check_model(out)
    assert_same(m, out)


def test_channel_slice_starts_ends_rewritten():
    m = slice_net([4], [12], [1], dead=(1, 5, 9, 14), reader=True)
    out, rec = remove_zeroed_channels(m)
    assert weights(out) == {"conv1a": (12, 3, 3, 3), "conv2a": (6, 6, 3, 3), "reader": (4, 12, 1, 1)}
    assert slice_consts(out) == [[3], [9], [1]]  # old 4..11 minus 5, 9 -> new 3..8
    assert_same(m, out)


def test_channel_slice_left_alone_when_it_still_selects_the_survivors():
    m = slice_net([4], [2**63 - 1], [1], dead=(10,), reader=True)
    out, rec = remove_zeroed_channels(m)
    assert weights(out)["conv2a"] == (6, 11, 3, 3)
    assert slice_consts(out) == [[4], [2**63 - 1], [1]]
    assert_same(m, out)


def test_channel_slice_opset9_attributes():
    m = slice_net([4], [-4], [1], dead=(1, 5), reader=True, legacy=True)
    out, rec = remove_zeroed_channels(m)
    assert weights(out) == {"conv1a": (14, 3, 3, 3), "conv2a": (6, 7, 3, 3), "reader": (4, 14, 1, 1)}
    node = next(n for n in out.graph.node if n.op_type == "Slice")
    assert {a.name: list(helper.get_attribute_value(a)) for a in node.attribute} == \
        {"starts": [3], "ends": [10], "axes": [1]}  # old 4..11 minus 5 -> new 3..9
    assert_same(m, out)


def test_channel_slice_negative_indices_and_step():
    # starts -2 -> 14, ends -100 clamps to -1: channels 14, 12, ..., 0 in reverse order
    m = slice_net([-2], [-100], [1], [-2], dead=(8,))
    out, rec = remove_zeroed_channels(m)
    # the odd channels are unread and go too: the 7 survivors are the whole tensor, reversed
    assert weights(out) == {"conv1a": (7, 3, 3, 3), "conv2a": (6, 7, 3, 3)}
    assert slice_consts(out) == [[6], [INT64_MIN], [1], [-1]]
    assert_same(m, out)

    m = slice_net([-2], [-100], [1], [-2], dead=(7, 8, 15), reader=True)
    out, rec = remove_zeroed_channels(m)  # removing 7 and 8 keeps the stride: 12, 10, ..., 0 step -2
    assert weights(out)["conv1a"] == (13, 3, 3, 3) and weights(out)["conv2a"] == (6, 7, 3, 3)
    assert slice_consts(out) == [[12], [INT64_MIN], [1], [-2]]
    assert_same(m, out)


def test_channel_slice_that_cannot_be_rewritten_is_blocked_with_reason():
    m = slice_net([-2], [-100], [1], [-2], dead=(8, 15), reader=True)
    out, rec = remove_zeroed_channels(m)
    # without 8, the survivors 14, 12, 10, 6, ... are no longer one strided range: 8 is kept, 15 goes
    assert weights(out)["conv1a"] == (15, 3, 3, 3) and weights(out)["conv2a"] == (6, 8, 3, 3)
    assert any("Slice" in s.target and "strided range" in s.reason for s in rec.skipped), rec.skipped
    assert slice_consts(out) == [[14], [INT64_MIN], [1], [-2]]  # starts -2 would now mean 13: rewritten
    assert_same(m, out)


def test_spatial_slice_passes_channels_through():
    m = slice_net([1, 0], [-1, 100], [2, 3], [1, 2], dead=(3, 10))
    out, rec = remove_zeroed_channels(m)
    assert weights(out) == {"conv1a": (14, 3, 3, 3), "conv2a": (6, 14, 3, 3)}
    assert slice_consts(out) == [[1, 0], [-1, 100], [2, 3], [1, 2]]
    assert_same(m, out)


def test_shared_slice_constants_are_split_per_node():
    m = slice_net([4], [12], [1], dead=(5,), second_dead=(9, 10), reader=True)
    out, rec = remove_zeroed_channels(m)
    assert weights(out) == {"conv1a": (15, 3, 3, 3), "conv2a": (6, 7, 3, 3), "reader": (4, 15, 1, 1),
                            "conv1b": (6, 3, 3, 3), "conv2b": (6, 6, 3, 3)}
    assert slice_consts(out, "slicea") == [[4], [11], [1]]
    assert slice_consts(out, "sliceb") == [[0], [6], [1]]
    used = {i for n in out.graph.node for i in n.input}
    assert all(i.name in used for i in out.graph.initializer)  # no orphaned constants
    assert_same(m, out)


def test_non_constant_starts():
    m = slice_net([4], [12], [1], dead=(5,), starts_input=True)
    out, rec = remove_zeroed_channels(m)
    assert weights(out) == weights(m)
    assert any("not constants" in s.reason for s in rec.skipped), rec.skipped
    assert_same(m, out, starts=[4])
    # on a spatial axis the starts do not matter to the channels
    m = slice_net([1], [5], [2], dead=(5,), starts_input=True)
    out, rec = remove_zeroed_channels(m)
    assert weights(out) == {"conv1a": (15, 3, 3, 3), "conv2a": (6, 15, 3, 3)}
    assert_same(m, out, starts=[1])


def test_structured_pruning_keeps_selected_channels_a_strided_slice_needs():
    from onnxcompress.passes.prune import structured_prune

    m = slice_net([-2], [-100], [1], [-2], reader=True)
    out, rec = structured_prune(m, 0.5, align=1, min_channels=2)
    onnx.checker.check_model(out)
    # channels chosen inside the strided Slice's range are refused (not zeroed), with the reason
    assert weights(out)["conv1a"][0] > 8
    assert any("strided range" in s.reason and "selected channel" in s.reason for s in rec.skipped), rec.skipped
    assert_same(m, out)  # refused channels are not zeroed: here nothing else was chosen, the output is unchanged
