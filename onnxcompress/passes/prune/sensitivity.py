"""How much pruning each layer's channels damages the model's outputs, measured on calibration data; and
activation-based channel scores.

One instrumented copy of the analysed model serves every measurement: each producer weight is multiplied
by a mask the run feeds, so pruning the weakest share of a layer is one more run of one session over a few
samples (no model copy, no session per layer). Zeroing producer rows is what the removal approximates (the
zeroed channel keeps its bias, folded into the consumers later), so the measured damage is the removal's.
Damage compares the outputs with FP32: KL divergence on class-like [N, C] outputs (probabilities, or
softmax of logits), else relative MSE; "cosine" is 1 - cosine per sample. Lower is better; 0 is FP32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import onnx
from onnx import helper

from ...data import Dataset, Feed, feeds, samples_of
from ...errors import InputError
from ...runtime.session import make_session, with_outputs
from ...graph import weight_axes
from .graph import ChannelContext

Progress = Optional[Callable[[int, int, str], None]]
# ops that keep channels apart: the activation a producer's channel feeds the next layer is read after them
CHANNELWISE = {"BatchNormalization", "Relu", "Clip", "LeakyRelu", "PRelu", "Elu", "Selu", "Sigmoid", "Tanh",
               "Softplus", "HardSwish", "Mish", "Gelu"}
RUN_BATCH = 8  # samples per run: intermediate activations of a 224x224 CNN stay a few hundred MB


def calibration_runs(calibration: Any, model: onnx.ModelProto, limit: int) -> list[Feed]:
    """Up to `limit` samples of a Dataset, Feeds, or plain sample-first batches, as model runs of at most
    RUN_BATCH samples (Feeds are taken as they are: a fixed-batch model's runs cannot be cut)."""
    if calibration is None:
        return []
    if hasattr(calibration, "take"):
        return list(feeds(calibration.take(limit), RUN_BATCH, None, model))
    batches = list(calibration)
    if batches and all(isinstance(b, Feed) for b in batches):
        out, n = [], 0
        for b in batches:
            if n >= limit:
                break
            out.append(b)
            n += samples_of(b)
        return out
    return list(feeds(Dataset(batches, None, "calibration").take(limit), RUN_BATCH, None, model))


def _mask_shape(node: onnx.NodeProto, w: np.ndarray, n: int) -> Optional[tuple[int, ...]]:
    """Shape of a per-output-row mask broadcast against the producer weight (None: rows not on one axis)."""
    if node.op_type == "Conv" and w.shape[0] == n:
        return (n,) + (1,) * (w.ndim - 1)
    if node.op_type == "ConvTranspose" and w.ndim > 2 and w.shape[1] == n:
        return (1, n) + (1,) * (w.ndim - 2)
    if node.op_type == "Gemm" and w.ndim == 2:
        out_axis = weight_axes(node)[0]
        if w.shape[out_axis] == n:
            return (n, 1) if out_axis == 0 else (1, n)
    if node.op_type == "MatMul" and w.ndim >= 2 and w.shape[-1] == n:
        return (1,) * (w.ndim - 1) + (n,)
    return None


class MaskedModel:
    """The analysed model with every producer weight multiplied by a mask input; `run(zeroed)` gives the
    outputs with the producer rows of the roots `zeroed` set to zero, over the calibration runs."""

    def __init__(self, ctx: ChannelContext, runs: Sequence[Feed]):
        src = ctx.index.model
        m = onnx.ModelProto()
        m.CopyFrom(src)
        pos = {id(n): i for i, n in enumerate(src.graph.node)}
        muls: list[onnx.NodeProto] = []
        self.masks: list[tuple[str, np.ndarray, tuple[int, ...], np.dtype]] = []  # input, row roots, shape, dtype
        for i, (node, wname, ids) in enumerate(ctx.producers):
            w = ctx.index.const(wname)
            shape = None if w is None or id(node) not in pos else _mask_shape(node, w, len(ids))
            if shape is None:
                continue
            name, masked = f"__prune_mask_{i}", f"{wname}__prune_masked_{i}"
            dtype = np.dtype(w.dtype)
            m.graph.input.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(dtype), list(shape)))
            muls.append(helper.make_node("Mul", [wname, name], [masked], name=f"__prune_mask_mul_{i}"))
            target = m.graph.node[pos[id(node)]]
            for j, inp in enumerate(target.input):
                if inp == wname:
                    target.input[j] = masked
            self.masks.append((name, ctx.roots(ids), shape, dtype))
        nodes = list(m.graph.node)
        del m.graph.node[:]
        m.graph.node.extend(muls + nodes)
        self.model = m
        self.runs = list(runs)
        self.session = make_session(m)
        self.outputs = [o.name for o in src.graph.output]
        self.reference = self.run(set())

    def feed(self, zeroed: set[int]) -> dict[str, np.ndarray]:
        out = {}
        z = np.fromiter(zeroed, dtype=np.int64) if zeroed else None
        for name, roots, shape, dtype in self.masks:
            mask = np.ones(len(roots), dtype=dtype)
            if z is not None:
                mask[np.isin(roots, z)] = 0
            out[name] = mask.reshape(shape)
        return out

    def run(self, zeroed: set[int]) -> list[list[np.ndarray]]:
        """Per run, the outputs (padding rows of a fixed-batch run dropped)."""
        masks = self.feed(zeroed)
        result = []
        for f in self.runs:
            values = self.session.run(self.outputs, {**f, **masks})
            result.append([f.trim(v) if isinstance(f, Feed) else v for v in values])
        return result

    def damage(self, zeroed: set[int], kind: str = "auto") -> float:
        return output_damage(self.reference, self.run(zeroed), kind)


