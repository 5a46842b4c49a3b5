"""Corpus run: the ONNX backend test models shipped inside the installed onnx package.

Issue #3: no crash on any valid ONNX model. For every model that onnx.checker accepts and ONNX Runtime
runs on the test's own inputs, `remove_zeroed_channels` and `prune_model` at ratio 0.5 must return (or
raise one of our own errors) a model that passes the checker; the exact removal must keep the outputs
(ONNX Runtime, optimizations off), the ratio pruning must run and keep the output shapes.

Most backend models are single nodes whose output is the graph output, where nothing can be removed.
So each one whose first input is a float tensor of rank 2..5 is also run "sandwiched": its other inputs
become constants (weights, Slice/Split/Pad parameters, ...), a 1x1 Conv (Gemm for rank 2) with some
output channels zeroed feeds the first input, and a 1x1 Conv/Gemm reads every float output. Dead
channels then flow through the op under test into a layer that can drop them.

Sources: data/node (older onnx wheels ship it; when absent the same models are generated in memory from
onnx.backend.test.case.node), data/simple, data/pytorch-converted, data/pytorch-operator, and the
smallest data/light models (real architectures whose weights are ConstantOfShape: made random
initializers, some channels zeroed, random input since they ship none).
"""
from __future__ import annotations

import functools
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcompress.config import PruneConfig
from onnxcompress.errors import OnnxCompressError
from onnxcompress.passes.prune import prune_model, remove_zeroed_channels
from onnxcompress.passes.prune.remove import INTERNAL

DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
DIRS = ("node", "simple", "pytorch-converted", "pytorch-operator")
LIGHT = ("light_squeezenet", "light_shufflenet", "light_inception_v1")  # the small ones: keeps the run fast
RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
RATIO = PruneConfig(enabled=True, ratio=0.5)
RATIO_NO_FLOOR = PruneConfig(enabled=True, ratio=0.5, align=1, min_channels=1)  # tiny sandwich layers get pruned too


def read_pb(path: Path) -> np.ndarray:
    t = TensorProto()
    t.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(t)


Case = tuple[str, onnx.ModelProto, list]


def dir_cases(sub: str) -> Iterator[Case]:
    for d in sorted(p for p in (DATA / sub).glob("*") if (p / "model.onnx").exists()):
        pbs = sorted((d / "test_data_set_0").glob("input_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
        try:
            inputs = [read_pb(p) for p in pbs]
        except Exception:  # noqa: BLE001 - sequence/optional inputs are not TensorProtos: not this corpus
            continue
        yield f"{sub}/{d.name}", onnx.load(str(d / "model.onnx")), inputs


@functools.lru_cache(maxsize=1)
def generated_node_cases() -> tuple[Case, ...]:
    """The models data/node holds, built by onnx's own generators (seconds, all in memory)."""
    from onnx.backend.test.case.node import collect_testcases
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    out = []
    for c in cases:
        if not c.data_sets:
            continue
        try:  # as the data/node files hold them: tensors (numpy scalars and TensorProtos too)
            inputs = [numpy_helper.to_array(a) if isinstance(a, TensorProto) else np.asarray(a) if isinstance(a, np.generic) else a
                      for a in c.data_sets[0][0]]
        except Exception:  # noqa: BLE001 - a type numpy cannot hold
            continue
        out.append((f"node*/{c.name}", c.model, inputs))
    return tuple(out)


def light_cases() -> Iterator[Case]:
    rng = np.random.default_rng(0)
    for name in LIGHT:
        p = DATA / "light" / f"{name}.onnx"
        if not p.exists():
            continue
        m = onnx.load(str(p))
        inits = {i.name: i for i in m.graph.initializer}
        nodes = []
        for n in m.graph.node:  # weights: ConstantOfShape(shape) -> random initializers
            if n.op_type == "ConstantOfShape" and n.input[0] in inits:
                shape = numpy_helper.to_array(inits[n.input[0]])
                m.graph.initializer.append(numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), n.output[0]))
            else:
                nodes.append(n)
        del m.graph.node[:]
        m.graph.node.extend(nodes)
        inits = {i.name: i for i in m.graph.initializer}
        for n in m.graph.node:
            if n.op_type == "BatchNormalization":
                var = inits[n.input[4]]
                var.CopyFrom(numpy_helper.from_array(np.abs(numpy_helper.to_array(var)) + 0.5, var.name))
            elif n.op_type == "Conv" and rng.random() < 0.6:  # zero some output channels (weights only)
                w = numpy_helper.to_array(inits[n.input[1]]).copy()
                w[rng.random(len(w)) < 0.3] = 0
                inits[n.input[1]].CopyFrom(numpy_helper.from_array(w, n.input[1]))
        used = {i for n in m.graph.node for i in n.input}
        keep = [i for i in m.graph.initializer if i.name in used]
        del m.graph.initializer[:]
        m.graph.initializer.extend(keep)
        graph_inputs = [i for i in m.graph.input if i.name not in {t.name for t in keep} and i.name in used]
        del m.graph.input[:]
        m.graph.input.extend(graph_inputs)
        m.ir_version = max(m.ir_version, 4)  # initializers no longer listed as inputs
        shape = [d.dim_value for d in graph_inputs[0].type.tensor_type.shape.dim]
        yield f"light/{name}", m, [rng.standard_normal(shape).astype(np.float32)]


