"""The least-squares side of reconstruction: normal equations, ridge, per-channel affine corrections,
and the weight layers (Conv of any group, Gemm, MatMul[+Add]) seen as [G, D, C] matrices.

A layer is G independent problems Y_g ~ X_g W_g: G = 1 for a plain conv, Gemm or MatMul; G = group
for a grouped conv, so a depthwise conv is refit channel by channel (D = kh * kw + 1, C = 1 each).
Everything the decisions need (output MSE of any candidate W, per-channel moments of the layer's
output and of its target, hence the error after a per-channel affine correction) is read from the
normal equations, so one pass over the data serves the refit, BN recalibration and bias correction.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...graph import in_out
from .handlers import attr, set_attr


def _3d(a: np.ndarray) -> np.ndarray:
    return a if a.ndim == 3 else a[None]


@dataclass
class Normal:
    """Sufficient statistics of G least-squares problems Y_g ~ X_g W_g on the same rows."""

    xtx: np.ndarray  # [G, D, D]
    xty: np.ndarray  # [G, D, C]
    yy: np.ndarray  # [G, C]: sum of Y^2 per output
    rows: int = 0  # rows per problem

    @classmethod
    def zeros(cls, d: int, c: int, groups: int = 1) -> "Normal":
        return cls(np.zeros((groups, d, d)), np.zeros((groups, d, c)), np.zeros((groups, c)))

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Rows x [R, D] or [G, R, D] with targets y [R, C] or [G, R, C]."""
        x, y = _3d(x), _3d(y)
        if x.shape[1]:
            x64, y64 = x.astype(np.float64), y.astype(np.float64)
            xt = x64.transpose(0, 2, 1)
            self.xtx += xt @ x64
            self.xty += xt @ y64
            self.yy += np.sum(y64 * y64, axis=1)
            self.rows += x.shape[1]

    @property
    def yty(self) -> float:
        return float(self.yy.sum())

    def __add__(self, other: "Normal") -> "Normal":
        return Normal(self.xtx + other.xtx, self.xty + other.xty, self.yy + other.yy, self.rows + other.rows)

    def mse(self, w: np.ndarray) -> float:
        """Mean squared error of X W against Y over these rows, from the statistics alone."""
        w = _3d(w)
        sse = self.yty - 2.0 * float(np.sum(w * self.xty)) + float(np.sum(w * (self.xtx @ w)))
        return max(sse, 0.0) / max(1, self.rows * w.shape[0] * w.shape[2])


def ridge(stats: Normal, prior: np.ndarray, lam_rel: float, intercept: bool) -> np.ndarray:
    """argmin |Y - X W|^2 + lambda |W - prior|^2 over the weight rows (the intercept row is free), per
    problem; lambda is lam_rel times each problem's trace(X^T X) / D."""
    prior = _3d(prior)
    g, d, _ = stats.xtx.shape
    k = d - 1 if intercept else d
    tr = np.trace(stats.xtx[:, :k, :k], axis1=1, axis2=2) / max(k, 1)
    lam = lam_rel * np.maximum(tr, 1e-12)  # [G]
    reg = np.repeat(lam[:, None], d, axis=1)
    if intercept:
        reg[:, -1] = 0.0
    a = stats.xtx + reg[:, :, None] * np.eye(d)[None]
    b = stats.xty + reg[:, :, None] * prior
    try:
        return np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        return np.stack([np.linalg.lstsq(a[i], b[i], rcond=None)[0] for i in range(g)])


