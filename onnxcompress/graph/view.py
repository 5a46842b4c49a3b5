"""A small view over an onnx.ModelProto: producers, consumers, initializers as numpy, shapes, typed attributes.

Why not onnx_ir: our passes edit the ModelProto in place and hand it to onnxsim, ORT's quantizer and the
checker, which all take protos; a view that reads the proto and writes initializers back keeps one model
object, where an IR would cost a proto -> IR -> proto round trip per pass (see docs/architecture.md).
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper


def attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """The attribute's value as a Python value (int, float, list, tensor...), `default` when absent."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def set_attr(node: onnx.NodeProto, name: str, value: Any) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def node_name(node: onnx.NodeProto) -> str:
    """The one name we give a node in records: its name, else its first output (always unique)."""
    return node.name or node.output[0]


class GraphView:
    """Producers and consumers of a graph's tensors, its initializers as numpy arrays, and its shapes.

    Constants are read from initializers, also through Identity(initializer) nodes. Writes (`set_const`,
    `set_input`) are kept as arrays and written back to the proto by `write`, so repeated edits of one weight
    (equalization's iterations) serialize it once."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        g = model.graph
        self.inits: dict[str, onnx.TensorProto] = {i.name: i for i in g.initializer}
        self.arrays: dict[str, np.ndarray] = {}
        self.identity = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Identity" and n.input[0] in self.inits}
        self.producer: dict[str, onnx.NodeProto] = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in g.output}
        self.uses = Counter(i for n in g.node for i in n.input) + Counter(self.outputs)
        self.dirty: set[str] = set()
        self._shapes: Optional[dict[str, list[Optional[int]]]] = None

    # -- constants -------------------------------------------------------------------------------------
    def const(self, name: str) -> Optional[np.ndarray]:
        """The value of an initializer (also seen through Identity nodes), None for activations and for
        external data that is not loaded."""
        if not name:
            return None
        name = self.identity.get(name, name)
        if name not in self.arrays:
            t = self.inits.get(name)
            if t is None or t.data_location == onnx.TensorProto.EXTERNAL:
                return None
            self.arrays[name] = numpy_helper.to_array(t)
        return self.arrays[name]

    def set_const(self, name: str, value: np.ndarray) -> None:
        """Replace an initializer's value (all its readers see it)."""
        self.arrays[name] = value
        self.dirty.add(name)

    def set_input(self, node: onnx.NodeProto, idx: int, value: np.ndarray) -> None:
        """Give `node` input `idx` the constant `value`. An initializer other nodes also read (or one seen
        through Identity, or a missing input) is duplicated under a new name, so only this node changes."""
        name = node.input[idx] if idx < len(node.input) else ""
        if not name or name in self.identity or self.uses[name] > 1 or (name not in self.inits and name not in self.arrays):
            base = self.identity.get(name, name) or f"{node_name(node)}_in{idx}"
            new, k = base + "_eq", 0
            while new in self.inits or new in self.arrays or new in self.producer:
                k += 1
                new = f"{base}_eq{k}"
            if name:
                self.uses[name] -= 1
            while len(node.input) <= idx:
                node.input.append("")
            node.input[idx] = name = new
            self.uses[name] += 1
        self.set_const(name, value)

    def write(self) -> onnx.ModelProto:
        """Write the edited constants back into the model's initializers (new ones appended)."""
        g = self.model.graph
        for init in g.initializer:
            if init.name in self.dirty:
                init.CopyFrom(numpy_helper.from_array(self.arrays[init.name], init.name))
        new = sorted(self.dirty - set(self.inits))
        g.initializer.extend(numpy_helper.from_array(self.arrays[n], n) for n in new)
        self.inits.update({i.name: i for i in g.initializer if i.name in new})
        self.dirty.clear()
        return self.model

    # -- structure -------------------------------------------------------------------------------------
    def only_consumer(self, tensor: str) -> Optional[onnx.NodeProto]:
        """The single node reading `tensor`, None when it has several readers or is a graph output."""
        users = self.consumers.get(tensor, [])
        return users[0] if len(users) == 1 and tensor not in self.outputs else None

    def shape(self, name: str) -> Optional[list[Optional[int]]]:
        """The tensor's shape from shape inference (None: unknown; a None dim: dynamic)."""
        if self._shapes is None:
            self._shapes = {}
            try:
                inferred = onnx.shape_inference.infer_shapes(self.model)
            except Exception:  # noqa: BLE001 - a model onnx cannot infer has no known shapes
                inferred = self.model
            g = inferred.graph
            for vi in list(g.value_info) + list(g.input) + list(g.output):
                if vi.type.tensor_type.HasField("shape"):
                    self._shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                                             for d in vi.type.tensor_type.shape.dim]
        if name in self.inits:
            return list(self.inits[name].dims)
        return self._shapes.get(name)
