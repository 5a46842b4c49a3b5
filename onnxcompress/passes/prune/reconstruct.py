"""Data-driven reconstruction after structured pruning (least squares on calibration data).

Every layer that lost input channels (Conv with group=1, Gemm, MatMul with a constant 2-D weight) is
refit so that, fed with the PRUNED model's input to that layer, it reproduces the ORIGINAL model's
output of that layer (same tensor name in both models; removed output channels are left out). Inputs
and targets are read from instrumented copies of the two models (the layer tensors become extra graph
outputs); a Conv is unrolled by im2col (strides, pads, auto_pad, dilations) on a random subset of
output positions, so the rows kept per layer are bounded whatever the amount of data.

The normal equations X^T X, X^T Y and sum(Y^2) are accumulated batch by batch (memory flat in the
number of samples), separately for a held-out share of the samples. The ridge solution is regularized
towards the current weights, (X^T X + lambda I) W = X^T Y + lambda W_current, with lambda relative to
trace(X^T X)/D and chosen among a few values by the held-out error; the intercept (bias) is free. A
refit is applied (solved again on all rows) only if it lowers the held-out output MSE of that layer;
otherwise the weights stay and the record says why.

Layers are processed in dependency levels: a level holds the layers with the same number of refit
layers upstream, so no layer of a level feeds another one of it. One pass over the data per level
gathers all its layers' statistics, from the pruned model as refit so far: later layers see the refit
earlier ones, exactly as with one pass per layer, in (number of levels) passes instead of (layers).
"""
from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...data import Dataset, Feed, feeds, samples_of
from ...evaluate.runner import make_session, run_feed
from ...io import is_big
from ..base import PassRecord
from .handlers import attr, set_attr

LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # ridge strengths tried, times trace(X^T X) / D
HELD_OUT_EVERY = 5  # every 5th calibration sample is held out (choice of lambda, accept or reject)
MAX_FEATURES = 8192  # X^T X of a larger layer would not fit comfortably in memory (D^2 float64)

Batches = Sequence[dict[str, np.ndarray]]


@dataclass
class Normal:
    """Sufficient statistics of a least-squares problem Y ~ X W on some rows."""

    xtx: np.ndarray
    xty: np.ndarray
    yty: float = 0.0
    rows: int = 0

    @classmethod
    def zeros(cls, d: int, c: int) -> "Normal":
        return cls(np.zeros((d, d)), np.zeros((d, c)))

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        if len(x):
            x64, y64 = x.astype(np.float64), y.astype(np.float64)
            self.xtx += x64.T @ x64
            self.xty += x64.T @ y64
            self.yty += float(np.sum(y64 * y64))
            self.rows += len(x)

    def __add__(self, other: "Normal") -> "Normal":
        return Normal(self.xtx + other.xtx, self.xty + other.xty, self.yty + other.yty, self.rows + other.rows)

    def mse(self, w: np.ndarray) -> float:
        """Mean squared error of X W against Y over these rows, from the statistics alone."""
        sse = self.yty - 2.0 * float(np.sum(w * self.xty)) + float(np.sum(w * (self.xtx @ w)))
        return max(sse, 0.0) / max(1, self.rows * w.shape[1])


def ridge(stats: Normal, prior: np.ndarray, lam_rel: float, intercept: bool) -> np.ndarray:
    """argmin |Y - X W|^2 + lambda |W - prior|^2 over the weight rows (the intercept row is free)."""
    d = stats.xtx.shape[0]
    k = d - 1 if intercept else d
    lam = lam_rel * max(float(np.trace(stats.xtx[:k, :k])) / max(k, 1), 1e-12)
    reg = np.full(d, lam)
    if intercept:
        reg[-1] = 0.0
    a = stats.xtx + np.diag(reg)
    b = stats.xty + reg[:, None] * prior
    try:
        return np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(a, b, rcond=None)[0]


def _with_ones(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x, np.ones((len(x), 1), dtype=x.dtype)], axis=1)


def _pick(total: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(total, cap, replace=False)) if total > cap else np.arange(total)


