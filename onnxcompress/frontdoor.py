"""The front door: every loaded model is made canonical here, so the passes see one shape of graph.

load (io.load_model) -> canonicalize -> check. Canonical means:
- Constant nodes that hold weights are initializers (prune and quant only look at initializers);
- float64 constants that feed float32 math are float32 (cast exactly: IEEE round-to-nearest, as the
  graph's own Cast would do; a value that overflows float32 is refused); Cast-to-double regions are kept;
- opset >= 13 where onnx.version_converter upgrades the model exactly (checked with ONNX Runtime:
  outputs before == after on a sample); otherwise the opset is kept and the reason recorded;
- initializers are not listed as graph inputs (ir_version >= 4);
- already-quantized graphs are detected and left as they are (no upgrade);
- no NaN in any weight; +-inf only where it is a scalar identity (Max/Min start, mask fill), never in a
  weight whose quantization scale it would make non-finite.
Every change and every skip lands in the PassRecord.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from .errors import InputError
from .passes.base import PassRecord

TARGET_OPSET = 13  # the first opset with per-channel DequantizeLinear `axis`; 11/12 -> 13 converts cleanly
# weight / bias input slots of the layers prune and quant work on (a +-inf or NaN there poisons a scale)
WEIGHT_SLOTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (0, 1, 2), "MatMul": (0, 1), "LSTM": (1, 2, 3),
                "GRU": (1, 2, 3), "RNN": (1, 2, 3), "Gather": (0,), "BatchNormalization": (1, 2, 3, 4),
                "InstanceNormalization": (1, 2), "LayerNormalization": (1, 2), "PRelu": (1,)}
VIEW_OPS = {"Identity", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast"}  # a weight seen through these
FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
QOPERATOR_OPS = {"QLinearConv", "QLinearMatMul", "QGemm", "QAttention", "QEmbedLayerNormalization", "QOrderedMatMul",
                 "QOrderedAttention", "QOrderedLayerNormalization", "QOrderedGelu"}
DYNAMIC_OPS = {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul",
               "MatMulIntegerToFloat", "MatMulNBits", "MatMulBnb4", "GatherBlockQuantized"}


@dataclass(frozen=True)
class Facts:
    """What later stages need to know about a loaded model (the quantizer picks per-tensor weights when
    `per_channel_ok` is False, quoting `opset_note`)."""

    opset: Optional[int]
    ir_version: int
    upgraded_from: Optional[int] = None
    opset_note: str = ""  # why the opset was kept (empty when upgraded or already >= 13)
    quantized: Optional[str] = None  # e.g. "dynamic int8 (DynamicQuantizeLinear x2, MatMulInteger x2)"
    quantized_ops: dict = field(default_factory=dict)

    @property
    def per_channel_ok(self) -> bool:
        return self.opset is not None and self.opset >= TARGET_OPSET

    def to_dict(self) -> dict[str, Any]:
        return {"opset": self.opset, "ir_version": self.ir_version, "upgraded_from": self.upgraded_from,
                "opset_note": self.opset_note, "quantized": self.quantized, "quantized_ops": dict(self.quantized_ops),
                "per_channel_ok": self.per_channel_ok}


def facts(model: onnx.ModelProto, record: Optional[PassRecord] = None) -> Facts:
    """Facts of a (canonicalized) model; pass the front door's record to get the upgrade history."""
    from .io import model_opset

    stats = record.stats if record is not None else {}
    kind, ops = _quantized(model)
    opset = model_opset(model)
    note = stats.get("opset_note", "")
    if not note and opset is not None and opset < TARGET_OPSET:
        note = (f"opset {opset} kept (the front door upgrades it only where the conversion is exact); weights are "
                "quantized per tensor (per-channel needs opset 13)")
    return Facts(opset=opset, ir_version=model.ir_version, upgraded_from=stats.get("upgraded_from"),
                 opset_note=note, quantized=kind, quantized_ops=ops)


def quantized_kind(model: onnx.ModelProto) -> Optional[str]:
    """None for a float model, else what was found with counts, e.g.
    'QOperator (QLinearConv x3, QuantizeLinear x1)' or 'dynamic int8 (MatMulInteger x2, ...)'."""
    return _quantized(model)[0]