@dataclass
class Moments:
    """Per-output sums over the rows of P = X W (the layer's output) and Y (its target): [G, C] each."""

    n: int
    sp: np.ndarray
    spp: np.ndarray
    spy: np.ndarray
    sy: np.ndarray
    syy: np.ndarray

    @classmethod
    def of(cls, s: Normal, w: np.ndarray) -> "Moments":
        """From the normal equations of a layer whose last feature is the constant 1 (the intercept)."""
        w = _3d(w)
        sx = s.xtx[:, -1, :]  # the ones column: sums of each feature
        return cls(s.rows, np.einsum("gd,gdc->gc", sx, w), np.einsum("gdc,gdc->gc", w, s.xtx @ w),
                   np.einsum("gdc,gdc->gc", w, s.xty), s.xty[:, -1, :].copy(), s.yy.copy())

    def sse(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Per-output sum of squared errors of a * P + b against Y."""
        return np.maximum(a * a * self.spp + 2 * a * b * self.sp + self.n * b * b + self.syy
                          - 2 * a * self.spy - 2 * b * self.sy, 0.0)

    def stats(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(mean P, var P, mean Y, var Y) per output."""
        n = max(self.n, 1)
        mp, my = self.sp / n, self.sy / n
        return mp, np.maximum(self.spp / n - mp * mp, 0.0), my, np.maximum(self.syy / n - my * my, 0.0)

    def bias_correction(self) -> tuple[np.ndarray, np.ndarray]:
        """(a, b) that make the mean of a * P + b the mean of Y per output: a = 1."""
        mp, _, my, _ = self.stats()
        return np.ones_like(mp), my - mp

    def recalibration(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(a, b, done) that give a * P + b the mean and variance of Y per output (BN recalibration);
        where P is constant (var ~ 0) only the mean is matched and `done` is False."""
        mp, vp, my, vy = self.stats()
        ok = vp > 1e-12 * np.maximum(vy, 1e-30)
        a = np.where(ok, np.sqrt(vy / np.where(ok, vp, 1.0)), 1.0)
        return a, my - a * mp, ok


def affine(w: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The [G, D, C] matrix of a * (X W) + b per output (the last row of W is the intercept)."""
    out = _3d(w) * a[:, None, :]
    out[:, -1, :] += b
    return out


def with_ones(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x, np.ones((*x.shape[:-1], 1), dtype=x.dtype)], axis=-1)


def pick(total: int, cap: int, rng: np.random.Generator) -> np.ndarray:
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
    features: int  # D: rows of each weight matrix, intercept included
    outputs: int  # C: remaining output channels (all groups)
    intercept: bool = True
    level: int = 0
    groups: int = 1  # G: independent problems (a grouped conv's groups)
    lost_inputs: bool = True  # False: its inputs only moved (a change upstream), none was removed

    train: Optional[Normal] = field(default=None, init=False)  # statistics of most samples
    held: Optional[Normal] = field(default=None, init=False)  # of the held-out samples

    def start(self) -> None:
        """Allocate the statistics (G x D x D each: only for the layers of the level being refit)."""
        self.train = Normal.zeros(self.features, self.outputs // self.groups, self.groups)
        self.held = Normal.zeros(self.features, self.outputs // self.groups, self.groups)

    @property
    def name(self) -> str:
        return self.node.name or self.node.output[0]

    @property
    def kind(self) -> str:
        return self.node.op_type

    @abstractmethod
    def matrix(self, w: Weights) -> np.ndarray:
        """The current weights as a [G, D, C/G] matrix (last row: the intercept, when there is one)."""

    @abstractmethod
    def rows(self, x: np.ndarray, y: np.ndarray, cap: int, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(X rows [G, R, D], Y rows [G, R, C/G], sample index of each row) from one batch, at most `cap` rows."""

    @abstractmethod
    def write(self, w: Weights, m: np.ndarray) -> None:
        """Store a [G, D, C/G] matrix as the layer's weights (and bias)."""

    def _targets(self, y: np.ndarray) -> np.ndarray:
        if self.out_keep is None:
            return y
        if len(self.out_keep) != y.shape[1]:
            raise ValueError(f"the original output of {self.name} has {y.shape[1]} channels, the record "
                             f"{len(self.out_keep)}")
        return y[:, self.out_keep]


@dataclass
class ConvLayer(Layer):
    """Conv with 1 or 2 spatial axes, unrolled by im2col; a grouped conv is one problem per group."""

    kernel: tuple[int, ...] = ()

    @property
    def kind(self) -> str:
        if self.groups == 1:
            return "Conv"
        return "depthwise Conv" if self.features == int(np.prod(self.kernel)) + 1 else f"grouped Conv (group={self.groups})"

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
        g = self.groups
        m = k.reshape(g, k.shape[0] // g, -1).transpose(0, 2, 1)
        b = w.get(self.node.input[2]) if len(self.node.input) > 2 and self.node.input[2] else None
        b = (np.zeros(k.shape[0]) if b is None else b).reshape(g, 1, -1)
        return np.concatenate([m, b], axis=1).astype(np.float64)

    def rows(self, x, y, cap, rng):
        kshape = self.kernel
        strides, dil, pads = self._geometry(x.shape, y.shape, kshape)
        if len(kshape) == 1:  # 1-D as 2-D with a unit axis
            x, y, kshape = x[:, :, None, :], y[:, :, None, :], (1, kshape[0])
            strides, dil, pads = [1] + strides, [1] + dil, [(0, 0)] + pads
        xp = np.pad(x, ((0, 0), (0, 0), *pads))
        n_, c = x.shape[:2]
        oh, ow = y.shape[2:]
        n, i, j = np.unravel_index(pick(n_ * oh * ow, cap, rng), (n_, oh, ow))
        hs = i[:, None] * strides[0] + np.arange(kshape[0]) * dil[0]
        ws = j[:, None] * strides[1] + np.arange(kshape[1]) * dil[1]
        patches = xp[n[:, None, None, None], np.arange(c)[None, :, None, None], hs[:, None, :, None], ws[:, None, None, :]]
        g, r = self.groups, len(n)
        xs = with_ones(patches.reshape(r, g, -1).transpose(1, 0, 2))
        ys = self._targets(y[n, :, i, j]).reshape(r, g, -1).transpose(1, 0, 2)
        return xs, ys, n

    def write(self, w, m):
        k = w.get(self.node.input[1])
        w.set(self.node.input[1], m[:, :-1, :].transpose(0, 2, 1).reshape(k.shape))
        bias = m[:, -1, :].reshape(-1)
        if len(self.node.input) > 2 and self.node.input[2]:
            w.set(self.node.input[2], bias)
        else:
            name = w.add(f"{self.node.output[0]}__reconstructed_bias", bias.astype(k.dtype))
            self.node.input.append(name)


class GemmLayer(Layer):
    """Y = alpha * A B + beta * C with transA = 0; refit as one [K + 1, N] matrix."""

    def _b(self, w: Weights) -> np.ndarray:
        b = w.get(self.node.input[1])
        return in_out(self.node, b)

    def _c(self, w: Weights) -> Optional[np.ndarray]:
        return w.get(self.node.input[2]) if len(self.node.input) > 2 and self.node.input[2] else None

    def matrix(self, w):
        b = self._b(w) * attr(self.node, "alpha", 1.0)
        c = self._c(w)
        bias = np.zeros(b.shape[1]) if c is None else np.broadcast_to(c.reshape(-1), (b.shape[1],)) * attr(self.node, "beta", 1.0)
        return np.concatenate([b, bias[None, :]]).astype(np.float64)[None]

    def rows(self, x, y, cap, rng):
        idx = pick(len(x), cap, rng)
        return with_ones(x[idx])[None], self._targets(y[idx])[None], idx

    def write(self, w, m):
        m = m[0]
        b = m[:-1] / attr(self.node, "alpha", 1.0)
        w.set(self.node.input[1], in_out(self.node, b))
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
        if self.bias is not None:
            m = np.concatenate([m, w.get(self.bias).reshape(1, -1)])
        return m[None]

    def rows(self, x, y, cap, rng):
        k = x.shape[-1]
        per = int(np.prod(x.shape[1:-1])) if x.ndim > 2 else 1
        xr, yr = x.reshape(-1, k), y.reshape(len(x) * per, -1)
        idx = pick(len(xr), cap, rng)
        xs = with_ones(xr[idx]) if self.bias is not None else xr[idx]
        return xs[None], self._targets(yr[idx])[None], idx // per

    def write(self, w, m):
        m = m[0]
        if self.bias is None:
            w.set(self.node.input[1], m)
        else:
            w.set(self.node.input[1], m[:-1])
            w.set(self.bias, m[-1].reshape(w.get(self.bias).shape))