class Weights:
    """Initializers of a model by name: read as arrays, written back in their own dtype."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.inits = {i.name: i for i in model.graph.initializer}

    def get(self, name: str) -> Optional[np.ndarray]:
        t = self.inits.get(name)
        return None if t is None else numpy_helper.to_array(t)

    def set(self, name: str, value: np.ndarray) -> None:
        dtype = helper.tensor_dtype_to_np_dtype(self.inits[name].data_type)
        self.inits[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value).astype(dtype), name))

    def add(self, name: str, value: np.ndarray) -> str:
        used = self.inits.keys() | {o for n in self.model.graph.node for o in n.output}
        base, i = name, 1
        while name in used:
            name, i = f"{base}_{i}", i + 1
        self.model.graph.initializer.append(numpy_helper.from_array(value, name))
        self.inits[name] = self.model.graph.initializer[-1]
        return name


@dataclass
class Layer(ABC):
    """One layer to refit: `x` its input in the pruned model, `y` the output matched in both models."""

    node: onnx.NodeProto
    x: str
    y: str
    out_keep: Optional[np.ndarray]  # original output channels that remain (None: all)
    features: int  # D: rows of the weight matrix, intercept included
    outputs: int  # C: remaining output channels
    intercept: bool = True
    level: int = 0

    train: Optional[Normal] = field(default=None, init=False)  # statistics of most samples
    held: Optional[Normal] = field(default=None, init=False)  # of the held-out samples

    def start(self) -> None:
        """Allocate the statistics (D x D each: only for the layers of the level being refit)."""
        self.train = Normal.zeros(self.features, self.outputs)
        self.held = Normal.zeros(self.features, self.outputs)

    @property
    def name(self) -> str:
        return self.node.name or self.node.output[0]

    @abstractmethod
    def matrix(self, w: Weights) -> np.ndarray:
        """The current weights as a [D, C] matrix (last row: the intercept, when there is one)."""

    @abstractmethod
    def rows(self, x: np.ndarray, y: np.ndarray, cap: int, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(X rows, Y rows, sample index of each row) from one batch, at most `cap` rows."""

    @abstractmethod
    def write(self, w: Weights, m: np.ndarray) -> None:
        """Store a [D, C] matrix as the layer's weights (and bias)."""

    def _targets(self, y: np.ndarray) -> np.ndarray:
        if self.out_keep is None:
            return y
        if len(self.out_keep) != y.shape[1]:
            raise ValueError(f"the original output of {self.name} has {y.shape[1]} channels, the record "
                             f"{len(self.out_keep)}")
        return y[:, self.out_keep]


