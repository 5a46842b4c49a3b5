"""The prune handler registry (passes/prune/handlers.py) and the channel groups the handlers build, on graphs
written node by node with onnx.helper: Conv -> BN -> Relu -> Conv, depthwise, Concat, Split with sizes, residual
Add, Gemm / MatMul. Each case checks the structure after removal (weight shapes, Split sizes, group counts) and
the numerics against the unpruned model, both run by ONNX Runtime with graph optimizations off. A safety net
for a refactor of the graph view: only the public entry points (remove_zeroed_channels, structured_removal,
the registry) are used, and a refactor must keep every figure here."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort
from onnxcompress.passes.prune import remove_zeroed_channels
from onnxcompress.passes.prune.handlers import HANDLERS, Handler, register  # the extension point (architecture.md)
from onnxcompress.passes.prune.structured import structured_removal


def attr(node: onnx.NodeProto, name: str, default=None):
    a = next((a for a in node.attribute if a.name == name), None)
    return default if a is None else helper.get_attribute_value(a)


class Net:
    """A graph built node by node: seeded weights, nodes named after their outputs."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}

    def const(self, name: str, value) -> str:
        self.inits[name] = np.asarray(value)
        return name

    def w(self, name: str, *shape: int, scale: float = 0.5) -> str:
        return self.const(name, (self.rng.standard_normal(shape) * scale).astype(np.float32))

    def op(self, op: str, inputs: list[str], out: str, n_out: int = 1, **attrs) -> str:
        outs = [out] if n_out == 1 else [f"{out}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=out, **attrs))
        return out

    def conv(self, x: str, name: str, cin: int, cout: int, k: int = 1, group: int = 1, bias: bool = True,
             pads: int = 0) -> str:
        ins = [x, self.w(f"{name}_w", cout, cin // group, k, k)]
        if bias:
            ins.append(self.w(f"{name}_b", cout, scale=0.1))
        return self.op("Conv", ins, name, group=group, pads=[pads] * 4)

    def bn(self, x: str, name: str, c: int) -> str:
        r = self.rng
        ins = [x, self.const(f"{name}_g", (r.random(c) + 0.5).astype(np.float32)),
               self.const(f"{name}_beta", (r.standard_normal(c) * 0.1).astype(np.float32)),
               self.const(f"{name}_mean", (r.standard_normal(c) * 0.1).astype(np.float32)),
               self.const(f"{name}_var", (r.random(c) + 0.5).astype(np.float32))]
        return self.op("BatchNormalization", ins, name)

    def model(self, inputs: dict[str, list], outputs: list[str], opset: int = 17) -> onnx.ModelProto:
        g = helper.make_graph(
            self.nodes, "net", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
            [onnx.ValueInfoProto(name=n) for n in outputs],
            [numpy_helper.from_array(v, n) for n, v in self.inits.items()])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = 8 if opset <= 18 else 9
        m = onnx.shape_inference.infer_shapes(m)  # the outputs' types
        del m.graph.value_info[:]
        onnx.checker.check_model(m, full_check=True)
        return m


def init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name))


def set_init(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    t = next(i for i in model.graph.initializer if i.name == name)
    t.CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))


