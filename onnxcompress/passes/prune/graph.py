"""Graph index and channel bookkeeping for channel pruning.

Every tracked tensor carries, for its channel axis, one channel id per position. Ops that couple
channels (residual Add, depthwise Conv, elementwise ops) unite ids in a union-find; Concat
concatenates id lists, Split/Slice cut them, Flatten repeats each id once per spatial element. A
channel group is then a union-find class: removing it removes every position carrying it, in every
tensor, at once. Each position also carries the constant value the channel holds when that is known
(NaN = data-dependent), so dead channels whose bias is non-zero can be folded into consumers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import onnx
from onnx import numpy_helper

from ...io import is_big


@dataclass
class Channels:
    """Channel ids (and known constant values) of one tensor along `axis` (negative = from the end)."""

    axis: int
    ids: np.ndarray  # int64, one per position
    const: np.ndarray  # float64, NaN where data-dependent

    def __post_init__(self) -> None:
        assert len(self.ids) == len(self.const)


@dataclass
class Read:
    """A consumer that reads channels as inputs (Conv/Gemm/MatMul in-channels): dead channels it reads
    must hold known constants, which are folded into its bias (`exact` False when the fold is approximate)."""

    node: onnx.NodeProto
    tensor: str
    exact_fold: bool
    can_fold: bool


def subgraph_refs(node: onnx.NodeProto) -> set[str]:
    """Names the node's subgraphs (If/Loop/Scan bodies, recursively) read, outer-scope ones included:
    those are implicit inputs of the node."""
    refs: set[str] = set()
    for a in node.attribute:
        for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            for n in g.node:
                refs.update(i for i in n.input if i)
                refs |= subgraph_refs(n)
            refs.update(o.name for o in g.output)
    return refs


def node_inputs(node: onnx.NodeProto) -> list[str]:
    """Explicit and implicit (subgraph) inputs."""
    return [i for i in node.input if i] + sorted(subgraph_refs(node) - set(node.input))


def materialize_constants(model: onnx.ModelProto) -> int:
    """Replace Identity(initializer) nodes (the TorchScript exporter's de-duplication of equal weights)
    by initializers of their own, so each weight belongs to one node and can be sliced. Exact."""
    inits = {i.name: i for i in model.graph.initializer}
    graph_outputs = {o.name for o in model.graph.output}
    done = 0
    for node in list(model.graph.node):
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in graph_outputs:
            t = onnx.TensorProto()
            t.CopyFrom(inits[node.input[0]])
            t.name = node.output[0]
            model.graph.initializer.append(t)
            inits[t.name] = model.graph.initializer[-1]
            model.graph.node.remove(node)
            done += 1
    if done:
        used = {i for n in model.graph.node for i in node_inputs(n)} | graph_outputs
        for init in list(model.graph.initializer):
            if init.name not in used:
                model.graph.initializer.remove(init)
        for inp in list(model.graph.input):  # old-style models list initializers as inputs too
            if inp.name in inits and inp.name not in used:
                model.graph.input.remove(inp)
    return done


# ops whose result on constant inputs onnx's reference evaluator computes exactly as ONNX Runtime does (shape
# moves, and IEEE-rounded float arithmetic); no Cast or Pow (rounding), nothing random or shape-dependent on data
FOLDABLE = {"Reshape", "Unsqueeze", "Squeeze", "Transpose", "Flatten", "Identity", "Concat", "Expand", "Slice", "Gather",
            "Tile", "Add", "Sub", "Mul", "Div", "Neg", "Sqrt", "Reciprocal"}
MAX_FOLD = 1 << 24  # elements of a folded tensor


def fold_constants(model: onnx.ModelProto) -> int:
    """Replace nodes computing only from constants by initializers holding their output, so a parameter
    prepared at run time still belongs to its layer: Paddle exports add a conv bias as
    Add(conv, Reshape(bias, [1, C, 1, 1])), which would otherwise block every channel of that conv. The
    values come from onnx.reference (the op's own definition). Constants left unused are dropped."""
    from onnx.reference import ReferenceEvaluator

    g = model.graph
    if is_big(model):
        return 0
    known: dict[str, onnx.TensorProto] = {i.name: i for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            t = next((a.t for a in n.attribute if a.name == "value"), None)
            if t is not None:
                known[n.output[0]] = t
    outputs = {o.name for o in g.output}
    opset = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    done = 0
    for node in list(g.node):
        ins = [i for i in node.input if i]
        if node.op_type not in FOLDABLE or node.domain not in ("", "ai.onnx") or len(node.output) != 1 or not ins \
                or any(i not in known or known[i].data_location == onnx.TensorProto.EXTERNAL for i in ins) \
                or node.output[0] in outputs:
            continue
        try:
            feeds = {i: numpy_helper.to_array(known[i]) for i in ins}
            one = onnx.helper.make_model(onnx.helper.make_graph(
                [node], "fold", [onnx.helper.make_tensor_value_info(i, known[i].data_type, None) for i in ins],
                [onnx.ValueInfoProto(name=node.output[0])]), opset_imports=opset, ir_version=model.ir_version)
            value = np.asarray(ReferenceEvaluator(one).run(None, feeds)[0])
        except Exception:  # noqa: BLE001 - a node the reference evaluator cannot compute stays as it is
            continue
        if value.size > min(MAX_FOLD, max(int(np.prod(known[i].dims)) for i in ins)):
            continue  # a constant that grows (Expand, Tile, broadcasting) stays computed: the file would grow
        t = numpy_helper.from_array(value, node.output[0])
        g.initializer.append(t)
        known[t.name] = g.initializer[-1]
        if model.ir_version < 4:  # initializers are graph inputs too before IR 4
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        g.node.remove(node)
        done += 1
    if done:
        used = {i for n in g.node for i in node_inputs(n)} | outputs
        for init in list(g.initializer):
            if init.name not in used:
                g.initializer.remove(init)
        for n in list(g.node):
            if n.op_type == "Constant" and n.output[0] not in used:
                g.node.remove(n)
        for inp in list(g.input):  # old-style models list initializers as inputs too
            if inp.name not in used and inp.name not in {i.name for i in g.initializer} and inp.name in known:
                g.input.remove(inp)
    return done


class GraphIndex:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        g = model.graph
        self.inits: dict[str, onnx.TensorProto] = {i.name: i for i in g.initializer}
        self._cache: dict[str, np.ndarray] = {}
        self.const_nodes: dict[str, onnx.NodeProto] = {}
        for n in g.node:
            if n.op_type == "Constant" and any(a.name == "value" for a in n.attribute):
                self.const_nodes[n.output[0]] = n
        self.producer: dict[str, onnx.NodeProto] = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in node_inputs(n):
                self.consumers.setdefault(i, []).append(n)
        self.graph_outputs = {o.name for o in g.output}
        self.opset: Optional[int] = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        self.shapes: dict[str, list[Optional[int]]] = {}
        try:
            inferred = model if is_big(model) else onnx.shape_inference.infer_shapes(model, data_prop=True)
        except Exception:  # noqa: BLE001 - without shapes, nodes that need them are blocked with a reason
            inferred = model
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
            if vi.type.tensor_type.HasField("shape"):
                self.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                                        for d in vi.type.tensor_type.shape.dim]
        for name, t in self.inits.items():
            self.shapes[name] = list(t.dims)

    def const(self, name: str) -> Optional[np.ndarray]:
        """The constant's value (read-only: cached, shared between handlers; set_const replaces it)."""
        if name in self._cache:
            return self._cache[name]
        value = self._load(name)
        if value is not None:
            value.flags.writeable = False
            self._cache[name] = value
        return value

    def _load(self, name: str) -> Optional[np.ndarray]:
        if name in self.inits:
            t = self.inits[name]
            if t.data_location == onnx.TensorProto.EXTERNAL:  # not loaded: treated as not a constant
                return None
            if t.data_type == onnx.TensorProto.FLOAT and t.raw_data and len(t.raw_data) == 4 * int(np.prod(t.dims)):
                return np.frombuffer(t.raw_data, dtype="<f4").reshape(tuple(t.dims))  # no copy of big weights
            return numpy_helper.to_array(t)
        n = self.const_nodes.get(name)
        if n is not None:
            return numpy_helper.to_array(next(a.t for a in n.attribute if a.name == "value"))
        return None

    def set_const(self, name: str, value: np.ndarray) -> None:
        self._cache.pop(name, None)
        if name in self.inits:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(self.inits[name].data_type)
            self.inits[name].CopyFrom(numpy_helper.from_array(value.astype(dtype), name))
            for vi in self.model.graph.input:  # old-style models list initializers as inputs too
                if vi.name == name and vi.type.tensor_type.HasField("shape"):
                    vi.type.tensor_type.shape.CopyFrom(onnx.helper.make_tensor_type_proto(1, value.shape).tensor_type.shape)
        else:
            attr = next(a for a in self.const_nodes[name].attribute if a.name == "value")
            attr.t.CopyFrom(numpy_helper.from_array(value, name))

    def uses(self, name: str) -> int:
        return len(self.consumers.get(name, []))

    def rank(self, name: str) -> Optional[int]:
        s = self.shapes.get(name)
        return None if s is None else len(s)


@dataclass
class ChannelContext:
    """Union-find over channel ids, the tracked tensors, blocks with reasons, and consumer reads."""

    index: GraphIndex
    exact: bool = True
    parent: list[int] = field(default_factory=list)
    tensors: dict[str, Channels] = field(default_factory=dict)
    blocked: dict[int, tuple[str, str]] = field(default_factory=dict)  # id -> (target, reason)
    reads: list[Read] = field(default_factory=list)
    producers: list[tuple[onnx.NodeProto, str, np.ndarray]] = field(default_factory=list)  # node, weight, ids

    def new_ids(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            ra, rb = self.find(x), self.find(y)
            if ra != rb:
                self.parent[rb] = ra

    def block(self, ids: np.ndarray, target: str, reason: str) -> None:
        for i in ids.tolist():
            self.blocked.setdefault(i, (target, reason))

    def block_tensor(self, name: str, target: str, reason: str) -> None:
        ch = self.tensors.get(name)
        if ch is not None:
            self.block(ch.ids, target, reason)

    def roots(self, ids: np.ndarray) -> np.ndarray:
        return np.fromiter((self.find(i) for i in ids.tolist()), dtype=np.int64, count=len(ids))