def cases(source: str) -> Iterator[Case]:
    if source == "node" and not (DATA / "node").exists():
        yield from generated_node_cases()
    elif source == "light":
        yield from light_cases()
    else:
        yield from dir_cases(source)


# ---- the sandwich ---------------------------------------------------------------------------------

def static_shape(vi: onnx.ValueInfoProto) -> Optional[list[int]]:
    t = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or not t.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return None if None in dims else dims


def channel_layer(name: str, x: str, y: str, cin: int, cout: int, rank: int, rng, dead: float) -> tuple[onnx.NodeProto, list]:
    """x -> 1x1 Conv (Gemm for rank 2) -> y; a share `dead` of the output channels have zero weights
    (half of those a zero bias too, so they carry 0, the others a constant)."""
    w = rng.standard_normal((cout, cin)).astype(np.float32) * 0.5
    b = rng.standard_normal(cout).astype(np.float32) * 0.2
    rows = rng.random(cout) < dead
    w[rows] = 0
    b[rows & (rng.random(cout) < 0.5)] = 0
    if rank == 2:
        inits = [numpy_helper.from_array(w.T.copy(), f"{name}_w"), numpy_helper.from_array(b, f"{name}_b")]
        return helper.make_node("Gemm", [x, f"{name}_w", f"{name}_b"], [y], name=name), inits
    inits = [numpy_helper.from_array(w.reshape(cout, cin, *[1] * (rank - 2)), f"{name}_w"), numpy_helper.from_array(b, f"{name}_b")]
    return helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [y], name=name), inits


def channel_input(vi: onnx.ValueInfoProto) -> Optional[list[int]]:
    """The static shape of a float input a channel layer can feed (rank 2..5), else None."""
    shape = static_shape(vi)
    ok = vi.type.tensor_type.elem_type == TensorProto.FLOAT and shape is not None and 2 <= len(shape) <= 5 and 0 not in shape
    return shape if ok else None