def _probabilities(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    if x.min() >= 0 and x.max() <= 1 and np.allclose(x.sum(axis=1), 1, atol=1e-3):
        return np.clip(x, 1e-12, 1)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return np.clip(e / e.sum(axis=1, keepdims=True), 1e-12, 1)


def output_damage(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]], kind: str = "auto") -> float:
    """Damage of `candidate` against `reference` (per run, per output), averaged over the float outputs:
    KL (class-like [N, C] outputs; others fall back to relative MSE), relative MSE, or 1 - cosine."""
    per_output: list[float] = []
    for k in range(len(reference[0]) if reference else 0):
        refs = [r[k] for r in reference]
        cands = [c[k] for c in candidate]
        if not np.issubdtype(refs[0].dtype, np.floating):
            continue
        if any(not np.all(np.isfinite(c)) for c in cands):
            return float("inf")
        class_like = all(r.ndim == 2 and r.shape[1] >= 2 for r in refs)
        if kind in ("auto", "kl") and class_like:
            kl = [float(np.sum(p * (np.log(p) - np.log(_probabilities(c))))) for p, c in
                  ((_probabilities(r), c) for r, c in zip(refs, cands))]
            per_output.append(sum(kl) / max(1, sum(len(r) for r in refs)))
        elif kind == "cosine":
            cos = []
            for r, c in zip(refs, cands):
                r2, c2 = r.reshape(len(r) if r.ndim > 1 else 1, -1).astype(np.float64), c.reshape(len(r) if r.ndim > 1 else 1, -1)
                num = (r2 * c2).sum(1)
                den = np.linalg.norm(r2, axis=1) * np.linalg.norm(c2, axis=1)
                cos += np.where(den > 0, num / np.maximum(den, 1e-30), 1.0).tolist()
            per_output.append(1.0 - float(np.mean(cos)))
        else:
            err = sum(float(np.sum((c.astype(np.float64) - r) ** 2)) for r, c in zip(refs, cands))
            ref = sum(float(np.sum(r.astype(np.float64) ** 2)) for r in refs)
            per_output.append(err / ref if ref > 0 else err)
    return float(np.mean(per_output)) if per_output else 0.0