def zero(model: onnx.ModelProto, name: str, rows, axis: int = 0) -> onnx.ModelProto:
    """A copy of `model` with rows (output channels along `axis`) of initializer `name` set to 0."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    w = init(m, name).copy()
    idx = [slice(None)] * w.ndim
    idx[axis] = list(rows)
    w[tuple(idx)] = 0
    set_init(m, name, w)
    return m


def shape(model: onnx.ModelProto, name: str) -> tuple[int, ...]:
    return tuple(next(i for i in model.graph.initializer if i.name == name).dims)


def same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, feeds: dict, rtol: float = 1e-5) -> None:
    ra, rb = run_ort(a, feeds), run_ort(b, feeds)
    assert len(ra) == len(rb)
    for x, y in zip(ra, rb):
        assert x.shape == y.shape
        scale = float(np.abs(x).max())
        assert np.abs(x - y).max() <= rtol * scale + 1e-6, (np.abs(x - y).max(), scale)


def image(n: int = 3, c: int = 4, hw: int = 6, seed: int = 1) -> dict:
    return {"x": np.random.default_rng(seed).standard_normal((n, c, hw, hw)).astype(np.float32)}


def reasons(rec) -> str:
    return " | ".join(f"{s.target}: {s.reason}" for s in rec.skipped)


# --- the registry --------------------------------------------------------------------------------------------

def test_registry_covers_the_documented_ops_with_one_handler_each():
    for op in ("Conv", "ConvTranspose", "Gemm", "MatMul", "Relu", "Clip", "Sigmoid", "BatchNormalization",
               "InstanceNormalization", "Add", "Mul", "PRelu", "MaxPool", "GlobalAveragePool", "Pad", "Resize",
               "Concat", "Split", "Slice", "Flatten", "Reshape"):
        assert op in HANDLERS, op
        assert isinstance(HANDLERS[op], Handler)
    assert "NonMaxSuppression" not in HANDLERS  # an op nobody handles falls back to the blocking default
    assert HANDLERS["Add"] is HANDLERS["Mul"]  # one stateless instance per handler class


def test_registering_an_op_twice_is_refused():
    relu = HANDLERS["Relu"]
    with pytest.raises(ValueError, match="registered twice"):
        register("Relu")(type("Again", (Handler,), {}))
    assert HANDLERS["Relu"] is relu


def test_attribute_helpers_and_names():
    from onnxcompress.passes.prune.handlers import attr as handler_attr, describe, set_attr

    n = helper.make_node("Conv", ["x", "w"], ["y"], name="c1", group=2, pads=[1, 1, 1, 1])
    assert handler_attr(n, "group") == 2 and handler_attr(n, "pads") == [1, 1, 1, 1]
    assert handler_attr(n, "strides", [1, 1]) == [1, 1]
    set_attr(n, "group", 4)
    set_attr(n, "auto_pad", "VALID")
    assert handler_attr(n, "group") == 4 and [a.name for a in n.attribute].count("group") == 1
    assert handler_attr(n, "auto_pad") == b"VALID"
    assert describe(n) == "Conv 'c1'"  # how skip reasons name nodes (report.json): a refactor keeps it
    assert describe(helper.make_node("Relu", ["a"], ["b"])) == "Relu 'b'"  # unnamed: named by its output


def test_unhandled_op_blocks_and_a_registered_handler_unblocks(monkeypatch):
    """The extension point of docs/architecture.md: a Handler subclass registered for an op type."""
    from onnxcompress.passes.prune.graph import Channels

    net = Net()
    h = net.op("Relu", [net.conv("x", "c1", 4, 6)], "r1")
    s = net.op("Softsign", [h], "s")
    y = net.conv(s, "c2", 6, 3)
    m = zero(net.model({"x": ["N", 4, 6, 6]}, [y]), "c1_w", [2])
    set_init(m, "c1_b", np.where(np.arange(6) == 2, 0.7, init(m, "c1_b")))  # dead channel 2 holds 0.7
    assert "Softsign" not in HANDLERS
    out, rec = remove_zeroed_channels(m)
    assert rec.stats["groups_removed"] == 0
    assert "Softsign 's': Softsign is not handled by channel pruning" in reasons(rec)

    class Softsign(Handler):
        follows = 1

        def propagate(self, node, ctx):
            x = ctx.tensors.get(node.input[0])
            if x is not None:
                ctx.tensors[node.output[0]] = Channels(x.axis, x.ids, x.const / (1 + np.abs(x.const)))

    monkeypatch.setitem(HANDLERS, "Softsign", Handler())  # undone at teardown: the registry stays as it was
    del HANDLERS["Softsign"]
    register("Softsign")(Softsign)
    out, rec = remove_zeroed_channels(m)
    assert rec.stats["groups_removed"] == 1
    assert shape(out, "c1_w") == (5, 4, 1, 1) and shape(out, "c2_w") == (3, 5, 1, 1)
    same_outputs(m, out, image())  # softsign(relu(0.7)) = 0.7 / 1.7 folded into c2's bias


# --- groups, removal and numerics ------------------------------------------------------------------------------

def conv_bn_relu_conv(pads2: int = 0) -> onnx.ModelProto:
    net = Net()
    h = net.op("Relu", [net.bn(net.conv("x", "c1", 4, 8, k=3, pads=1, bias=False), "bn1", 8)], "r1")
    return net.model({"x": ["N", 4, 6, 6]}, [net.conv(h, "c2", 8, 5, k=3, pads=pads2)])


def test_conv_bn_relu_conv_dead_channels_removed_with_their_constants_folded():
    m = zero(conv_bn_relu_conv(), "c1_w", [1, 3, 6])
    beta = init(m, "bn1_beta").copy()
    beta[[1, 3]] = [0.8, -0.8]  # channel 1: relu -> 0.8 + BN offset, folded into c2's bias; 3: relu -> 0
    set_init(m, "bn1_beta", beta)
    out, rec = remove_zeroed_channels(m)
    assert rec.stats["groups_total"] == 8 + 5 and rec.stats["groups_removed"] == 3
    assert shape(out, "c1_w") == (5, 4, 3, 3) and shape(out, "c2_w") == (5, 5, 3, 3)
    for p in ("bn1_g", "bn1_beta", "bn1_mean", "bn1_var"):
        assert shape(out, p) == (5,)
    assert not np.array_equal(init(out, "c2_b"), init(m, "c2_b"))  # the folded constant
    assert rec.stats["params_after"] < rec.stats["params_before"] and rec.stats["macs_after"] < rec.stats["macs_before"]
    assert [s.target for s in rec.skipped] == ["graph output 'c2'"]  # c2's 5 outputs: kept, with that reason
    same_outputs(m, out, image())


def test_constant_into_a_padded_conv_is_kept_with_the_reason():
    m = zero(conv_bn_relu_conv(pads2=1), "c1_w", [1, 3])
    beta = init(m, "bn1_beta").copy()
    beta[[1, 3]] = [0.8, -0.8]
    set_init(m, "bn1_beta", beta)
    out, rec = remove_zeroed_channels(m)
    assert rec.stats["groups_removed"] == 1  # channel 3 (relu -> 0) goes; channel 1 (0.8 at the zero padding) stays
    assert shape(out, "c2_w") == (5, 7, 3, 3)
    assert "Conv 'c2': dead channel holds constant" in reasons(rec)
    same_outputs(m, out, image())


def depthwise_block() -> onnx.ModelProto:
    net = Net()
    e = net.op("Relu", [net.conv("x", "expand", 4, 8)], "re")
    d = net.op("Clip", [net.conv(e, "dw", 8, 8, k=3, group=8, pads=1), net.const("lo", np.float32(0)),
                        net.const("hi", np.float32(6))], "rd")
    return net.model({"x": ["N", 4, 6, 6]}, [net.conv(d, "project", 8, 4)])


def test_depthwise_shares_its_channels_with_its_input():
    m = zero(depthwise_block(), "expand_w", [2])  # expand channel 2 dead, relu(-0.3) = 0 through the dw conv
    b = init(m, "expand_b").copy()
    b[2] = -0.3
    set_init(m, "expand_b", b)
    m = zero(m, "dw_w", [5])  # dw filter 5 dead: expand channel 5 has no other reader, both go
    out, rec = remove_zeroed_channels(m)
    assert rec.stats["groups_removed"] == 2
    assert shape(out, "expand_w") == (6, 4, 1, 1) and shape(out, "dw_w") == (6, 1, 3, 3)
    assert shape(out, "project_w") == (4, 6, 1, 1)
    dw = next(n for n in out.graph.node if n.name == "dw")
    assert attr(dw, "group") == 6
    same_outputs(m, out, image())


def test_depthwise_of_a_live_channel_with_zero_padding_keeps_it():
    """Expand channel 2 dead with a non-zero constant: through the padded dw conv it is not constant at the borders."""
    m = zero(depthwise_block(), "expand_w", [2])
    b = init(m, "expand_b").copy()
    b[2] = 0.5
    set_init(m, "expand_b", b)
    out, rec = remove_zeroed_channels(m)
    assert rec.stats["groups_removed"] == 0
    assert shape(out, "dw_w") == (8, 1, 3, 3)
    same_outputs(m, out, image())


def concat_net() -> onnx.ModelProto:
    net = Net()
    a = net.op("Relu", [net.conv("x", "ca", 4, 3)], "ra")
    b = net.op("Relu", [net.conv("x", "cb", 4, 5)], "rb")
    c = net.op("Concat", [a, b], "cat", axis=1)
    return net.model({"x": ["N", 4, 6, 6]}, [net.conv(c, "head", 8, 2)])


def test_concat_offsets_follow_each_input():
    m = zero(zero(concat_net(), "ca_w", [0]), "cb_w", [1, 4])
    out, rec = remove_zeroed_channels(m)
    assert rec.stats["groups_removed"] == 3
    assert shape(out, "ca_w") == (2, 4, 1, 1) and shape(out, "cb_w") == (3, 4, 1, 1)
    assert shape(out, "head_w") == (2, 5, 1, 1)
    # head's surviving input columns are the original ones at concat positions 1, 2, 3, 5, 6
    kept = init(m, "head_w")[:, [1, 2, 3, 5, 6]]
    np.testing.assert_array_equal(init(out, "head_w"), kept)
    same_outputs(m, out, image())


def split_net(sizes=(3, 5)) -> onnx.ModelProto:
    net = Net()
    h = net.op("Relu", [net.conv("x", "c1", 4, sum(sizes))], "r1")
    parts = net.op("Split", [h, net.const("sizes", np.array(sizes, np.int64))], "split", n_out=2, axis=1)
    y1 = net.conv(f"{parts}_0", "h1", sizes[0], 2)
    y2 = net.conv(f"{parts}_1", "h2", sizes[1], 2)
    return net.model({"x": ["N", 4, 6, 6]}, [net.op("Add", [y1, y2], "y")])


def test_split_sizes_are_rewritten():
    m = zero(split_net(), "c1_w", [4, 6])  # both in the second part
    out, rec = remove_zeroed_channels(m)
    assert rec.stats["groups_removed"] == 2
    assert shape(out, "c1_w") == (6, 4, 1, 1) and shape(out, "h1_w") == (2, 3, 1, 1) and shape(out, "h2_w") == (2, 3, 1, 1)
    split = next(n for n in out.graph.node if n.op_type == "Split")
    assert init(out, split.input[1]).tolist() == [3, 3]
    same_outputs(m, out, image())


def test_split_never_empties_a_part():
    m = zero(split_net((2, 6)), "c1_w", [0, 1, 5])  # the whole first part is dead
    out, rec = remove_zeroed_channels(m)
    split = next(n for n in out.graph.node if n.op_type == "Split")
    sizes = init(out, split.input[1]).tolist()
    assert sizes[1] == 5 and sizes[0] >= 1  # the first part keeps a channel: ORT refuses an empty tensor
    assert rec.stats["groups_removed"] == 2
    assert "removing every channel would leave it empty" in reasons(rec)
    same_outputs(m, out, image())


def residual_net() -> onnx.ModelProto:
    net = Net()
    a = net.conv("x", "stem", 4, 6)
    b = net.conv(net.op("Relu", [a], "ra"), "branch", 6, 6)
    s = net.op("Relu", [net.op("Add", [a, b], "sum")], "rs")
    return net.model({"x": ["N", 4, 6, 6]}, [net.conv(s, "head", 6, 3)])


def test_residual_add_unites_both_branches():
    m = zero(residual_net(), "stem_w", [1, 4])
    m = zero(m, "branch_w", [1])  # channel 1 dead in both branches: goes; channel 4 alive in the branch: stays
    out, rec = remove_zeroed_channels(m)
    assert rec.stats["groups_total"] == 6 + 6 + 3 - 6  # the Add unites stem's and branch's ids
    assert rec.stats["groups_removed"] == 1
    assert shape(out, "stem_w") == (5, 4, 1, 1) and shape(out, "branch_w") == (5, 5, 1, 1)
    assert shape(out, "head_w") == (3, 5, 1, 1)
    same_outputs(m, out, image())


def mlp(matmul: bool) -> onnx.ModelProto:
    net = Net()
    if matmul:
        h = net.op("Add", [net.op("MatMul", ["x", net.w("w1", 6, 10)], "mm1"), net.w("b1", 10, scale=0.1)], "fc1")
    else:
        h = net.op("Gemm", ["x", net.w("w1", 10, 6), net.w("b1", 10, scale=0.1)], "fc1", transB=1)
    h = net.op("Relu", [h], "r")
    y = net.op("Gemm", [h, net.w("w2", 10, 3), net.w("b2", 3, scale=0.1)], "fc2", alpha=0.5, beta=2.0)
    return net.model({"x": ["N", 6]}, [y])


@pytest.mark.parametrize("matmul", [False, True], ids=["gemm", "matmul"])
def test_gemm_and_matmul_features(matmul):
    m = zero(mlp(matmul), "w1", [2, 7], axis=1 if matmul else 0)
    b1 = init(m, "b1").copy()
    b1[2] = 0.3  # feature 2 dead but relu(0.3) folded into fc2's bias (alpha 0.5, beta 2)
    set_init(m, "b1", b1)
    out, rec = remove_zeroed_channels(m)
    assert rec.stats["groups_removed"] == 2
    assert shape(out, "w1") == ((6, 8) if matmul else (8, 6)) and shape(out, "b1") == (8,)
    assert shape(out, "w2") == (8, 3)
    x = {"x": np.random.default_rng(2).standard_normal((5, 6)).astype(np.float32)}
    same_outputs(m, out, x)


# --- structured removal: the pruned model computes what the original computes with those channels zeroed ------

def zeroed_as_pruned(model: onnx.ModelProto, kept: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The original with every removed output channel's weights zeroed (what structured pruning zeroes)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for node in m.graph.node:
        k = kept.get(node.output[0])
        if k is None or node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        axis = 1 if node.op_type == "MatMul" or (node.op_type == "Gemm" and not attr(node, "transB", 0)) else 0
        m = zero(m, node.input[1], np.flatnonzero(~k), axis)
    return m


@pytest.mark.parametrize("build", [conv_bn_relu_conv, depthwise_block, concat_net, split_net, residual_net,
                                   lambda: mlp(False), lambda: mlp(True)],
                         ids=["chain", "depthwise", "concat", "split", "residual", "gemm", "matmul"])
def test_structured_removal_equals_zeroing_the_removed_channels(build):
    m = build()
    dims = len(m.graph.input[0].type.tensor_type.shape.dim)
    feeds = image() if dims == 4 else {"x": np.random.default_rng(3).standard_normal((4, 6)).astype(np.float32)}
    r = structured_removal(m, 0.5, "l2", "global", align=1, min_channels=1)
    assert not any(s.reason.startswith("channel pruning failed") for s in r.record.skipped), reasons(r.record)
    assert r.record.stats["groups_removed"] >= 1 and r.kept
    assert r.record.stats["params_after"] < r.record.stats["params_before"]
    onnx.checker.check_model(r.model)
    same_outputs(zeroed_as_pruned(m, r.kept), r.model, feeds)
    ref = run_ort(m, feeds)[0]  # and it is a different model from the original: channels did go
    assert not np.allclose(ref, run_ort(r.model, feeds)[0], atol=1e-4)