def sandwich(model: onnx.ModelProto, inputs: list, seed: int, every: bool = False) -> Optional[tuple[onnx.ModelProto, list]]:
    """The first input (`every`: each float input) fed by a channel layer with dead channels, the other
    inputs made constants, every float output read by a channel layer."""
    if not all(isinstance(a, np.ndarray) for a in inputs):
        return None
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    init_names = {i.name for i in g.initializer}
    graph_inputs = [i for i in g.input if i.name not in init_names]
    if len(graph_inputs) != len(inputs) or not graph_inputs or channel_input(graph_inputs[0]) is None:
        return None
    fed = [vi for vi in graph_inputs if channel_input(vi) is not None][: None if every else 1]
    if every and len(fed) < 2:
        return None  # the same as the plain sandwich
    rng = np.random.default_rng(seed)
    pre, inits, feeds = [], [], []
    for vi, value in zip(graph_inputs, inputs):
        if vi in fed:
            shape = channel_input(vi)
            node, more = channel_layer(f"__pre{len(pre)}", vi.name + "__in", vi.name, shape[1], shape[1], len(shape), rng, dead=0.4)
            pre.append(node)
            inits += more
            vi.name += "__in"
            feeds.append(value)
        else:  # the other inputs become constants (weights, Slice/Pad parameters, ...)
            g.initializer.append(numpy_helper.from_array(value, vi.name))
            g.input.remove(vi)
    post, outputs = [], []
    for k, y in enumerate(list(g.output)):
        ys = channel_input(y)
        if ys is None:
            outputs.append(y)
            continue
        node, more = channel_layer(f"__post{k}", y.name, f"{y.name}__post", ys[1], 3, len(ys), rng, dead=0.0)
        post.append(node)
        inits += more
        outputs.append(helper.make_tensor_value_info(f"{y.name}__post", TensorProto.FLOAT, [ys[0], 3] + ys[2:]))
    if not post:
        return None
    nodes = pre + list(g.node) + post
    del g.node[:]
    g.node.extend(nodes)
    del g.output[:]
    g.output.extend(outputs)
    g.initializer.extend(inits)
    m.ir_version = max(m.ir_version, 4)  # IR 3 wants every initializer listed as an input
    return m, feeds


# ---- running and comparing ------------------------------------------------------------------------

def session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 4  # the corpus holds many models ONNX Runtime rejects: counted, not logged
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, inputs: list) -> list:
    s = session(model)
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4
    return s.run(None, {i.name: v for i, v in zip(s.get_inputs(), inputs)}, quiet)


def why_not(exc: Exception) -> str:
    """A short, groupable reason ONNX Runtime rejected a model."""
    msg = str(exc)
    for key in ("NOT_IMPLEMENTED", "Numpy_type", "No corresponding Numpy type", "Fatal error", "INVALID_ARGUMENT",
                "Exception during initialization", "Non-zero status code"):
        if key in msg:
            return {"Numpy_type": "input type numpy/ORT cannot feed", "No corresponding Numpy type": "input type numpy cannot hold",
                    "Fatal error": "op unknown to ONNX Runtime"}.get(key, key)
    return msg[:40]


def shapes(outputs) -> list:
    return [np.shape(o) if isinstance(o, np.ndarray) else [shapes([e]) for e in o] if isinstance(o, list) else type(o)
            for o in outputs]


def mismatch(ref, got) -> Optional[str]:
    """Why `got` is not numerically `ref` (None: equal). Floats: same NaN/inf positions, 1e-5 of scale."""
    if isinstance(ref, list) or isinstance(got, list):
        if not (isinstance(ref, list) and isinstance(got, list) and len(ref) == len(got)):
            return "different sequence lengths"
        return next((w for w in map(mismatch, ref, got) if w), None)
    if not isinstance(ref, np.ndarray):
        return None if type(ref) is type(got) else f"{type(ref).__name__} vs {type(got).__name__}"
    if not isinstance(got, np.ndarray) or ref.shape != got.shape:
        return f"shape {ref.shape} vs {np.shape(got)}"
    if ref.dtype.kind not in "fc":
        return None if np.array_equal(ref, got) else "values differ"
    r, g = ref.astype(np.complex128 if ref.dtype.kind == "c" else np.float64), got.astype(np.complex128 if ref.dtype.kind == "c" else np.float64)
    if not (np.array_equal(np.isnan(r), np.isnan(g)) and np.array_equal(r[np.isinf(r)], g[np.isinf(r)])
            and np.array_equal(np.isinf(r), np.isinf(g))):
        return "NaN/inf positions differ"
    finite = np.isfinite(r)
    scale = float(np.abs(r[finite]).max(initial=0.0))
    err = float(np.abs(r[finite] - g[finite]).max(initial=0.0))
    return None if err <= 1e-5 * scale + 1e-7 else f"max error {err:.3g} at output scale {scale:.3g}"


