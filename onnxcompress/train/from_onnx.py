"""An ONNX graph as a trainable torch module, and its weights written back into the same graph.

Our own small interpreter rather than onnx2torch (why, in a line): the student must keep the ONNX graph's
identity, so a parameter here *is* an ONNX initializer (same name, same shape) and training ends by
writing the tensors back into the very graph that was read: the channel groups of
passes/prune (graph + structure) stay valid on both sides, nothing is re-exported, and the written model
is checked against the torch student in ORT. onnx2torch builds an fx graph with its own module names and
would need a torch re-export, whose graph (and channel groups) differ from the input's.

Covered: the ops of convolutional classifiers and what exporters write around them (Conv incl. depthwise and
grouped, BatchNormalization, Relu/Clip/HardSwish/HardSigmoid/Sigmoid/..., elementwise Add/Sub/Mul/Div,
pools, Gemm/MatMul, Flatten/Reshape/Transpose/Concat/Squeeze/Unsqueeze, and the Shape/Gather arithmetic
of a dynamic flatten). Any other op is a one-line InputError naming it.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import InputError

# initializers read at these input positions are trained; any other float initializer is a fixed buffer
TRAINABLE = {"Conv": (1, 2), "Gemm": (1, 2), "MatMul": (0, 1), "BatchNormalization": (1, 2),
             "Add": (0, 1), "Mul": (0, 1), "PRelu": (1,)}


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _pads_for(attrs: dict, x, w) -> tuple[list[int], bool]:
    """(ONNX begin..end pads, symmetric?) incl. auto_pad SAME_UPPER/LOWER for the given input."""
    k = list(w.shape[2:])
    nd = len(k)
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    strides = list(attrs.get("strides", [1] * nd))
    dil = list(attrs.get("dilations", [1] * nd))
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads_b, pads_e = [], []
        for i in range(nd):
            size = x.shape[2 + i]
            out = -(-size // strides[i])
            total = max(0, (out - 1) * strides[i] + (k[i] - 1) * dil[i] + 1 - size)
            small, big = total // 2, total - total // 2
            pads_b.append(small if auto == "SAME_UPPER" else big)
            pads_e.append(big if auto == "SAME_UPPER" else small)
        pads = pads_b + pads_e
    elif auto == "VALID":
        pads = [0] * (2 * nd)
    else:
        pads = list(attrs.get("pads", [0] * (2 * nd)))
    return pads, pads[:nd] == pads[nd:]


def _conv(F, x, w, b, a: dict):
    nd = w.dim() - 2
    pads, sym = _pads_for(a, x, w)
    if not sym:
        x = F.pad(x, [p for i in reversed(range(nd)) for p in (pads[i], pads[nd + i])])
        pads = [0] * (2 * nd)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}.get(nd)
    if fn is None:
        raise InputError(f"Conv with {nd} spatial dims is not supported by the ONNX->torch converter")
    return fn(x, w, b, stride=list(a.get("strides", [1] * nd)), padding=pads[:nd],
              dilation=list(a.get("dilations", [1] * nd)), groups=int(a.get("group", 1)))


def _pool(F, x, a: dict, kind: str):
    k = list(a["kernel_shape"])
    nd = len(k)
    pads, sym = _pads_for(a, x, x.new_empty((1, 1, *k)))
    if not sym or any(p > kk // 2 for p, kk in zip(pads, k + k)):
        x = F.pad(x, [p for i in reversed(range(nd)) for p in (pads[i], pads[nd + i])],
                  value=float("-inf") if kind == "max" else 0.0)
        pads = [0] * (2 * nd)
    strides = list(a.get("strides", [1] * nd))
    ceil = bool(a.get("ceil_mode", 0))
    if kind == "max":
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
        return fn(x, k, strides, pads[:nd], list(a.get("dilations", [1] * nd)), ceil)
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
    return fn(x, k, strides, pads[:nd], ceil, bool(a.get("count_include_pad", 0)))


def _ints(t) -> list[int]:
    return [int(v) for v in (t.tolist() if hasattr(t, "tolist") else t)]


def _reshape(x, shape, a: dict):
    shape = _ints(shape)
    if not a.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _clip(torch, x, lo, hi):
    lo = None if lo is None else float(lo)
    hi = None if hi is None else float(hi)
    return torch.clamp(x, lo, hi)


def _gemm(x, w, b, a: dict):
    if a.get("transA", 0):
        x = x.transpose(-1, -2)
    if a.get("transB", 0):
        w = w.transpose(-1, -2)
    y = (x @ w) * float(a.get("alpha", 1.0))
    return y if b is None else y + b * float(a.get("beta", 1.0))


def _bn(F, x, scale, bias, mean, var, a: dict):
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, float(a.get("epsilon", 1e-5)))


def _ops(torch) -> dict[str, Callable]:
    F = torch.nn.functional

    def axes_of(n, ins, a, pos=1):
        if len(ins) > pos and ins[pos] is not None:
            return _ints(ins[pos])
        return list(a.get("axes", []))

    def unsqueeze(x, axes):
        for ax in sorted(ax % (x.dim() + len(axes)) for ax in axes):
            x = x.unsqueeze(ax)
        return x

    def squeeze(x, axes):
        axes = axes or [i for i, s in enumerate(x.shape) if s == 1]
        for ax in sorted((ax % x.dim() for ax in axes), reverse=True):
            x = x.squeeze(ax)
        return x

    def reduce_mean(n, ins, a):
        axes = axes_of(n, ins, a) if n.since >= 18 else list(a.get("axes", []))
        axes = axes or list(range(ins[0].dim()))
        return torch.mean(ins[0], dim=axes, keepdim=bool(a.get("keepdims", 1)))

    def clip(n, ins, a):
        if n.since < 11:
            return _clip(torch, ins[0], a.get("min"), a.get("max"))
        lo = ins[1] if len(ins) > 1 else None
        hi = ins[2] if len(ins) > 2 else None
        return _clip(torch, ins[0], lo, hi)

    def gather(n, ins, a):
        x, idx = ins
        axis = int(a.get("axis", 0))
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        out = torch.index_select(x, axis, idx_t.reshape(-1) % x.shape[axis])
        return out.reshape(list(x.shape[:axis]) + list(idx_t.shape) + list(x.shape[axis + 1:]))

    def flatten(x, axis):
        axis = axis % max(1, x.dim()) if axis else 0
        return x.reshape(int(np.prod(x.shape[:axis])) if axis else 1, -1)

    return {
        "Conv": lambda n, i, a: _conv(F, i[0], i[1], i[2] if len(i) > 2 else None, a),
        "BatchNormalization": lambda n, i, a: _bn(F, i[0], i[1], i[2], i[3], i[4], a),
        "Relu": lambda n, i, a: F.relu(i[0]),
        "LeakyRelu": lambda n, i, a: F.leaky_relu(i[0], float(a.get("alpha", 0.01))),
        "Clip": clip,
        "Sigmoid": lambda n, i, a: torch.sigmoid(i[0]),
        "Tanh": lambda n, i, a: torch.tanh(i[0]),
        "HardSigmoid": lambda n, i, a: torch.clamp(i[0] * float(a.get("alpha", 0.2)) + float(a.get("beta", 0.5)), 0, 1),
        "HardSwish": lambda n, i, a: i[0] * torch.clamp(i[0] / 6 + 0.5, 0, 1),
        "Softmax": lambda n, i, a: F.softmax(i[0], dim=int(a.get("axis", -1))),
        "Add": lambda n, i, a: i[0] + i[1],
        "Sub": lambda n, i, a: i[0] - i[1],
        "Mul": lambda n, i, a: i[0] * i[1],
        "Div": lambda n, i, a: i[0] / i[1],
        "GlobalAveragePool": lambda n, i, a: i[0].mean(dim=list(range(2, i[0].dim())), keepdim=True),
        "GlobalMaxPool": lambda n, i, a: i[0].amax(dim=list(range(2, i[0].dim())), keepdim=True),
        "AveragePool": lambda n, i, a: _pool(F, i[0], a, "avg"),
        "MaxPool": lambda n, i, a: _pool(F, i[0], a, "max"),
        "Gemm": lambda n, i, a: _gemm(i[0], i[1], i[2] if len(i) > 2 else None, a),
        "MatMul": lambda n, i, a: i[0] @ i[1],
        "Flatten": lambda n, i, a: flatten(i[0], int(a.get("axis", 1))),
        "Reshape": lambda n, i, a: _reshape(i[0], i[1], a),
        "Transpose": lambda n, i, a: i[0].permute(*(a.get("perm") or reversed(range(i[0].dim())))),
        "Concat": lambda n, i, a: torch.cat([torch.as_tensor(t) for t in i], dim=int(a["axis"])),
        "Unsqueeze": lambda n, i, a: unsqueeze(torch.as_tensor(i[0]), axes_of(n, i, a)),
        "Squeeze": lambda n, i, a: squeeze(i[0], axes_of(n, i, a)),
        "ReduceMean": reduce_mean,
        "Shape": lambda n, i, a: torch.tensor(list(i[0].shape)[int(a.get("start", 0)):a.get("end")], dtype=torch.long),
        "Gather": gather,
        "Identity": lambda n, i, a: i[0],
        "Dropout": lambda n, i, a: i[0],
        "Cast": lambda n, i, a: i[0].to(_TORCH_DTYPES(torch)[int(a["to"])]),
    }


def _TORCH_DTYPES(torch) -> dict[int, object]:  # noqa: N802 - a table
    T = onnx.TensorProto
    return {T.FLOAT: torch.float32, T.INT64: torch.long, T.INT32: torch.int32, T.DOUBLE: torch.float64,
            T.BOOL: torch.bool, T.FLOAT16: torch.float16}


class _Node:
    __slots__ = ("op", "inputs", "outputs", "attrs", "name", "since")

    def __init__(self, node: onnx.NodeProto, since: int):
        self.op, self.inputs, self.outputs = node.op_type, list(node.input), list(node.output)
        self.attrs, self.name, self.since = _attrs(node), node.name or node.output[0], since


def supported_ops() -> list[str]:
    import torch

    return sorted(_ops(torch))


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)


def to_torch(model: onnx.ModelProto):
    """A torch.nn.Module computing what `model` computes. Parameters are the float initializers that
    Conv/Gemm/MatMul/BatchNormalization scale+bias/Add/Mul read (name = initializer name, see param_name);
    every other initializer is a buffer. Unsupported ops: InputError naming them, before any work."""
    import torch

    ops = _ops(torch)
    g = model.graph
    bad = sorted({n.op_type for n in g.node if n.op_type not in ops and n.op_type != "Constant"})
    bad += sorted({f"{n.domain}::{n.op_type}" for n in g.node if n.domain not in ("", "ai.onnx")})
    if bad:
        raise InputError(f"the ONNX->torch converter does not cover op(s) {', '.join(bad)} in this model; "
                         f"it covers {', '.join(supported_ops())} (use a torch source for prune-distill)")
    if any(a.type == onnx.AttributeProto.GRAPH for n in g.node for a in n.attribute):
        raise InputError("the ONNX->torch converter does not cover subgraphs (If/Loop/Scan); use a torch source")
    return OnnxModule(model, ops)


def param_name(name: str) -> str:
    """The torch parameter name of an ONNX initializer ('.' is not allowed in a ParameterDict key)."""
    return "p_" + "".join(c if c.isalnum() or c == "_" else f"_{ord(c):x}_" for c in name)


def _module_base():
    import torch

    return torch.nn.Module


class OnnxModule(_module_base()):  # type: ignore[misc]
    """See to_torch. `initializer_names` maps torch parameter/buffer names back to ONNX initializer names."""

    def __init__(self, model: onnx.ModelProto, ops: dict):
        import torch

        super().__init__()
        g = model.graph
        since = opset_of(model)
        self._ops = ops
        self._nodes = [_Node(n, since) for n in g.node]
        trainable = {n.input[i] for n in g.node for i in TRAINABLE.get(n.op_type, ()) if i < len(n.input)}
        self.params = torch.nn.ParameterDict()
        self.initializer_names: dict[str, str] = {}
        self._consts: dict[str, object] = {}
        for init in g.initializer:
            a = numpy_helper.to_array(init)
            key = param_name(init.name)
            if a.dtype == np.float32 and init.name in trainable:
                self.params[key] = torch.nn.Parameter(torch.from_numpy(a.copy()))
                self.initializer_names[key] = init.name
            else:  # fixed: shapes, scalars, int tensors (kept as torch tensors, not state)
                self._consts[init.name] = torch.from_numpy(a.copy()) if a.dtype != np.float64 else torch.from_numpy(a.astype(np.float32))
        for n in g.node:
            if n.op_type == "Constant":
                value = next(onnx.helper.get_attribute_value(a) for a in n.attribute)
                if isinstance(value, onnx.TensorProto):
                    self._consts[n.output[0]] = torch.from_numpy(numpy_helper.to_array(value).copy())
                else:
                    self._consts[n.output[0]] = torch.tensor(value)
        self._nodes = [n for n in self._nodes if n.op != "Constant"]
        init_names = {i.name for i in g.initializer}
        self.input_names = [i.name for i in g.input if i.name not in init_names]
        self.output_names = [o.name for o in g.output]

    def forward(self, *inputs):
        if len(inputs) != len(self.input_names):
            raise InputError(f"the model takes {len(self.input_names)} input(s) ({', '.join(self.input_names)}), "
                             f"got {len(inputs)}")
        env: dict[str, object] = dict(self._consts)
        for key, name in self.initializer_names.items():
            env[name] = self.params[key]
        env.update(zip(self.input_names, inputs))
        for n in self._nodes:
            args = [env[i] if i else None for i in n.inputs]
            while args and args[-1] is None:
                args.pop()
            out = self._ops[n.op](n, args, n.attrs)
            env[n.outputs[0]] = out
        outs = [env[o] for o in self.output_names]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def onnx_state(self) -> dict[str, np.ndarray]:
        """ONNX initializer name -> the trained value (float32)."""
        return {name: self.params[key].detach().cpu().numpy().astype(np.float32)
                for key, name in self.initializer_names.items()}


def write_back(model: onnx.ModelProto, module: OnnxModule) -> onnx.ModelProto:
    """A copy of `model` whose initializers hold the module's parameters (same graph, same names/shapes)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    state = module.onnx_state()
    for i, init in enumerate(out.graph.initializer):
        if init.name in state:
            a = state[init.name]
            if tuple(a.shape) != tuple(init.dims):
                raise InputError(f"trained tensor '{init.name}' has shape {a.shape}, the graph expects "
                                 f"{tuple(init.dims)}; the student's structure must not change while training")
            out.graph.initializer[i].CopyFrom(numpy_helper.from_array(a, init.name))
    return out


def max_error(model: onnx.ModelProto, module: OnnxModule, feeds: dict[str, np.ndarray],
              session_factory: Optional[Callable] = None) -> float:
    """Largest |ORT(model) - module| over all outputs, relative to max |ORT| (ORT optimizations disabled)."""
    import onnxruntime as ort
    import torch

    if session_factory is None:
        from ..runtime.session import session_options

        sess = ort.InferenceSession(model.SerializeToString(), session_options(optimize=False),
                                    providers=["CPUExecutionProvider"])
    else:
        sess = session_factory(model)
    ref = sess.run(None, feeds)
    was = module.training
    module.eval()
    with torch.no_grad():
        got = module(*[torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in module.input_names])
    module.train(was)
    got = [got] if not isinstance(got, tuple) else list(got)
    worst = 0.0
    for r, t in zip(ref, got):
        scale = max(float(np.abs(r).max()), 1e-12)
        worst = max(worst, float(np.abs(r - t.numpy()).max()) / scale)
    return worst