def _quantized(model: onnx.ModelProto) -> tuple[Optional[str], dict[str, int]]:
    counts = Counter(n.op_type for n in _all_nodes(model.graph)
                     if n.op_type in QDQ_OPS | QOPERATOR_OPS | DYNAMIC_OPS or n.op_type.startswith("QLinear"))
    if not counts:
        cast = _int8_weight_casts(model)
        return (f"weight-only int8 (Cast of {cast} int8 weight tensors to float)", {"Cast": cast}) if cast else (None, {})
    ops = dict(sorted(counts.items()))
    if any(op in QOPERATOR_OPS or op.startswith("QLinear") for op in counts):
        kind = "QOperator"
    elif any(op in DYNAMIC_OPS for op in counts):
        kind = "dynamic int8"
    else:
        kind = "QDQ"
    return f"{kind} ({', '.join(f'{k} x{v}' for k, v in ops.items())})", ops


def _int8_weight_casts(model: onnx.ModelProto) -> int:
    """Casts of int8/uint8 weight tensors (>= 16 values) to a float type: weights stored int8 and dequantized
    in the graph (Cast, then Mul by a scale), as some exporters compress a model."""
    small = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    weights = {i.name for i in model.graph.initializer if i.data_type in small and np.prod(i.dims) >= 16}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    return sum(1 for n in model.graph.node if n.op_type == "Cast" and n.input and n.input[0] in weights
               and any(a.name == "to" and a.i in floats for a in n.attribute))


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for n in graph.node:
        yield n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _all_nodes(g)


def canonicalize(model: onnx.ModelProto, *, where: str = "model", check_weights: bool = True,
                 inplace: bool = False) -> tuple[onnx.ModelProto, PassRecord]:
    """The front door (see the module docstring). Returns the canonical model and what changed/was skipped.
    The input is copied first unless `inplace` (io.load_model owns a fresh model and passes inplace=True)."""
    from .io import is_big, model_opset

    rec = PassRecord("frontdoor")
    if not inplace:
        m = onnx.ModelProto()
        m.CopyFrom(model)
        model = m
    big = is_big(model)
    kind, ops = _quantized(model)
    if kind:
        rec.stats["quantized"] = kind
    rec.stats["opset_before"] = model_opset(model)
    _initializer_inputs(model, rec)
    _constants_to_initializers(model, rec)
    if check_weights:
        check_finite_weights(model, where)
    if not big and any(t.data_type == TensorProto.DOUBLE for t in _constants(model)):
        original = _copy(model)
        if _float64_to_float32(model, rec, where):
            _check_fp64_cast(original, model, rec)
    _upgrade_opset(model, rec, big=big, quantized=bool(kind))
    rec.stats["opset"] = model_opset(model)
    return model, rec