class Tally:
    def __init__(self):
        self.counts: Counter = Counter()
        self.skips: Counter = Counter()
        self.failures: list[str] = []

    def check(self, name: str, model: onnx.ModelProto, inputs: list, ref: list, config: PruneConfig) -> None:
        deterministic = not any(n.op_type in RANDOM_OPS for n in model.graph.node)
        for what, fn in (("remove_zeroed_channels", lambda: remove_zeroed_channels(model)),
                         ("prune_model", lambda: prune_model(model, config))):
            where = f"{name} {what}"
            try:
                out, rec = fn()
            except OnnxCompressError as exc:
                self.counts["refused with our error"] += 1
                assert str(exc).strip(), f"{where}: {type(exc).__name__} without a message"
                continue
            except Exception as exc:  # noqa: BLE001 - collected: the test lists every crash at the end
                self.failures.append(f"{where}: crashed: {type(exc).__name__}: {exc}"[:400])
                continue
            internal = [s.reason for s in rec.skipped if s.reason.startswith(INTERNAL)]
            if internal:  # the safety net caught a crash: still a bug
                self.failures.append(f"{where}: {internal[0]}"[:400])
                continue
            try:
                onnx.checker.check_model(out)
            except Exception as exc:  # noqa: BLE001
                self.failures.append(f"{where}: invalid output: {exc}"[:400])
                continue
            if out.SerializeToString() == model.SerializeToString():
                self.counts[f"{what}: unchanged"] += 1
                continue
            self.counts[f"{what}: changed, compared"] += 1
            try:
                got = run(out, inputs)
            except Exception as exc:  # noqa: BLE001
                self.failures.append(f"{where}: ONNX Runtime cannot run the output: {exc}"[:400])
                continue
            if shapes(got) != shapes(ref):
                self.failures.append(f"{where}: output shapes {shapes(got)} vs {shapes(ref)}")
            elif what == "remove_zeroed_channels" and deterministic:
                why = next((w for w in map(mismatch, ref, got) if w), None)
                if why:
                    self.failures.append(f"{where}: outputs differ: {why}; skipped: {[s.reason for s in rec.skipped][:3]}")

    def model(self, name: str, model: onnx.ModelProto, inputs: list) -> None:
        try:
            onnx.checker.check_model(model)
        except Exception:  # noqa: BLE001 - not a valid model: not what the issue is about
            self.skips["rejected by onnx.checker"] += 1
            return
        try:
            ref = run(model, inputs)
        except Exception as exc:  # noqa: BLE001
            self.skips[f"ONNX Runtime cannot run it: {why_not(exc)}"] += 1
            return
        self.counts["models run"] += 1
        self.check(name, model, inputs, ref, RATIO)
        for every in (False, True):
            sw = sandwich(model, inputs, seed=len(name), every=every)
            if sw is None:
                continue
            kind = "sandwich, every input" if every else "sandwich"
            try:
                onnx.checker.check_model(sw[0])
                ref = run(*sw)
            except Exception:  # noqa: BLE001 - e.g. the op rejects the values a Conv now feeds it
                self.skips[f"{kind}: ONNX Runtime cannot run it"] += 1
                continue
            self.counts[f"{kind}: run"] += 1
            self.check(f"{name} [{kind}]", *sw, ref, RATIO_NO_FLOOR)


@pytest.fixture
def quiet_ort():
    """Kernel failures of models ONNX Runtime rejects are logged by its default logger: counted instead."""
    ort.set_default_logger_severity(4)
    yield
    ort.set_default_logger_severity(2)  # ONNX Runtime's default: warnings


@pytest.mark.usefixtures("quiet_ort")
# the ~1,000 node models take ~40 s (front door + back door on each): CI's second, slow step runs them
@pytest.mark.parametrize("source", [pytest.param("node", marks=pytest.mark.slow), *DIRS[1:], "light"])
def test_backend_corpus(source):
    if source not in ("node", "light") and not (DATA / source).exists() or \
            source == "light" and not any((DATA / "light" / f"{n}.onnx").exists() for n in LIGHT):
        pytest.skip(f"this onnx wheel ships no backend/test/data/{source} models")
    tally = Tally()
    with np.errstate(all="ignore"):
        for name, model, inputs in cases(source):
            tally.model(name, model, inputs)
    print(f"\n{source}: {dict(tally.counts)}; skipped: {dict(tally.skips)}")
    assert tally.counts["models run"] > 0, f"no model of {source} could be run: {dict(tally.skips)}"
    assert not tally.failures, f"{len(tally.failures)} failures:\n" + "\n".join(tally.failures[:30])
