"""Property test: random valid conv nets (a DAG of the ops channel pruning knows, plus ones it does not),
with random output channels of random Convs zeroed. Removing the zeroed channels must give a valid
model with the same outputs and no more parameters; pruning at a ratio must give a valid model that
runs and keeps the output shapes; with calibration data, least-squares reconstruction must too, and must
not make the outputs on the calibration data worse."""
from __future__ import annotations

import os

import numpy as np
import onnx
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort
from onnxcompress.config import PruneConfig
from onnxcompress.passes.prune import prune_model, remove_zeroed_channels
from onnxcompress.passes.prune.remove import INTERNAL
from onnxcompress.stats import count_params

FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "40")), derandomize=not os.environ.get("FUZZ_EXAMPLES"),
                deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BATCH = 2
INT64_MAX = 2**63 - 1
OPS = ["conv", "conv", "conv", "bn", "act", "clip", "add", "mul", "concat", "split", "slice", "pool", "transpose",
       "unknown", "convtranspose", "matmul", "pad", "reshaping", "resize"]
ACTS = ["Relu", "Sigmoid", "HardSwish", "LeakyRelu", "Tanh", "Elu", "Softplus", "HardSigmoid", "Identity"]


class Net:
    """A graph under construction; `pool` holds the 4-D tensors available as operands: name -> shape."""

    def __init__(self, draw, rng: np.random.Generator, channels: int, size: int, opset: int):
        self.draw, self.rng, self.opset = draw, rng, opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.pool: dict[str, tuple[int, int, int, int]] = {"input": (BATCH, channels, size, size)}
        self.last = "input"
        self.producers: list[tuple[str, str, int]] = []  # (weight, bias or "", output-channel axis of the weight)
        self.n = 0

    def name(self, kind: str) -> str:
        self.n += 1
        return f"{kind}{self.n}"

    def const(self, value: np.ndarray, kind: str) -> str:
        name = self.name(kind)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], shape, outputs: int = 1, **attrs) -> list[str]:
        outs = [self.name(op.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=outs[0], **attrs))
        shapes = shape if outputs > 1 else [shape]
        for o, s in zip(outs, shapes):
            if s is not None:
                self.pool[o] = tuple(s)
        self.last = outs[0]
        return outs

    def operand(self) -> str:
        """Mostly the newest tensor (a chain), sometimes an earlier one (a DAG)."""
        names = list(self.pool)
        return self.last if self.draw(st.integers(0, 3)) else self.draw(st.sampled_from(names))

    def normal(self, *shape, scale=1.0) -> np.ndarray:
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    # ---- ops -------------------------------------------------------------------------------------
    def conv(self, x: str) -> None:
        n, c, h, w = self.pool[x]
        kind = self.draw(st.sampled_from(["dense", "dense", "depthwise", "grouped"]))
        divisors = [g for g in range(2, c + 1) if c % g == 0]
        if kind == "depthwise" and c > 1:
            group, cout = c, c * self.draw(st.sampled_from([1, 1, 2]))
        elif kind == "grouped" and divisors:
            group = self.draw(st.sampled_from(divisors))
            cout = group * self.draw(st.integers(1, 3))
        else:
            group, cout = 1, self.draw(st.integers(1, 12))
        k = self.draw(st.sampled_from([1, 3])) if min(h, w) >= 3 else 1
        pad = self.draw(st.sampled_from([0, 1])) if k == 3 else 0
        stride = self.draw(st.sampled_from([1, 1, 1, 2]))
        weight = self.const(self.normal(cout, c // group, k, k, scale=1 / np.sqrt(c // group * k * k)), "w")
        shared = [i.name for i in self.inits if i.name.startswith("w") and tuple(i.dims) == (cout, c // group, k, k)][:-1]
        if shared and self.draw(st.integers(0, 3)) == 0:  # two convs with one weight: not sliceable
            weight = self.draw(st.sampled_from(shared))
        inputs = [x, weight]
        if self.draw(st.integers(0, 5)) == 0:  # TorchScript's de-duplication: the weight through Identity
            inputs[1] = self.node("Identity", [weight], None)[0]
        bias = ""
        if self.draw(st.booleans()):
            bias = self.const(self.normal(cout, scale=0.3), "b")
            inputs.append(bias)
        ho, wo = ((d + 2 * pad - k) // stride + 1 for d in (h, w))
        self.node("Conv", inputs, (n, cout, ho, wo), group=group, kernel_shape=[k, k], pads=[pad] * 4, strides=[stride] * 2)
        self.producers.append((weight, bias, 0))

    def convtranspose(self, x: str) -> None:
        n, c, h, w = self.pool[x]
        cout = self.draw(st.integers(1, 8))
        k, stride, pad = self.draw(st.sampled_from([(2, 2, 0), (3, 1, 1), (1, 1, 0)]))
        weight = self.const(self.normal(c, cout, k, k, scale=1 / np.sqrt(c * k * k)), "wt")
        bias = self.const(self.normal(cout, scale=0.3), "bt") if self.draw(st.booleans()) else ""
        ho, wo = ((d - 1) * stride - 2 * pad + k for d in (h, w))
        self.node("ConvTranspose", [x, weight] + ([bias] if bias else []), (n, cout, ho, wo), kernel_shape=[k, k],
                  strides=[stride] * 2, pads=[pad] * 4)
        self.producers.append((weight, bias, 1))

    def matmul(self, x: str) -> None:
        """NHWC feed-forward: Transpose, MatMul (+ bias Add), activation, Transpose back."""
        n, c, h, w = self.pool[x]
        k = self.draw(st.integers(1, 10))
        (t,) = self.node("Transpose", [x], None, perm=[0, 2, 3, 1])
        weight = self.const(self.normal(c, k, scale=1 / np.sqrt(c)), "mm")
        (t,) = self.node("MatMul", [t, weight], None)
        bias = ""
        if self.draw(st.booleans()):
            bias = self.const(self.normal(k, scale=0.3), "mmb")
            (t,) = self.node("Add", [t, bias], None)
        (t,) = self.node(self.draw(st.sampled_from(ACTS)), [t], None)
        self.node("Transpose", [t], (n, k, h, w), perm=[0, 3, 1, 2])
        self.producers.append((weight, bias, 1))

    def act(self, x: str) -> None:
        self.node(self.draw(st.sampled_from(ACTS)), [x], self.pool[x])

    def pad(self, x: str) -> None:
        n, c, h, w = self.pool[x]
        mode = self.draw(st.sampled_from(["constant", "reflect", "edge"] if min(h, w) >= 2 else ["constant", "edge"]))
        p = [0, 0, 1, 1, 0, 0, 1, 0]
        ins = [x, self.const(np.array(p, dtype=np.int64), "pads")]
        if mode == "constant" and self.draw(st.booleans()):
            ins.append(self.const(np.array(self.draw(st.sampled_from([0.0, 0.5])), dtype=np.float32), "pv"))
        if self.opset >= 18 and self.draw(st.booleans()):  # pads of the listed axes only
            ins[1] = self.const(np.array([1, 1, 1, 0], dtype=np.int64), "pads")
            ins += [""] * (3 - len(ins)) + [self.const(np.array([2, -1], dtype=np.int64), "axes")]
        self.node("Pad", ins, (n, c, h + 2, w + 1), mode=mode)

    def resize(self, x: str) -> None:
        n, c, h, w = self.pool[x]
        scales = self.const(np.array([1, 1, 2, 2], dtype=np.float32), "scales")
        self.node("Resize", [x, "", scales], (n, c, 2 * h, 2 * w), mode=self.draw(st.sampled_from(["nearest", "linear"])))

    def reshaping(self, x: str) -> None:
        """Unsqueeze + Squeeze round trip, Dropout (inference: identity), Flatten + Reshape back."""
        n, c, h, w = self.pool[x]
        kind = self.draw(st.sampled_from(["squeeze", "dropout", "flatten"]))
        if kind == "squeeze":
            (t,) = self.node("Unsqueeze", [x, self.const(np.array([4], dtype=np.int64), "ax")], None)
            self.node("Squeeze", [t, self.const(np.array([-1], dtype=np.int64), "ax")], (n, c, h, w))
        elif kind == "dropout":
            self.node("Dropout", [x, self.const(np.array(0.3, dtype=np.float32), "ratio")], (n, c, h, w))
        else:
            (t,) = self.node("Flatten", [x], None)
            self.node("Reshape", [t, self.const(np.array([n, c, h, w], dtype=np.int64), "shape")], (n, c, h, w))

    def bn(self, x: str) -> None:
        c = self.pool[x][1]
        params = [self.rng.uniform(0.5, 1.5, c), self.rng.standard_normal(c) * 0.5, self.rng.standard_normal(c) * 0.2,
                  self.rng.uniform(0.5, 1.5, c)]
        self.node("BatchNormalization", [x] + [self.const(p.astype(np.float32), "bn") for p in params], self.pool[x])

    def clip(self, x: str) -> None:
        lo = self.const(np.array(self.rng.uniform(-1, 0), dtype=np.float32), "lo") if self.draw(st.booleans()) else ""
        hi = self.const(np.array(self.rng.uniform(0.5, 6), dtype=np.float32), "hi")
        self.node("Clip", [x, lo, hi], self.pool[x])

    def add(self, x: str) -> None:
        same = [t for t, s in self.pool.items() if s == self.pool[x]]
        self.node(self.draw(st.sampled_from(["Add", "Add", "Sub"])), [x, self.draw(st.sampled_from(same))], self.pool[x])

    def mul(self, x: str) -> None:
        c = self.pool[x][1]
        shape = self.draw(st.sampled_from([(1, c, 1, 1), (c, 1, 1)]))
        scale = self.const(self.normal(*shape), "scale")
        op = self.draw(st.sampled_from(["Mul", "Mul", "Add", "Div"]))
        if op == "Div":  # by a computed constant (not an initializer); never by an activation, which can
            # be 0: the exact removal assumes finite activations (a zero-weight channel outputs its bias)
            self.nodes.append(helper.make_node("Abs", [scale], [scale + "_abs"]))
            self.node(op, [x, scale + "_abs"], self.pool[x])
            return
        self.node(op, [x, scale] if self.draw(st.booleans()) else [scale, x], self.pool[x])

    def concat(self, x: str) -> None:
        n, _, h, w = self.pool[x]
        fits = [t for t, s in self.pool.items() if s[2:] == (h, w)]
        parts = [x] + self.draw(st.lists(st.sampled_from(fits), min_size=1, max_size=2))
        self.node("Concat", parts, (n, sum(self.pool[p][1] for p in parts), h, w), axis=self.draw(st.sampled_from([1, -3])))

    def split(self, x: str) -> None:
        n, c, h, w = self.pool[x]
        if c < 2:
            return self.conv(x)
        k = self.draw(st.integers(2, min(c, 3)))
        extra = {}
        if c % k == 0 and self.draw(st.booleans()):
            sizes, inputs = [c // k] * k, [x]
            if self.opset >= 18:
                extra["num_outputs"] = k
        else:
            cuts = sorted(self.draw(st.lists(st.integers(1, c - 1), min_size=k - 1, max_size=k - 1, unique=True)))
            sizes = [b - a for a, b in zip([0] + cuts, cuts + [c])]
            inputs = [x, self.const(np.array(sizes, dtype=np.int64), "split")]
        outs = self.node("Split", inputs, [(n, s, h, w) for s in sizes], outputs=len(sizes), axis=1, **extra)
        self.last = self.draw(st.sampled_from(outs))

    def slice(self, x: str) -> None:
        n, c, h, w = self.pool[x]
        step = self.draw(st.sampled_from([1, 1, 2, -1, -2]))
        edges = [0, 1, c // 2, c - 1, c, -1, -c, INT64_MAX, -INT64_MAX - 1]
        start, end = self.draw(st.sampled_from(edges)), self.draw(st.sampled_from(edges))
        if step < 0 and end == INT64_MAX:
            end = -INT64_MAX - 1
        if not len(range(c)[slice(start, end, step)]):
            start, end = (0, c) if step > 0 else (c - 1, -INT64_MAX - 1)
        sel = len(range(c)[slice(start, end, step)])
        starts, ends, axes, steps = [start], [end], [self.draw(st.sampled_from([1, -3]))], [step]
        hs = h
        if h > 2 and self.draw(st.booleans()):  # also cut the height
            starts, ends, axes, steps, hs = starts + [1], ends + [h], axes + [2], steps + [1], h - 1
        ins = [self.const(np.array(v, dtype=np.int64), "sl") for v in (starts, ends, axes, steps)]
        self.node("Slice", [x] + ins, (n, sel, hs, w))

    def pool_op(self, x: str) -> None:
        n, c, h, w = self.pool[x]
        op = self.draw(st.sampled_from(["MaxPool", "AveragePool"]))
        extra = {"count_include_pad": int(self.draw(st.booleans()))} if op == "AveragePool" else {}
        if min(h, w) >= 2 and self.draw(st.booleans()):
            self.node(op, [x], (n, c, h // 2, w // 2), kernel_shape=[2, 2], strides=[2, 2], **extra)
        else:
            self.node(op, [x], (n, c, h, w), kernel_shape=[3, 3], pads=[1, 1, 1, 1], **extra)

    def transpose(self, x: str) -> None:
        n, c, h, w = self.pool[x]
        if self.draw(st.booleans()):
            self.node("Transpose", [x], (n, c, w, h), perm=[0, 1, 3, 2])
            return
        (t,) = self.node("Transpose", [x], None, perm=[0, 2, 3, 1])  # NHWC: channels last
        inner = self.draw(st.sampled_from(["Relu", "Mul", "none"]))
        if inner == "Relu":
            (t,) = self.node("Relu", [t], None)
        elif inner == "Mul":
            (t,) = self.node("Mul", [t, self.const(self.normal(c), "scale")], None)
        self.node("Transpose", [t], (n, c, h, w), perm=[0, 3, 1, 2])

    def unknown(self, x: str) -> None:
        n, c, h, w = self.pool[x]
        op = self.draw(st.sampled_from(["Tile", "Cos", "Neg", "LpNormalization", "Softsign", "InstanceNormalization"]))
        if op == "Tile":
            r = self.draw(st.sampled_from([1, 2]))
            self.node("Tile", [x, self.const(np.array([1, r, 1, 1], dtype=np.int64), "reps")], (n, c * r, h, w))
        elif op == "LpNormalization":
            self.node(op, [x], self.pool[x], axis=self.draw(st.sampled_from([1, -1])))
        elif op == "InstanceNormalization":
            self.node(op, [x, self.const(self.normal(c), "g"), self.const(self.normal(c), "b")], self.pool[x])
        else:
            self.node(op, [x], self.pool[x])

    def step(self, op: str) -> None:
        x = self.operand()
        getattr(self, "pool_op" if op == "pool" else op)(x)

    def head(self) -> tuple[str, list]:
        """GlobalAveragePool + Flatten, ReduceMean or Flatten alone, then Gemm; or the last tensor as it is."""
        x = self.last
        n, c, h, w = self.pool[x]
        kind = self.draw(st.sampled_from(["none", "gap", "gap", "reduce", "flatten", "reshape"]))
        if kind == "none":
            return x, list(self.pool[x])
        if kind == "gap":
            (g,) = self.node("GlobalAveragePool", [x], (n, c, 1, 1))
            (f,) = self.node("Flatten", [g], None)
        elif kind == "reduce" and self.opset >= 18:
            (f,) = self.node("ReduceMean", [x, self.const(np.array([2, -1], dtype=np.int64), "axes")], None, keepdims=0)
        elif kind == "reduce":
            (f,) = self.node("ReduceMean", [x], None, axes=[2, 3], keepdims=0)
        elif kind == "reshape":  # the dynamo exporter's flatten: the batch size read from the shape
            (s,) = self.node("Shape", [x], None)
            (b,) = self.node("Gather", [s, self.const(np.array([0], dtype=np.int64), "i")], None, axis=0)
            (t,) = self.node("Concat", [b, self.const(np.array([-1], dtype=np.int64), "minus1")], None, axis=0)
            (f,) = self.node("Reshape", [x, t], None)
            c = c * h * w
        else:
            (f,) = self.node("Flatten", [x], None)
            c = c * h * w
        k = self.draw(st.integers(1, 5))
        trans = self.draw(st.booleans())
        wt = self.normal(k, c) if trans else self.normal(c, k)
        ins = [f, self.const(wt, "fc")]
        bias = self.draw(st.sampled_from([None, (k,), (1, k), (1,)]))
        if bias is not None:
            ins.append(self.const(self.normal(*bias), "fcb"))
        alpha, beta = (self.draw(st.sampled_from([1.0, 1.0, 0.5, 2.0])) for _ in range(2))
        (y,) = self.node("Gemm", ins, None, transB=int(trans), alpha=alpha, beta=beta)
        return y, [n, k]


@st.composite
def random_net(draw) -> onnx.ModelProto:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    net = Net(draw, rng, draw(st.integers(1, 6)), draw(st.integers(4, 8)), draw(st.sampled_from([14, 17, 18])))
    net.conv("input")
    for op in draw(st.lists(st.sampled_from(OPS), min_size=2, max_size=12)):
        net.step(op)
    out, shape = net.head()
    # zero random output channels of the layers: weights and bias for some, weights only for others
    inits = {t.name: t for t in net.inits}
    for weight, bias, axis in net.producers:
        w = np.moveaxis(numpy_helper.to_array(inits[weight]).copy(), axis, 0)
        rows = rng.random(len(w)) < draw(st.sampled_from([0.0, 0.3, 0.6, 1.0]))
        w[rows] = 0
        inits[weight].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(np.moveaxis(w, 0, axis)), weight))
        if bias:
            b = numpy_helper.to_array(inits[bias]).copy()
            b[rows & (rng.random(len(b)) < draw(st.sampled_from([0.0, 0.5, 1.0])))] = 0
            inits[bias].CopyFrom(numpy_helper.from_array(b, bias))
    graph = helper.make_graph(net.nodes, "random", [helper.make_tensor_value_info("input", TensorProto.FLOAT, net.pool["input"])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, shape)], net.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", net.opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def assert_close(ref: np.ndarray, got: np.ndarray) -> None:
    assert got.shape == ref.shape
    assert np.array_equal(np.isnan(got), np.isnan(ref))
    scale = float(np.abs(np.nan_to_num(ref)).max(initial=0.0))
    err = float(np.abs(np.nan_to_num(got) - np.nan_to_num(ref)).max(initial=0.0))
    assert err <= 1e-5 * scale + 1e-6, (err, scale)


def check_removal(model: onnx.ModelProto, seed: int) -> None:
    x = np.random.default_rng(seed).standard_normal(tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim))
    feeds = {"input": x.astype(np.float32)}
    ref = run_ort(model, feeds)[0]
    out, rec = remove_zeroed_channels(model)
    assert not [s for s in rec.skipped if s.reason.startswith(INTERNAL)]
    onnx.checker.check_model(out, full_check=True)
    assert_close(ref, run_ort(out, feeds)[0])
    assert count_params(out) <= count_params(model), rec.to_dict()
    pruned, rec = prune_model(model, PruneConfig(enabled=True, ratio=0.5, align=1, min_channels=1))
    assert not [s for s in rec.skipped if s.reason.startswith(INTERNAL)]
    onnx.checker.check_model(pruned, full_check=True)
    assert run_ort(pruned, feeds)[0].shape == ref.shape


@FUZZ
@given(model=random_net(), seed=st.integers(0, 2**16))
def test_removing_zeroed_channels_keeps_outputs(model, seed):
    try:
        check_removal(model, seed)
    except Exception:
        note(onnx.printer.to_text(model.graph))
        raise


def check_reconstruction(model: onnx.ModelProto, seed: int) -> None:
    """Pruning at a ratio with least-squares reconstruction: a valid model with finite outputs of the
    original's shape, and the refit never makes the pruned model's outputs on the calibration data worse."""
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    rng = np.random.default_rng(seed)
    calib = [{"input": rng.standard_normal(shape).astype(np.float32)} for _ in range(4)]
    cfg = PruneConfig(enabled=True, ratio=0.5, align=1, min_channels=1)
    plain, _ = prune_model(model, cfg)
    refit, rec = prune_model(model, cfg, calibration=calib)
    assert not [s for s in rec.skipped if s.reason.startswith(INTERNAL)]
    onnx.checker.check_model(refit, full_check=True)
    ref = np.concatenate([run_ort(model, b)[0] for b in calib])
    errs = []
    for m in (plain, refit):
        got = np.concatenate([run_ort(m, b)[0] for b in calib])
        assert got.shape == ref.shape
        assert np.isfinite(got).all() or not np.isfinite(ref).all()
        errs.append(float(np.square(np.nan_to_num(got - ref)).mean()))
    note(f"mse plain {errs[0]:.4g}, refit {errs[1]:.4g}: {rec.stats.get('reconstruct')}")
    assert errs[1] <= errs[0] * 1.05 + 1e-9, errs


@FUZZ
@given(model=random_net(), seed=st.integers(0, 2**16))
def test_reconstruction_on_random_nets(model, seed):
    try:
        check_reconstruction(model, seed)
    except Exception:
        note(onnx.printer.to_text(model.graph))
        raise


# ---- hand-built cases for structures the generator does not reach (each was a bug) -----------------

def conv_init(name: str, cin: int, cout: int, dead=(), bias=None, dtype=np.float32) -> list[onnx.TensorProto]:
    """A 1x1 conv's weight (rows `dead` zeroed) and optionally a bias (its `dead` entries set to `bias`)."""
    rng = np.random.default_rng(len(name) + cin * 7 + cout)
    w = rng.standard_normal((cout, cin, 1, 1)).astype(dtype)
    w[list(dead)] = 0
    out = [numpy_helper.from_array(w, f"{name}_w")]
    if bias is not None:
        b = rng.standard_normal(cout).astype(dtype)
        b[list(dead)] = bias
        out.append(numpy_helper.from_array(b, f"{name}_b"))
    return out


def build(nodes, inits, outputs: list[str], opset=17, shape=(2, 3, 5, 5), elem=TensorProto.FLOAT, extra_inputs=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "case", [helper.make_tensor_value_info("input", elem, shape), *extra_inputs],
                              [onnx.ValueInfoProto(name=o) for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    types = {v.name: v.type for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    for o in model.graph.output:
        o.type.CopyFrom(types[o.name])
    onnx.checker.check_model(model, full_check=True)
    return model


def removal_keeps_outputs(model, feeds=None, dtype=np.float32):
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    feeds = {"input": np.random.default_rng(0).standard_normal(shape).astype(dtype), **(feeds or {})}
    ref = run_ort(model, feeds)
    out, rec = remove_zeroed_channels(model)
    assert not [s for s in rec.skipped if s.reason.startswith(INTERNAL)]
    onnx.checker.check_model(out, full_check=True)
    got = run_ort(out, feeds)
    for r, g in zip(ref, got):
        assert_close(r.astype(np.float64), g.astype(np.float64))
    return out, rec


def conv(name, x, **kw):
    return helper.make_node("Conv", [x, f"{name}_w"] + ([f"{name}_b"] if kw.pop("bias", False) else []), [name], name=name, **kw)


def test_shape_reading_the_channel_count_blocks():
    """Shape(y)[1] is the channel count: removing a channel of y would change it."""
    nodes = [conv("c1", "input", bias=True), conv("c2", "c1"),
             helper.make_node("Shape", ["c1"], ["s"]), helper.make_node("Gather", ["s", "one"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "zero"], ["n1"]), helper.make_node("ConstantOfShape", ["n1"], ["zeros"])]
    inits = conv_init("c1", 3, 4, dead=[2], bias=0.0) + conv_init("c2", 4, 2) + [
        numpy_helper.from_array(np.array(1, dtype=np.int64), "one"), numpy_helper.from_array(np.array([0], dtype=np.int64), "zero")]
    _, rec = removal_keeps_outputs(build(nodes, inits, ["c2", "zeros"]))
    assert rec.stats["groups_removed"] == 0 and any("shape" in s.reason for s in rec.skipped)
    # reading only the batch size (Gather 0) is fine: the channel goes
    inits[-2] = numpy_helper.from_array(np.array(0, dtype=np.int64), "one")
    _, rec = removal_keeps_outputs(build(nodes, inits, ["c2", "zeros"]))
    assert rec.stats["groups_removed"] == 1


def test_tensor_read_inside_a_subgraph_blocks():
    then = helper.make_graph([helper.make_node("Identity", ["c1"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Neg", ["c1"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    nodes = [conv("c1", "input", bias=True), conv("c2", "c1"), helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)]
    model = build(nodes, conv_init("c1", 3, 4, dead=[1], bias=0.0) + conv_init("c2", 4, 2),
                  ["c2", "y"],
                  extra_inputs=[helper.make_tensor_value_info("cond", TensorProto.BOOL, [])])
    _, rec = removal_keeps_outputs(model, {"cond": np.array(True)})
    assert rec.stats["groups_removed"] == 0 and any("subgraph" in s.reason for s in rec.skipped)


def test_reduction_over_all_axes_blocks():
    """opset 18 ReduceMean with empty axes reduces every axis, the channel axis included."""
    nodes = [conv("c1", "input", bias=True), helper.make_node("ReduceMean", ["c1", "axes"], ["m"]), conv("c2", "m")]
    inits = conv_init("c1", 3, 4, dead=[0], bias=0.0) + conv_init("c2", 1, 2) + [numpy_helper.from_array(np.zeros(0, dtype=np.int64), "axes")]
    _, rec = removal_keeps_outputs(build(nodes, inits, ["c2"], opset=18))
    assert rec.stats["groups_removed"] == 0


def test_pad_with_axes_on_the_channel_axis_blocks():
    """opset 18 Pad: `pads` lists only the axes in `axes`; here it pads the channels."""
    nodes = [conv("c1", "input", bias=True), helper.make_node("Pad", ["c1", "pads", "", "axes"], ["p"]), conv("c2", "p")]
    inits = conv_init("c1", 3, 4, dead=[0], bias=0.0) + conv_init("c2", 6, 2) + [
        numpy_helper.from_array(np.array([1, 0, 1, 0], dtype=np.int64), "pads"), numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes")]
    _, rec = removal_keeps_outputs(build(nodes, inits, ["c2"], opset=18))
    assert rec.stats["groups_removed"] == 0


def test_resize_opset10_scaling_channels_blocks():
    nodes = [conv("c1", "input", bias=True), helper.make_node("Resize", ["c1", "scales"], ["r"]), conv("c2", "r")]
    inits = conv_init("c1", 3, 4, dead=[0], bias=0.0) + conv_init("c2", 8, 2) + [
        numpy_helper.from_array(np.array([1, 2, 1, 1], dtype=np.float32), "scales")]
    _, rec = removal_keeps_outputs(build(nodes, inits, ["c2"], opset=10))
    assert rec.stats["groups_removed"] == 0


def test_constants_changed_by_the_op_are_not_folded_as_they_were():
    """A dead channel's constant through: Pad with a `value` attribute (opset < 11), AveragePool with
    SAME padding counted, Cast to int (truncates 0.7 to 0), tanh-approximated Gelu."""
    cases = [
        (10, [helper.make_node("Pad", ["c1"], ["y"], pads=[0, 0, 1, 1, 0, 0, 1, 1], value=1.0)]),  # dead: 0
        (17, [helper.make_node("AveragePool", ["c1"], ["y"], kernel_shape=[3, 3], auto_pad="SAME_UPPER", count_include_pad=1)]),
        (17, [helper.make_node("Cast", ["c1"], ["i"], to=TensorProto.INT32), helper.make_node("Cast", ["i"], ["y"], to=TensorProto.FLOAT)]),
        (20, [helper.make_node("Gelu", ["c1"], ["y"], approximate="tanh")]),
    ]
    for opset, middle in cases:
        nodes = [conv("c1", "input", bias=True), *middle, conv("c2", "y", bias=True)]
        model = build(nodes, conv_init("c1", 3, 4, dead=[1], bias=0.0 if opset == 10 else 0.7)
                      + conv_init("c2", 4, 2, bias=0.0), ["c2"], opset=opset)
        removal_keeps_outputs(model)


def test_float16_model_gets_a_float16_folded_bias():
    nodes = [conv("c1", "input", bias=True), helper.make_node("Relu", ["c1"], ["r"]), conv("c2", "r")]
    inits = conv_init("c1", 3, 4, dead=[1], bias=0.5, dtype=np.float16) + conv_init("c2", 4, 2, dtype=np.float16)
    model = build(nodes, inits, ["c2"], elem=TensorProto.FLOAT16)
    out, rec = removal_keeps_outputs(model, dtype=np.float16)
    assert rec.stats["groups_removed"] == 1
    assert {t.data_type for t in out.graph.initializer} == {TensorProto.FLOAT16}


def test_a_handler_failure_leaves_the_model_unchanged_with_a_reason(monkeypatch):
    """The safety net: a structure a handler gets wrong is skipped with the error, never a crash."""
    from onnxcompress.passes.prune.handlers import HANDLERS

    def broken(*args):
        raise IndexError("boom")

    nodes = [conv("c1", "input", bias=True), helper.make_node("Relu", ["c1"], ["r"]), conv("c2", "r")]
    model = build(nodes, conv_init("c1", 3, 4, dead=[1], bias=0.0) + conv_init("c2", 4, 2), ["c2"])
    monkeypatch.setattr(HANDLERS["Relu"], "apply", broken)
    for out, rec in (remove_zeroed_channels(model), prune_model(model, PruneConfig(enabled=True, ratio=0.5, align=1, min_channels=1))):
        assert out.SerializeToString() == model.SerializeToString()
        assert [s.reason for s in rec.skipped] == [f"{INTERNAL}: IndexError: boom"]