def _constants(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    yield from model.graph.initializer
    for n in model.graph.node:
        t = _constant_tensor(n) if n.op_type == "Constant" else None
        if t is not None:
            yield t


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


# -- initializers listed as graph inputs ------------------------------------------------------------

def _initializer_inputs(model: onnx.ModelProto, rec: PassRecord) -> None:
    """Old exporters list every initializer as a graph input too (then ORT may not fold them and a runtime
    feed could override a weight). From IR 4 on they need not be inputs: treat them as the constants they are."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    listed = [i for i in g.input if i.name in inits]
    if not listed:
        return
    if model.ir_version < 4:
        rec.skip("graph inputs", f"{len(listed)} initializers listed as inputs kept: IR version {model.ir_version} < 4 "
                                 "requires it")
        return
    keep = [i for i in g.input if i.name not in inits]
    del g.input[:]
    g.input.extend(keep)
    rec.changed.append(f"{len(listed)} initializers no longer listed as graph inputs")
    rec.stats["initializer_inputs_removed"] = len(listed)


# -- Constant nodes -> initializers ---------------------------------------------------------------

def _constant_tensor(node: onnx.NodeProto) -> Optional[onnx.TensorProto]:
    """The tensor of a Constant node (value / value_float(s) / value_int(s)), None for sparse/string ones."""
    for a in node.attribute:
        if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
            return a.t
        if a.name == "value_float":
            return numpy_helper.from_array(np.array(a.f, np.float32))
        if a.name == "value_floats":
            return numpy_helper.from_array(np.array(list(a.floats), np.float32))
        if a.name == "value_int":
            return numpy_helper.from_array(np.array(a.i, np.int64))
        if a.name == "value_ints":
            return numpy_helper.from_array(np.array(list(a.ints), np.int64))
    return None


def _consumers(graph: onnx.GraphProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    uses: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for n in graph.node:
        for i, name in enumerate(n.input):
            if name:
                uses.setdefault(name, []).append((n, i))
    return uses


def _numel(t: onnx.TensorProto) -> int:
    return int(np.prod(t.dims)) if len(t.dims) else 1


def _constants_to_initializers(model: onnx.ModelProto, rec: PassRecord) -> None:
    g = model.graph
    uses = _consumers(g)
    outputs = {o.name for o in g.output}
    moved, keep = [], []
    for n in g.node:
        t = _constant_tensor(n) if n.op_type == "Constant" and n.domain in ("", "ai.onnx") else None
        if t is None or len(n.output) != 1:
            keep.append(n)
            continue
        name = n.output[0]
        weight_slot = any(i in WEIGHT_SLOTS.get(c.op_type, ()) for c, i in uses.get(name, []))
        if not (weight_slot or (t.data_type in FLOATS and _numel(t) > 1)):
            keep.append(n)
            continue
        if name in outputs:
            rec.skip(n.name or name, "Constant is a graph output; kept as a node")
            keep.append(n)
            continue
        init = onnx.TensorProto()
        init.CopyFrom(t)
        init.name = name
        g.initializer.append(init)
        if model.ir_version < 4:  # before IR 4 every initializer must also be a graph input
            g.input.append(onnx.helper.make_tensor_value_info(name, init.data_type, list(init.dims)))
        moved.append(name)
    if moved:
        del g.node[:]
        g.node.extend(keep)
        rec.changed.append(f"{len(moved)} Constant nodes holding weights became initializers")
        rec.stats["constants_to_initializers"] = len(moved)


# -- float64 -> float32 ---------------------------------------------------------------------------

def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError):
        inferred = model  # what the file declares is still known
    types = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    types.update({i.name: i.data_type for i in model.graph.initializer})
    for n in model.graph.node:
        t = _constant_tensor(n) if n.op_type == "Constant" else None
        if t is not None:
            types[n.output[0]] = t.data_type
    return types


def _to_float32(arr: np.ndarray, name: str, where: str) -> np.ndarray:
    with np.errstate(over="ignore"):
        out = arr.astype(np.float32)
    overflow = np.isfinite(arr) & ~np.isfinite(out)
    if overflow.any():
        v = arr[overflow].ravel()[0]
        raise InputError(f"{where}: float64 constant '{name}' holds {v:g}, beyond the float32 range, and feeds "
                         "float32 math; clip it to +-3.4e38 (or use -inf) and re-export")
    return out


def _float64_to_float32(model: onnx.ModelProto, rec: PassRecord, where: str) -> bool:
    from .io import model_opset

    """Cast(to=FLOAT) of a float64 constant becomes a float32 initializer (the value the Cast computes);
    a float64 constant fed straight into a node whose other inputs are float32 (ORT rejects such a model)
    is cast for those nodes. Nodes that compute in float64 (a Cast-to-double region) keep theirs."""
    g = model.graph
    doubles = {i.name: i for i in g.initializer if i.data_type == TensorProto.DOUBLE}
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant" and (_constant_tensor(n) is not None)
              and _constant_tensor(n).data_type == TensorProto.DOUBLE}
    if not doubles and not consts:
        return False
    types = _elem_types(model)
    opset = model_opset(model) or 1
    uses = _consumers(g)
    outputs = {o.name for o in g.output}
    drop_nodes: set[int] = set()
    folded = mixed = 0
    for name in list(doubles) + list(consts):
        tensor = doubles[name] if name in doubles else _constant_tensor(consts[name])
        arr = numpy_helper.to_array(tensor)
        f32, copy_name = None, None
        for node, slot in uses.get(name, []):
            if node.op_type == "Cast" and _attr(node, "to") == TensorProto.FLOAT and node.output[0] not in outputs:
                f32 = _to_float32(arr, name, where) if f32 is None else f32
                g.initializer.append(numpy_helper.from_array(f32, node.output[0]))
                drop_nodes.add(id(node))
                folded += 1
            elif _shares_type_with_float(node, slot, types, opset):
                f32 = _to_float32(arr, name, where) if f32 is None else f32
                if copy_name is None:  # one float32 copy, shared by every float32 consumer
                    copy_name = _unique(g, f"{name}_fp32")
                    g.initializer.append(numpy_helper.from_array(f32, copy_name))
                node.input[slot] = copy_name
                rec.changed.append(f"float64 constant '{name}' fed float32 node '{node.name or node.op_type}': cast "
                                   "to float32")
                mixed += 1
    if not folded and not mixed:
        return False
    keep = [n for n in g.node if id(n) not in drop_nodes]
    del g.node[:]
    g.node.extend(keep)
    _drop_unused(model, set(doubles) | set(consts))
    if folded:
        rec.changed.append(f"{folded} Cast-to-float of float64 constants folded into float32 initializers")
    rec.stats["float64_cast"] = folded + mixed
    return True


def _check_fp64_cast(original: onnx.ModelProto, model: onnx.ModelProto, rec: PassRecord) -> None:
    """The cast model must compute what the original computed (ORT, a synthetic sample, tight tolerance).
    An original that mixed float64 into float32 math does not load in ORT at all: nothing to compare then,
    the cast model is what makes it runnable (the back door checks every model we write)."""
    from .backdoor import OrtFailure, compare_outputs, run_model, run_on_sample, session

    try:
        session(original)
    except OrtFailure as exc:
        rec.skip("float64", f"the original does not load in ONNX Runtime ({exc}); the float32 cast is what fixes it")
        return
    feeds, ref = run_on_sample(original)
    if feeds is None:
        rec.skip("float64", f"the float32 cast could not be compared: {ref}")
        return
    try:
        err = compare_outputs(ref, run_model(model, feeds))
    except OrtFailure as exc:
        err = f"ONNX Runtime: {exc}"
    if err:  # the cast changed what the model computes: our bug, never the user's
        from .errors import InternalError
        raise InternalError(f"front door: casting float64 constants to float32 changed the outputs ({err})")


def _attr(node: onnx.NodeProto, name: str):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return None


def _shares_type_with_float(node: onnx.NodeProto, slot: int, types: dict[str, int], opset: int) -> bool:
    """True when the schema ties input `slot` to the same type as another input that is float32 (so a
    float64 there is a type error ORT rejects); ops with separate type slots (Pow's exponent, Resize's
    scales...) and unknown ops are left alone."""
    if node.domain not in ("", "ai.onnx"):
        return False
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
    except onnx.defs.SchemaError:
        return False
    params = list(schema.inputs)
    if not params:
        return False

    def type_str(j: int) -> str:
        if j < len(params):
            return params[j].type_str
        last = params[-1]
        return last.type_str if last.option == onnx.defs.OpSchema.FormalParameterOption.Variadic else ""

    mine = type_str(slot)
    return bool(mine) and any(type_str(j) == mine and types.get(x) == TensorProto.FLOAT
                              for j, x in enumerate(node.input) if x and j != slot)


def _unique(g: onnx.GraphProto, base: str) -> str:
    taken = {i.name for i in g.initializer} | {o for n in g.node for o in n.output} | {i.name for i in g.input}
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


def _drop_unused(model: onnx.ModelProto, names: set[str]) -> None:
    """Drop the float64 originals in `names` that nothing reads any more."""
    g = model.graph
    used = {x for n in _all_nodes(g) for x in n.input} | {o.name for o in g.output}
    gone = names - used
    keep = [n for n in g.node if not (n.op_type == "Constant" and n.output[0] in gone)]
    if len(keep) != len(g.node):
        del g.node[:]
        g.node.extend(keep)
    if any(i.name in gone for i in g.input):  # IR < 4: the initializer was listed as an input too
        ins = [i for i in g.input if i.name not in gone]
        del g.input[:]
        g.input.extend(ins)
    inits = [i for i in g.initializer if i.name not in gone]
    if len(inits) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(inits)


# -- opset upgrade --------------------------------------------------------------------------------

def _upgrade_opset(model: onnx.ModelProto, rec: PassRecord, *, big: bool, quantized: bool) -> None:
    from .io import model_opset

    opset = model_opset(model)
    if opset is None or opset >= TARGET_OPSET:
        return

    def keep(reason: str) -> None:
        note = f"opset {opset} kept: {reason}; weights are quantized per tensor (per-channel needs opset 13)"
        rec.skip("opset", note)
        rec.stats["opset_note"] = note

    if quantized:
        return keep("the model is already quantized")
    if big:
        return keep("over 2 GB, the version converter needs the model in one protobuf")
    from onnx import version_converter

    try:
        up = version_converter.convert_version(model, TARGET_OPSET)
        onnx.checker.check_model(up, full_check=True)
    except Exception as exc:  # noqa: BLE001 - the converter raises bare RuntimeError/IndexError/...; recorded, original kept
        return keep(f"onnx.version_converter failed ({type(exc).__name__}: {_first_line(exc)})")
    err = _same_outputs(model, up)
    if err:
        return keep(f"the converted model is not exact ({err})")
    model.CopyFrom(up)
    rec.changed.append(f"opset {opset} -> {TARGET_OPSET} (onnx.version_converter; outputs checked equal with ONNX Runtime)")
    rec.stats["upgraded_from"] = opset


def _same_outputs(before: onnx.ModelProto, after: onnx.ModelProto) -> Optional[str]:
    """None when both models give the same outputs on a synthetic sample (ORT, optimizations off), else why not."""
    from .backdoor import OrtFailure, compare_outputs, run_model, run_on_sample

    feeds, ref = run_on_sample(before)
    if feeds is None:
        return f"it could not be checked: the original does not run on a synthetic sample ({ref})"
    try:
        got = run_model(after, feeds)
    except OrtFailure as exc:
        return f"ONNX Runtime cannot run it: {exc}"
    return compare_outputs(ref, got)


# -- NaN / inf policy -----------------------------------------------------------------------------

def _weight_names(graph: onnx.GraphProto) -> set[str]:
    """Tensors that reach a weight/bias slot (directly or through view ops such as Transpose/Reshape)."""
    producers = {o: n for n in graph.node for o in n.output}
    out: set[str] = set()
    for n in graph.node:
        for i in WEIGHT_SLOTS.get(n.op_type, ()):
            if i < len(n.input) and n.input[i]:
                name = n.input[i]
                for _ in range(4):
                    out.add(name)
                    p = producers.get(name)
                    if p is None or p.op_type not in VIEW_OPS or not p.input:
                        break
                    name = p.input[0]
    return out


def check_finite_weights(model: onnx.ModelProto, where: str = "model") -> None:
    """NaN in a weight (any non-scalar float initializer, or one in a layer's weight slot) is refused, naming
    it; a scalar NaN elsewhere is a fill value and is left alone. +-inf is fine in a scalar identity (running
    Max/Min start, ConstantOfShape value) and in non-weight constants (an attention mask's -inf fill); it is
    refused in a non-scalar weight of a Conv/Gemm/MatMul/... (its quantization scale would be non-finite)."""
    weights = _weight_names(model.graph)
    for init in model.graph.initializer:
        if init.data_type not in FLOATS:
            continue
        nan, inf = _nonfinite(init, where)
        scalar = _numel(init) <= 1
        if nan and (not scalar or init.name in weights):
            raise InputError(f"{where}: weight '{init.name}' holds NaN (NaN/Inf weights break every later stage); "
                             "fix or re-export the model")
        if inf and not scalar and init.name in weights:
            raise InputError(f"{where}: weight '{init.name}' holds +-inf (NaN/Inf in a layer weight makes its "
                             "quantization scale infinite); fix or re-export the model")


def _nonfinite(init: onnx.TensorProto, where: str) -> tuple[bool, bool]:
    """(has NaN, has +-inf), scanning a float32 tensor's bytes zero-copy in chunks."""
    if init.data_location == TensorProto.EXTERNAL:
        return False, False  # not loaded (io.load_model(load_external=False)): nothing to scan
    try:
        if init.data_type == TensorProto.FLOAT and init.raw_data:
            if len(init.raw_data) != 4 * _numel(init):
                raise ValueError(f"{len(init.raw_data)} bytes for shape {list(init.dims)}")
            arr = np.frombuffer(init.raw_data, dtype="<f4")
        else:
            arr = numpy_helper.to_array(init).ravel()
    except (ValueError, TypeError) as exc:
        raise InputError(f"{where}: weight '{init.name}' is corrupt ({exc}); re-export the model") from None
    nan = inf = False
    step = 1 << 24
    for i in range(0, arr.size, step):
        part = arr[i:i + step]
        if not np.isfinite(part).all():
            nan = nan or bool(np.isnan(part).any())
            inf = inf or bool(np.isinf(part).any())
    return nan, inf


def load(path, *, check: bool = True) -> tuple[onnx.ModelProto, PassRecord]:
    """io.load_model plus the front door's record (what was changed/skipped), for callers that report it."""
    from .io import load_raw

    model = load_raw(path, check=check)
    return canonicalize(model, where=str(path), check_weights=check, inplace=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