@dataclass(frozen=True)
class Curve:
    """Damage after pruning the weakest `counts[i]` channels of one layer (of `width`)."""

    width: int
    counts: tuple[int, ...]
    damage: tuple[float, ...]

    def at(self, k: int) -> float:
        """Predicted damage of pruning k channels: linear between the measured points, non-decreasing
        (a measured improvement is noise), held flat beyond the last point (the allocation stops there)."""
        xs = np.array((0,) + self.counts, dtype=float)
        ys = np.maximum.accumulate(np.maximum(np.array((0.0,) + self.damage), 0.0))
        return float(np.interp(k, xs, ys))

    def to_dict(self) -> dict:
        return {"width": self.width, "counts": list(self.counts), "damage": [round(d, 6) for d in self.damage]}


def measure(masked: MaskedModel, layers: dict[str, list[int]], widths: dict[str, int], fractions: Sequence[float],
            kind: str = "auto", progress: Progress = None) -> dict[str, Curve]:
    """Per layer (key -> its prunable roots, weakest first), the damage of zeroing the weakest
    fraction * width of them, for each fraction. One run of `masked` per (layer, distinct count)."""
    say = progress or (lambda done, total, what: None)
    todo = {key: sorted({min(len(roots), int(round(f * widths[key]))) for f in fractions} - {0})
            for key, roots in layers.items()}
    total, done = sum(len(c) for c in todo.values()), 0
    curves: dict[str, Curve] = {}
    for key, counts in todo.items():
        roots = layers[key]
        damage = []
        for k in counts:
            say(done, total, f"sensitivity: {key[:60]} -{k}/{widths[key]}")
            damage.append(masked.damage(set(roots[:k]), kind))
            done += 1
        curves[key] = Curve(widths[key], tuple(counts), tuple(damage))
    say(total, total, "sensitivity measured")
    return curves


def activation_tensor(ctx: ChannelContext, node: onnx.NodeProto) -> str:
    """The tensor a producer's channels reach the next layer as: its output, followed through one-consumer
    channelwise ops (BatchNormalization, activations)."""
    name = node.output[0]
    for _ in range(8):
        users = ctx.index.consumers.get(name, [])
        if len(users) != 1 or users[0].op_type not in CHANNELWISE or name in ctx.index.graph_outputs:
            break
        nxt = users[0].output[0]
        if nxt not in ctx.tensors or len(ctx.tensors[nxt].ids) != len(ctx.tensors[name].ids):
            break
        name = nxt
    return name


def activation_scores(ctx: ChannelContext, runs: Sequence[Feed], kind: str = "activation") -> dict[int, float]:
    """Root -> mean |activation| ("activation") or root-mean-square ("activation_l2") of its channel after
    each producer (and its BN/activation), summed over the producers writing it, on the calibration runs."""
    if not runs:
        raise InputError(f"--criterion {kind} scores channels by their activations; pass calibration data (-c)")
    picks: list[tuple[str, np.ndarray, int]] = []
    for node, _wname, ids in ctx.producers:
        t = activation_tensor(ctx, node)
        ch = ctx.tensors.get(t)
        if ch is not None and len(ch.ids) == len(ids):
            picks.append((t, ctx.roots(ids), ch.axis))
    names = list(dict.fromkeys(t for t, _, _ in picks))
    if not names:
        return {}
    session = make_session(with_outputs(ctx.index.model, names))
    sums: dict[str, np.ndarray] = {}
    count = 0
    for f in runs:
        values = dict(zip(names, session.run(names, dict(f))))
        for t, _roots, axis in picks:
            v = f.trim(values[t]) if isinstance(f, Feed) else values[t]
            a = axis % v.ndim
            other = tuple(i for i in range(v.ndim) if i != a)
            stat = (np.abs(v) if kind == "activation" else v.astype(np.float64) ** 2).mean(axis=other) * samples_of(f)
            sums[t] = sums.get(t, 0) + stat
        count += samples_of(f)
    score: dict[int, float] = {}
    for t, roots, _axis in picks:
        s = sums[t] / max(count, 1)
        s = np.sqrt(s) if kind == "activation_l2" else s
        for r, v in zip(roots.tolist(), s.tolist()):
            score[r] = score.get(r, 0.0) + float(v)
    return score