@dataclass
class ConvLayer(Layer):
    """Conv with group=1 and 1 or 2 spatial axes, unrolled by im2col."""

    kernel: tuple[int, ...] = ()

    def _geometry(self, x_shape: tuple, y_shape: tuple, k: tuple) -> tuple[list[int], list[int], list[tuple[int, int]]]:
        r = len(k)
        strides = list(attr(self.node, "strides", [1] * r))
        dil = list(attr(self.node, "dilations", [1] * r))
        auto = attr(self.node, "auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = []
            for i, o, kk, s, d in zip(x_shape[2:], y_shape[2:], k, strides, dil):
                total = max((o - 1) * s + (kk - 1) * d + 1 - i, 0)
                begin = total // 2 if auto == "SAME_UPPER" else total - total // 2
                pads.append((begin, total - begin))
        else:
            p = list(attr(self.node, "pads", [0] * 2 * r)) if auto != "VALID" else [0] * 2 * r
            pads = list(zip(p[:r], p[r:]))
        return strides, dil, pads

    def matrix(self, w):
        k = w.get(self.node.input[1])
        m = k.reshape(k.shape[0], -1).T
        b = w.get(self.node.input[2]) if len(self.node.input) > 2 and self.node.input[2] else None
        return np.concatenate([m, (np.zeros(k.shape[0]) if b is None else b)[None, :]]).astype(np.float64)

    def rows(self, x, y, cap, rng):
        kshape = self.kernel
        strides, dil, pads = self._geometry(x.shape, y.shape, kshape)
        if len(kshape) == 1:  # 1-D as 2-D with a unit axis
            x, y, kshape = x[:, :, None, :], y[:, :, None, :], (1, kshape[0])
            strides, dil, pads = [1] + strides, [1] + dil, [(0, 0)] + pads
        xp = np.pad(x, ((0, 0), (0, 0), *pads))
        n_, c = x.shape[:2]
        oh, ow = y.shape[2:]
        n, i, j = np.unravel_index(_pick(n_ * oh * ow, cap, rng), (n_, oh, ow))
        hs = i[:, None] * strides[0] + np.arange(kshape[0]) * dil[0]
        ws = j[:, None] * strides[1] + np.arange(kshape[1]) * dil[1]
        patches = xp[n[:, None, None, None], np.arange(c)[None, :, None, None], hs[:, None, :, None], ws[:, None, None, :]]
        return _with_ones(patches.reshape(len(n), -1)), self._targets(y[n, :, i, j]), n

    def write(self, w, m):
        k = w.get(self.node.input[1])
        w.set(self.node.input[1], m[:-1].T.reshape(k.shape))
        if len(self.node.input) > 2 and self.node.input[2]:
            w.set(self.node.input[2], m[-1])
        else:
            name = w.add(f"{self.node.output[0]}__reconstructed_bias", m[-1].astype(k.dtype))
            self.node.input.append(name)


class GemmLayer(Layer):
    """Y = alpha * A B + beta * C with transA = 0; refit as one [K + 1, N] matrix."""

    def _b(self, w: Weights) -> np.ndarray:
        b = w.get(self.node.input[1])
        return b.T if attr(self.node, "transB", 0) else b

    def _c(self, w: Weights) -> Optional[np.ndarray]:
        return w.get(self.node.input[2]) if len(self.node.input) > 2 and self.node.input[2] else None

    def matrix(self, w):
        b = self._b(w) * attr(self.node, "alpha", 1.0)
        c = self._c(w)
        bias = np.zeros(b.shape[1]) if c is None else np.broadcast_to(c.reshape(-1), (b.shape[1],)) * attr(self.node, "beta", 1.0)
        return np.concatenate([b, bias[None, :]]).astype(np.float64)

    def rows(self, x, y, cap, rng):
        idx = _pick(len(x), cap, rng)
        return _with_ones(x[idx]), self._targets(y[idx]), idx

    def write(self, w, m):
        b = m[:-1] / attr(self.node, "alpha", 1.0)
        w.set(self.node.input[1], b.T if attr(self.node, "transB", 0) else b)
        c = self._c(w)
        if c is None:
            set_attr(self.node, "beta", 1.0)
            name = w.add(f"{self.node.output[0]}__reconstructed_bias", m[-1].astype(self._b(w).dtype))
            while len(self.node.input) < 2:
                self.node.input.append("")
            self.node.input.append(name)
            return
        bias = m[-1] / attr(self.node, "beta", 1.0)
        w.set(self.node.input[2], bias.reshape(c.shape) if c.size == bias.size else bias)


@dataclass
class MatMulLayer(Layer):
    """x @ W with constant 2-D W (hidden = last axis), with the bias of a following Add if there is one."""

    bias: Optional[str] = None  # the Add's constant

    def matrix(self, w):
        m = w.get(self.node.input[1]).astype(np.float64)
        if self.bias is None:
            return m
        return np.concatenate([m, w.get(self.bias).reshape(1, -1)])

    def rows(self, x, y, cap, rng):
        k = x.shape[-1]
        per = int(np.prod(x.shape[1:-1])) if x.ndim > 2 else 1
        xr, yr = x.reshape(-1, k), y.reshape(len(x) * per, -1)
        idx = _pick(len(xr), cap, rng)
        xs = _with_ones(xr[idx]) if self.bias is not None else xr[idx]
        return xs, self._targets(yr[idx]), idx // per

    def write(self, w, m):
        if self.bias is None:
            w.set(self.node.input[1], m)
        else:
            w.set(self.node.input[1], m[:-1])
            w.set(self.bias, m[-1].reshape(w.get(self.bias).shape))


def _conv_layer(node: onnx.NodeProto, w: Weights, kept: dict[str, np.ndarray]) -> Layer | str:
    weight = w.get(node.input[1])
    if attr(node, "group", 1) != 1:
        return f"grouped or depthwise conv (group={attr(node, 'group', 1)}) is not refit"
    if weight.ndim not in (3, 4):
        return f"{weight.ndim - 2}-D convolutions are not refit (1-D and 2-D only)"
    if len(node.input) > 2 and node.input[2] and w.get(node.input[2]) is None:
        return "the bias is not an initializer"
    return ConvLayer(node, node.input[0], node.output[0], kept.get(node.output[0]), int(np.prod(weight.shape[1:])) + 1,
                     weight.shape[0], kernel=tuple(weight.shape[2:]))


def _gemm_layer(node: onnx.NodeProto, w: Weights, kept: dict[str, np.ndarray]) -> Layer | str:
    weight = w.get(node.input[1])
    has_c = len(node.input) > 2 and bool(node.input[2])
    c = w.get(node.input[2]) if has_c else None
    n_out = weight.shape[0] if attr(node, "transB", 0) else weight.shape[1]
    if attr(node, "transA", 0) or (has_c and (c is None or c.size not in (1, n_out))):
        return "Gemm with transA or a C that is not a per-output constant"
    return GemmLayer(node, node.input[0], node.output[0], kept.get(node.output[0]), weight.size // n_out + 1, n_out)


def _matmul_layer(node: onnx.NodeProto, w: Weights, kept: dict[str, np.ndarray],
                  consumers: dict[str, list[onnx.NodeProto]]) -> Layer | str:
    weight = w.get(node.input[1])
    if weight.ndim != 2:
        return "MatMul weight is not a constant 2-D matrix"
    cons = consumers.get(node.output[0], [])
    add = cons[0] if len(cons) == 1 and cons[0].op_type == "Add" else None
    other = next((i for i in add.input if i != node.output[0]), None) if add is not None else None
    b = w.get(other) if other is not None else None
    bias = other if b is not None and b.ndim == 1 and len(consumers.get(other, [])) == 1 else None
    y = add.output[0] if bias is not None else node.output[0]  # with its bias, the layer ends after the Add
    return MatMulLayer(node, node.input[0], y, kept.get(y, kept.get(node.output[0])), weight.shape[0] + (bias is not None),
                       weight.shape[1], intercept=bias is not None, bias=bias)


def find_layers(original: onnx.ModelProto, pruned: onnx.ModelProto, kept: dict[str, np.ndarray],
                rec: PassRecord) -> list[Layer]:
    """The layers of `pruned` that lost input channels and can be refit; the others are skipped with a reason."""
    w = Weights(pruned)
    orig_out = {o for n in original.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in pruned.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    layers: list[Layer] = []
    for node in pruned.graph.node:
        k_in = kept.get(node.input[0]) if node.input else None
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or k_in is None or k_in.all():
            continue
        found: Layer | str
        if node.op_type == "ConvTranspose":
            found = "ConvTranspose is not refit"
        elif w.get(node.input[1]) is None:
            found = "the weight is not an initializer"
        elif node.op_type == "Conv":
            found = _conv_layer(node, w, kept)
        elif node.op_type == "Gemm":
            found = _gemm_layer(node, w, kept)
        else:
            found = _matmul_layer(node, w, kept, consumers)
        if isinstance(found, Layer) and found.y not in orig_out:
            found = f"tensor '{found.y}' is not in the original model"
        elif isinstance(found, Layer) and found.features > MAX_FEATURES:
            found = f"{found.features} input features is over the limit ({MAX_FEATURES})"
        if isinstance(found, str):
            rec.skip(f"{node.op_type} '{node.name or node.output[0]}'", f"reconstruct: {found}")
        else:
            layers.append(found)
    _assign_levels(pruned, layers)
    return layers


def _assign_levels(model: onnx.ModelProto, layers: list[Layer]) -> None:
    """level = number of refit layers on the longest path from the inputs (nodes are topologically sorted)."""
    by_out = {layer.y: layer for layer in layers}
    depth: dict[str, int] = {}
    for node in model.graph.node:
        lvl = max((depth.get(i, 0) for i in node.input if i), default=0)
        for o in node.output:
            depth[o] = lvl
            if o in by_out:
                by_out[o].level = lvl
                depth[o] = lvl + 1


def _instrumented(model: onnx.ModelProto, names: list[str]):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in dict.fromkeys(names) if n not in have)
    return make_session(m, optimize=True)


@dataclass
class Reconstruction:
    """Options: at most `max_rows` rows per layer in all (spread over the batches), `seed` for the
    row sampling, ridge strengths `lambdas` (relative to trace(X^T X) / D)."""

    max_rows: int = 16384
    seed: int = 0
    lambdas: tuple[float, ...] = LAMBDAS


def reconstruct(original: onnx.ModelProto, pruned: onnx.ModelProto, kept: dict[str, np.ndarray],
                batches: Batches, rec: PassRecord, options: Optional[Reconstruction] = None,
                progress: Optional[Callable[[int, int, str], None]] = None) -> onnx.ModelProto:
    """Refit the layers of `pruned` that lost input channels; returns a new model (same shapes), fills
    rec.stats["reconstruct"] with per-layer held-out MSE before/after and adds skips with reasons.
    `progress(done, total, what)` is told each level's pass over the data and each layer's refit."""
    opts = options or Reconstruction()
    say = progress or (lambda done, total, what: None)
    t0 = time.perf_counter()
    out = onnx.ModelProto()
    out.CopyFrom(pruned)
    if is_big(original) or is_big(out):
        rec.skip("reconstruct", "models over 2 GB are not reconstructed (in-memory sessions)")
        return out
    batches = [b for b in _as_feeds(batches, original) if samples_of(b)]
    if not batches:
        rec.skip("reconstruct", "no calibration samples")
        return out
    layers = find_layers(original, out, kept, rec)
    w = Weights(out)
    report: dict[str, dict] = {}
    orig_sess = _instrumented(original, [layer.y for layer in layers]) if layers else None
    rng = np.random.default_rng(opts.seed)
    cap = max(1, math.ceil(opts.max_rows / len(batches)))
    levels = sorted({layer.level for layer in layers})
    for li, level in enumerate(levels):
        todo = [layer for layer in layers if layer.level == level]
        say(len(report), len(layers), f"reconstruct: level {li + 1}/{len(levels)}, reading the data for "
                                      f"{len(todo)} layer{'s' if len(todo) > 1 else ''}")
        for layer in todo:
            layer.start()
        sess = _instrumented(out, [layer.x for layer in todo])
        offset = 0
        for batch in batches:
            n = samples_of(batch)
            ys = run_feed(orig_sess, [layer.y for layer in todo], batch, "the calibration data")
            xs = run_feed(sess, [layer.x for layer in todo], batch, "the calibration data")
            held = (np.arange(offset, offset + n) % HELD_OUT_EVERY) == HELD_OUT_EVERY - 1
            offset += n
            for layer, x, y in zip(todo, xs, ys):
                xr, yr, sample = layer.rows(x, y, cap, rng)
                h = held[sample]
                layer.train.add(xr[~h], yr[~h])
                layer.held.add(xr[h], yr[h])
        for layer in todo:
            say(len(report), len(layers), f"reconstruct: refit {layer.node.op_type} '{layer.name}' "
                                          f"({layer.features} x {layer.outputs})")
            report[layer.name] = _refit(layer, w, opts, rec)
    if layers:
        say(len(layers), len(layers), "reconstruct: done")
    rec.stats["reconstruct"] = {
        "layers": report,
        "refit": sum(r["accepted"] for r in report.values()),
        "samples": sum(samples_of(b) for b in batches),
        "levels": len({layer.level for layer in layers}),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return out


def _as_feeds(batches, model: onnx.ModelProto) -> list[Feed]:
    """Model runs (data.feeds: fixed batch, batch axes, consts) from a Dataset, Feeds, or plain
    sample-first batches (laid out for `model`)."""
    if hasattr(batches, "batches"):
        return list(feeds(batches, 64, None, model))
    batches = list(batches)
    if all(isinstance(b, Feed) for b in batches):
        return batches
    return list(feeds(Dataset(batches, None, "calibration"), 64, None, model))


def _refit(layer: Layer, w: Weights, opts: Reconstruction, rec: PassRecord) -> dict:
    prior = layer.matrix(w)
    train, held = layer.train, layer.held
    layer.train = layer.held = None  # freed with this function's locals
    check = held if held.rows else train  # too few samples to hold any out: judged on the fitting rows
    fits = {lam: ridge(train, prior, lam, layer.intercept) for lam in opts.lambdas}
    lam = min(fits, key=lambda k: check.mse(fits[k]))
    before, after = check.mse(prior), check.mse(fits[lam])
    everything = train + held
    row = {"mse_before": before, "mse_after": after, "lambda": lam, "rows": everything.rows,
           "held_out_rows": held.rows, "accepted": bool(after < before)}
    target = f"{layer.node.op_type} '{layer.name}'"
    if not after < before:
        rec.skip(target, f"reconstruct: the refit does not lower the layer's held-out output MSE "
                         f"({after:.4g} vs {before:.4g} without); weights kept")
        return row
    final = ridge(everything, prior, lam, layer.intercept)
    layer.write(w, final)
    row["calib_mse_before"], row["calib_mse_after"] = everything.mse(prior), everything.mse(final)
    rec.changed.append(f"{layer.name} (reconstructed)")
    return row
