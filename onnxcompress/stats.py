"""Model statistics: parameters, per-sample MACs, ops.

MACs need the shapes of every compute node. They come from, in this order:
- a feed (one real sample, as the data gives it): one ONNX Runtime run with the compute tensors as outputs;
- explicit input shapes (`--input-shape images:1x3x640x640`): shape inference with those dims pinned, or
  one run on zeros of those shapes where inference leaves a compute node unknown;
- nothing: shape inference when the only dynamic dims are batch dims (MACs are per sample), or one run
  on zeros at batch 1 where inference falls short (Reshape targets computed from Shape ops).
Dynamic spatial or sequence dims with neither a feed nor input shapes raise ShapesNeeded: a MAC figure
computed with unknown dims taken as 1 is wrong (a detector at H x W = 1 x 1 has as many MACs as weights).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import onnx

from .errors import InputError
from .io import is_big

_FLOAT = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
_INT8 = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
_CONV = ("Conv", "ConvTranspose", "QLinearConv", "ConvInteger")
_MATMUL = ("Gemm", "MatMul", "MatMulInteger", "QGemm", "QLinearMatMul")
_COMPUTE = set(_CONV) | set(_MATMUL)

Feed = Mapping[str, np.ndarray]
InputShapes = Mapping[str, tuple[int, ...]]


class ShapesNeeded(InputError):
    """MACs depend on dynamic input dims and neither data nor input shapes were given."""


@dataclass
class Shapes:
    """Tensor shapes (None: unknown dim) and the number of samples they are for."""

    dims: dict[str, list[Optional[int]]]
    batch: int = 1
    source: str = "inferred"  # "inferred" | "data" | "input shapes" | "zeros at batch 1"


def _weights(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    out = list(model.graph.initializer)
    for n in model.graph.node:
        if n.op_type == "Constant":
            out += [a.t for a in n.attribute if a.name == "value"]
    return out


def count_params(model: onnx.ModelProto) -> int:
    """Elements of float and int8 weight tensors (a quantized weight counts once, not with its scale)."""
    qparams = {i for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") for i in n.input[1:]}
    total = 0
    for t in _weights(model):
        if t.name in qparams:
            continue
        if t.data_type in _FLOAT | _INT8:
            n = int(np.prod(t.dims)) if t.dims else 1
            total += n if n > 1 else 0  # scalars (scales, zero points, eps) are not parameters
    return total


# ---------------------------------------------------------------------------------------------- shapes

def parse_input_shapes(items: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """'images:1x3x640x640' (repeatable, or comma-separated) -> {name: dims}. The name is what precedes
    the last ':' (TF names such as 'x:0' keep theirs); a scalar input is 'name:' (no dims)."""
    out: dict[str, tuple[int, ...]] = {}
    for item in (p for text in items for p in str(text).split(",") if p.strip()):
        name, sep, dims = item.strip().rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x")) if dims.strip() else ()
        except ValueError:
            shape = (0,)
        if not sep or not name or any(d < 1 for d in shape):
            raise InputError(f"input shape '{item.strip()}' is not NAME:DIMS with positive dims; e.g. images:1x3x640x640")
        out[name] = shape
    return out


def _batch_axes(model: onnx.ModelProto) -> tuple[dict[str, Optional[int]], Optional[int]]:
    """Per input its batch axis (None: const, every dim is fixed data), and the fixed batch size if any.
    From the data layout; where the shapes do not settle it, axis 0."""
    from .data import input_specs, model_layout

    try:
        layout = model_layout(model)
        return {i.name: i.axis for i in layout.inputs}, layout.batch
    except InputError:
        return {s.name: (0 if s.shape else None) for s in input_specs(model)}, None


def dynamic_dims(model: onnx.ModelProto) -> list[tuple[str, int, str]]:
    """The dynamic input dims other than batch axes: (input, axis, dim name or '?')."""
    from .data import input_specs

    axes, _ = _batch_axes(model)
    out = []
    for s in input_specs(model):
        for a, d in enumerate(s.shape):
            if a != axes.get(s.name) and not (isinstance(d, int) and d > 0):
                out.append((s.name, a, d or "?"))
    return out


def _needed_message(model: onnx.ModelProto, dyn: list[tuple[str, int, str]]) -> str:
    from .data import input_specs

    axes, batch = _batch_axes(model)
    spec = next(s for s in input_specs(model) if s.name == dyn[0][0])
    example = "x".join(str(d) if isinstance(d, int) and d > 0 else ("1" if a == axes.get(spec.name) else str(d or "?"))
                       for a, d in enumerate(spec.shape))
    names = ", ".join(f"{n} axis {a} ({d})" for n, a, d in dyn[:4])
    return (f"MACs depend on dynamic input dims ({names}); pass data (--data / --calibration) or the shapes with "
            f"--input-shape {spec.name}:{example} (numbers for the named dims)")


def _infer(model: onnx.ModelProto, batch_names: set[str]) -> dict[str, list[Optional[int]]]:
    """Shapes from onnx shape inference; a batch dim (named like an input's batch axis) counts as 1."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True) if not is_big(model) else model
    except Exception:  # noqa: BLE001 - shape inference failure only means fewer shapes are known
        inferred = model
    shapes: dict[str, list[Optional[int]]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if vi.type.tensor_type.HasField("shape"):
            dims = list(vi.type.tensor_type.shape.dim)
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else (1 if d.dim_param in batch_names else None)
                               for d in dims]
    for t in _weights(model):
        shapes[t.name] = list(t.dims)
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    shapes[n.output[0]] = list(a.t.dims)
    return shapes


def _compute_tensors(model: onnx.ModelProto) -> list[str]:
    """The tensors whose shapes MACs are computed from (activations and weights of compute nodes)."""
    names = []
    for n in model.graph.node:
        if n.op_type in _COMPUTE:
            ins = [n.input[0], n.input[3]] if n.op_type in ("QLinearConv", "QLinearMatMul", "QGemm") else list(n.input[:2])
            names += [t for t in ins + [n.output[0]] if t]
    return list(dict.fromkeys(names))


def _vague(model: onnx.ModelProto, shapes: dict[str, list[Optional[int]]]) -> bool:
    return any(t not in shapes or None in shapes[t] for t in _compute_tensors(model))


def _measure(model: onnx.ModelProto, feed: Feed, batch: int, source: str) -> Shapes:
    """One ORT run on `feed` with every compute tensor as an output (ORT's own log silenced)."""
    from .runtime.session import make_session, with_outputs

    known = {i.name for i in model.graph.input} | {t.name for t in _weights(model)}
    names = [t for t in _compute_tensors(model) if t not in known]
    sess = make_session(with_outputs(model, names), optimize=False, quiet=True)
    try:
        outs = sess.run(names, dict(feed)) if names else []
    except Exception as exc:  # noqa: BLE001 - ORT's own error types; the message is what matters
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InputError(f"running the model once to measure its shapes failed ({msg}); check the data or "
                         "--input-shape") from None
    dims: dict[str, list[Optional[int]]] = {n: list(np.shape(v)) for n, v in feed.items()}
    dims.update({t.name: list(t.dims) for t in _weights(model)})
    dims.update({n: list(o.shape) for n, o in zip(names, outs) if hasattr(o, "shape")})
    return Shapes(dims, max(1, batch), source)


def _one_sample(model: onnx.ModelProto, feed: Feed) -> tuple[dict[str, np.ndarray], int]:
    """`feed` cut to its first sample along each input's batch axis (a fixed-batch model keeps its run), and
    the samples the model then runs: every intermediate tensor of the run is held at once, so one is enough."""
    axes, fixed = _batch_axes(model)
    size = int(getattr(feed, "size", 0) or 0)
    if fixed:
        return dict(feed), fixed
    out = {}
    for name, v in feed.items():
        axis = axes.get(name)
        out[name] = np.take(v, [0], axis=axis) if axis is not None and np.ndim(v) > axis and np.shape(v)[axis] > 1 else v
    if all(axes.get(n) is None or np.ndim(v) <= axes[n] or np.shape(v)[axes[n]] == 1 for n, v in out.items()):
        return out, 1
    return dict(feed), size or 1


def _pinned(model: onnx.ModelProto, input_shapes: InputShapes) -> tuple[onnx.ModelProto, dict[str, np.ndarray], int]:
    """A copy with the given input dims fixed, zeros of those shapes, and the batch size they have."""
    from .data import input_specs

    specs = {s.name: s for s in input_specs(model)}
    unknown = sorted(set(input_shapes) - set(specs))
    if unknown:
        raise InputError(f"--input-shape names '{unknown[0]}', which is not a model input (inputs: {', '.join(specs)})")
    axes, fixed = _batch_axes(model)
    values: dict[str, int] = {}  # dim name -> size, from the shapes given
    for name, dims in input_shapes.items():
        s = specs[name]
        if len(dims) != len(s.shape):
            raise InputError(f"--input-shape {name}: {len(dims)} dims given, the input has rank {len(s.shape)} "
                             f"({'x'.join(str(d or '?') for d in s.shape) or 'scalar'})")
        for a, (want, got) in enumerate(zip(s.shape, dims)):
            if isinstance(want, int) and want > 0 and want != got:
                raise InputError(f"--input-shape {name}: axis {a} is fixed at {want} in the model, {got} was given")
            if isinstance(want, str):
                values.setdefault(want, got)
    batch = next((input_shapes[n][a] for n, a in axes.items() if n in input_shapes and a is not None), fixed or 1)
    shapes: dict[str, tuple[int, ...]] = {}
    for name, s in specs.items():
        if name in input_shapes:
            shapes[name] = tuple(input_shapes[name])
            continue
        dims = []
        for a, d in enumerate(s.shape):
            if isinstance(d, int) and d > 0:
                dims.append(d)
            elif isinstance(d, str) and d in values:
                dims.append(values[d])
            elif a == axes.get(name):
                dims.append(batch)
            else:
                raise InputError(f"--input-shape gives no size for input '{name}' axis {a} ({d or '?'}); "
                                 f"add {name}:{'x'.join(str(x or '?') for x in s.shape)} with numbers")
        shapes[name] = tuple(dims)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for inp in m.graph.input:
        if inp.name in shapes and inp.type.tensor_type.HasField("shape"):
            for d, v in zip(inp.type.tensor_type.shape.dim, shapes[inp.name]):
                d.Clear()
                d.dim_value = v
    zeros = {name: np.zeros(shapes[name], specs[name].dtype) for name in specs}
    return m, zeros, batch


def check_input_shapes(model: onnx.ModelProto, input_shapes: Optional[InputShapes]) -> None:
    """Raise InputError (before any work) when --input-shape names a missing input or contradicts the model."""
    if input_shapes:
        _pinned(model, input_shapes)


def model_shapes(model: onnx.ModelProto, feed: Optional[Feed] = None,
                 input_shapes: Optional[InputShapes] = None) -> Shapes:
    """The shapes MACs are counted from (see the module docstring). Raises ShapesNeeded when dynamic
    non-batch dims reach a compute node and neither `feed` nor `input_shapes` is given."""
    if feed is not None and not is_big(model):  # (over 2 GB: no in-memory session; inference below)
        return _measure(model, *_one_sample(model, feed), "data")
    if input_shapes:
        pinned, zeros, batch = _pinned(model, input_shapes)
        shapes = _infer(pinned, set())
        if not _vague(pinned, shapes) or is_big(model):
            return Shapes(shapes, batch, "input shapes")
        return _measure(model, zeros, batch, "input shapes")
    axes, fixed = _batch_axes(model)
    batch_names = {d.dim_param for i in model.graph.input for a, d in enumerate(i.type.tensor_type.shape.dim)
                   if a == axes.get(i.name) and d.dim_param}
    shapes = _infer(model, batch_names)
    if not _vague(model, shapes) or is_big(model):
        return Shapes(shapes, fixed or 1, "inferred")
    dyn = dynamic_dims(model)
    if dyn:
        raise ShapesNeeded(_needed_message(model, dyn))
    try:  # every input dim is known but a batch dim: zeros at batch 1 settle what inference could not
        _, zeros, batch = _pinned(model, {})
        return _measure(model, zeros, batch, "zeros at batch 1")
    except InputError:  # a model ORT cannot run on zeros keeps the inferred shapes (nodes left unknown)
        return Shapes(shapes, fixed or 1, "inferred")


def shapes_or_none(model: onnx.ModelProto, feed: Optional[Feed] = None,
                   input_shapes: Optional[InputShapes] = None) -> tuple[Optional[Shapes], str]:
    """model_shapes, or (None, why) when the model needs data or input shapes for them."""
    try:
        return model_shapes(model, feed, input_shapes), ""
    except ShapesNeeded as exc:
        return None, str(exc)


# ------------------------------------------------------------------------------------------------ MACs

def count_macs(model: onnx.ModelProto, shapes: Optional[Shapes] = None) -> tuple[int, list[str]]:
    """Per-sample multiply-accumulates of Conv/ConvTranspose/Gemm/MatMul (+ their int8 kernels).

    Returns (macs, names of nodes whose shapes were unknown and so were not counted). Without `shapes`,
    they are found by model_shapes(model), which raises ShapesNeeded for dynamic spatial/sequence dims."""
    per_node, unknown = node_macs(model, shapes)
    return sum(per_node.values()), unknown


def macs_or_none(model: onnx.ModelProto, feed: Optional[Feed] = None,
                 input_shapes: Optional[InputShapes] = None) -> tuple[Optional[int], str]:
    """(per-sample MACs, "") or (None, why they need data or input shapes)."""
    shapes, why = shapes_or_none(model, feed, input_shapes)
    return (None, why) if shapes is None else (count_macs(model, shapes)[0], "")


def node_macs(model: onnx.ModelProto, shapes: Optional[Shapes] = None) -> tuple[dict[str, int], list[str]]:
    """Per-sample MACs per compute node (keyed by node name, or first output when unnamed), and unknown nodes."""
    shapes = shapes if shapes is not None else model_shapes(model)
    dims, batch = shapes.dims, max(shapes.batch, 1)

    def get(name: str) -> Optional[list[int]]:
        d = dims.get(name)
        return None if d is None or None in d else d

    unknown: list[str] = []
    result: dict[str, int] = {}
    for n in model.graph.node:
        key = n.name or n.output[0]
        op = n.op_type
        if op in _CONV:
            w = get(n.input[3] if op == "QLinearConv" else n.input[1])
            out, inp = get(n.output[0]), get(n.input[0])
            if not w or len(w) < 3 or not out or (op == "ConvTranspose" and not inp):
                unknown.append(key)
                continue
            if op == "ConvTranspose":  # every input pixel scatters a kernel
                total = int(np.prod(inp)) // max(inp[1], 1) * int(np.prod(w))
            else:  # out elems x (Cin/groups * k*k)
                total = int(np.prod(out)) * int(np.prod(w[1:]))
            result[key] = total // batch
        elif op in _MATMUL:
            a = get(n.input[0])
            b = get(n.input[3] if op in ("QGemm", "QLinearMatMul") else n.input[1])
            out = get(n.output[0])
            if not a or not b or not out:
                unknown.append(key)
                continue
            trans_a = any(at.name == "transA" and at.i for at in n.attribute)
            k = a[-2] if (op == "Gemm" and trans_a) else a[-1]
            # all rows of the output (a Gemm on [batch*tokens, d] has no batch axis of its own), per sample
            result[key] = int(np.prod(out)) * int(k) // batch if len(out) >= 2 else int(np.prod(out)) * int(k)
    return result, unknown


def model_stats(model: onnx.ModelProto, feed: Optional[Feed] = None,
                input_shapes: Optional[InputShapes] = None) -> dict[str, Any]:
    """Parameters, per-sample MACs (None, with `macs_note` saying what is needed, when dynamic dims
    need data or input shapes), node and op counts."""
    shapes, why = shapes_or_none(model, feed, input_shapes)
    macs, unknown = count_macs(model, shapes) if shapes is not None else (None, [])
    out = {
        "params": count_params(model),
        "macs": macs,
        "macs_unknown_nodes": unknown,
        "nodes": len(model.graph.node),
        "ops": dict(Counter(n.op_type for n in model.graph.node).most_common()),
    }
    if shapes is not None:
        out["shapes_from"] = shapes.source
    else:
        out["macs_note"] = why
    return out
