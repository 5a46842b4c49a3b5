"""Pruning to a target (fraction of MACs or parameters kept) with the least predicted damage.

A `Planner` analyses the model once, scores channels (the criterion orders channels within a layer), prices
each channel group (the MACs and parameters its removal saves: its producer rows and its consumer
columns, on the data's shapes) and, for "sensitivity" allocation, measures each layer's damage curve
(sensitivity.py). `allocate` then spends the reduction greedily: the next step is the one with the least
predicted damage per MAC saved, over the measured curves (the lower convex hull of each curve, so one step
may take several channel blocks at once). A layer whose channels matter has a steep curve and is left
alone; stems and narrow bottlenecks are protected by their measurements, and `max_layer_fraction` is a
floor no layer goes below. "global" allocation is one normalized-score threshold (the --ratio rule),
its ratio found by bisection on the priced savings. Either way the removal's real count is checked and the
request raised by the shortfall (blocked or refused channels) up to a few times.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import onnx

from ...config import PruneConfig
from ...errors import InputError
from ...io import is_big
from ...stats import count_params, node_macs, shapes_or_none
from .graph import ChannelContext
from .remove import MacCounter, Removal, analyze, own_macs
from .sensitivity import Curve, MaskedModel, activation_scores, calibration_runs, measure
from .structured import Progress, layers_of, remove_selected, score_groups, select

CORRECTIONS = 4  # removals tried to reach the target when blocked channels make the priced savings fall short


def root_costs(ctx: ChannelContext, shapes: Any) -> tuple[dict[int, float], dict[int, float]]:
    """Root -> (MACs per sample, parameters) its removal saves: its rows in every producer and its columns
    in every consumer (Conv/Gemm/MatMul inputs), from node MACs on `shapes` (None: parameters only)."""
    per_node = node_macs(ctx.index.model, shapes)[0] if shapes is not None else {}
    macs: dict[int, float] = {}
    params: dict[int, float] = {}

    def add(node: onnx.NodeProto, ids: np.ndarray, weight: Optional[str]) -> None:
        n = max(len(ids), 1)
        m = per_node.get(node.name or node.output[0], 0) / n
        w = ctx.index.const(weight) if weight else None
        p = (w.size / n) if w is not None else 0.0
        for r in ctx.roots(ids).tolist():
            macs[r] = macs.get(r, 0.0) + m
            params[r] = params.get(r, 0.0) + p

    for node, wname, ids in ctx.producers:
        add(node, ids, wname)
        for r in ctx.roots(ids).tolist():
            params[r] += 1.0  # its bias (or the BN shift folded into one)
    for read in ctx.reads:  # a plain conv is both: rows via its output channels, columns via its input ones
        add(read.node, ctx.tensors[read.tensor].ids, read.node.input[1] if len(read.node.input) > 1 else None)
    return macs, params


def _options(width: int, free: int, align: int, min_channels: int, max_fraction: float, cap: int,
             start: int = 0, floor: int = 0) -> np.ndarray:
    """Channel counts a layer may lose (from `start`, already lost): its kept width a multiple of `align` (or all
    of it), at least `min_channels` and (1 - max_fraction) of it, at most its free channels and `cap` (last
    measured count)."""
    keep_min = max(min_channels, floor, math.ceil(width * (1 - max_fraction) - 1e-9))
    ks = [start] + [k for k in range(start + 1, min(free, cap) + 1)
                if width - k >= keep_min and (align <= 1 or (width - k) % align == 0)]
    return np.array(ks, dtype=np.int64)


def allocate(layers: dict[str, list[int]], widths: dict[str, int], curves: dict[str, Curve], cost: dict[int, float],
             need: float, align: int = 8, min_channels: int = 8, max_fraction: float = 0.75,
             start: Optional[dict[str, int]] = None,
             floors: Optional[dict[str, int]] = None) -> tuple[dict[str, int], float, float]:
    """Channels to prune per layer (weakest first, `layers[key]` is ordered) saving at least `need` (in the
    unit of `cost`) with the least summed predicted damage, greedily over the lower hull of each curve.
    Returns (key -> count, saved, predicted damage); saved < need when the floors stop it first. `start`:
    channels each layer has already lost (a second round; saved and damage count from there). `floors`: the
    smallest width a layer may keep (iterative.py: max_fraction of the ORIGINAL width, over all steps)."""
    floors = floors or {}
    start = start or {}
    opts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for key, roots in layers.items():
        curve = curves.get(key)
        if curve is None or not roots:
            continue
        ks = _options(widths[key], len(roots), align, min_channels, max_fraction, max(curve.counts), start.get(key, 0),
                      floors.get(key, 0))
        saving = np.concatenate([[0.0], np.cumsum([cost.get(r, 0.0) for r in roots])])[ks]
        opts[key] = (ks, saving, np.array([curve.at(int(k)) for k in ks]))
    state = {key: 0 for key in opts}  # index into the options
    saved, damage = 0.0, 0.0
    while saved < need - 1e-9:
        best: Optional[tuple[float, float, float, str, int]] = None
        for key, (ks, s, d) in opts.items():
            i = state[key]
            if i + 1 >= len(ks):
                continue
            ds, dd = s[i + 1:] - s[i], d[i + 1:] - d[i]
            reach = np.nonzero(ds >= need - saved - 1e-9)[0]
            stop = int(reach[0]) + 1 if len(reach) else len(ds)  # no need to look past the step that suffices
            ds, dd = ds[:stop], dd[:stop]
            ok = ds > 0
            if not ok.any():
                continue
            ratio = np.where(ok, np.maximum(dd, 0) / np.where(ok, ds, 1), np.inf)
            j = int(np.argmin(ratio))
            cand = (float(ratio[j]), float(dd[j]), -float(ds[j]), key, i + 1 + j)
            if best is None or cand[:3] < best[:3]:
                best = cand
        if best is None:
            break
        _, dd, neg_ds, key, j = best
        state[key] = j
        saved += -neg_ds
        damage += dd
    counts = dict(start) | {key: int(opts[key][0][i]) for key, i in state.items()}
    return {k: v for k, v in counts.items() if v}, saved, damage


@dataclass
class Planner:
    """The model analysed, scored, priced and (sensitivity allocation) measured once; `removal(target)`
    prunes it to a target, as often as a search asks, reusing all of that."""

    model: onnx.ModelProto
    config: PruneConfig
    calibration: Any = None
    macs: MacCounter = own_macs
    feed: Any = None
    input_shapes: Any = None
    progress: Progress = None
    ctx: ChannelContext = field(init=False)
    curves: dict[str, Curve] = field(init=False, default_factory=dict)
    floors: dict[str, int] = field(default_factory=dict)  # layer -> smallest width kept (iterative.py)

    def __post_init__(self) -> None:
        say = self.progress or (lambda done, total, what: None)
        cfg = self.config
        self.unit = "params" if cfg.target_params is not None else "macs"
        m = onnx.ModelProto()
        m.CopyFrom(self.model)
        say(0, 1, f"analysing channel groups of {len(m.graph.node)} nodes")
        self.ctx = ctx = analyze(m, exact=False)
        needs_data = cfg.allocation == "sensitivity" or cfg.criterion.startswith("activation")
        if needs_data and is_big(m):
            raise InputError("sensitivity allocation and activation scores run the model in memory, which ONNX Runtime "
                             "cannot for models over 2 GB; use --allocation global with a weight --score")
        self.runs = calibration_runs(self.calibration, m, cfg.sensitivity_samples) if needs_data else []
        if cfg.allocation == "sensitivity" and not self.runs:
            raise InputError("sensitivity allocation measures each layer's damage on calibration data; pass -c DATA "
                             "(or --allocation global)")
        self.activation = activation_scores(ctx, self.runs, cfg.criterion) if cfg.criterion.startswith("activation") else None
        score, producers = score_groups(ctx, cfg.criterion, self.activation)
        blocked = {ctx.find(i) for i in ctx.blocked}
        self.layers: dict[str, list[int]] = {}
        self.widths: dict[str, int] = {}
        for key, roots in layers_of(producers).items():
            name = ",".join(sorted(key))
            self.layers[name] = sorted((r for r in roots if r not in blocked), key=lambda r: score[r])
            self.widths[name] = len(roots)
        shapes = shapes_or_none(ctx.index.model, self.feed, self.input_shapes)[0] if self.unit == "macs" else None
        self.cost_macs, self.cost_params = root_costs(ctx, shapes)
        self.before = count_params(self.model) if self.unit == "params" else self.macs(self.model)
        if self.before is None:
            raise InputError("--target-macs needs the model's MACs, which depend on its input size; pass -c DATA or "
                             "--input-shape NAME=DIMS")
        self.masked: Optional[MaskedModel] = None
        self._round: Optional[tuple] = None
        if cfg.allocation == "sensitivity":
            self.masked = MaskedModel(ctx, self.runs)
            prunable = {k: v for k, v in self.layers.items() if v}
            self.curves = measure(self.masked, prunable, self.widths, cfg.sensitivity_fractions, cfg.damage, say)

    @property
    def cost(self) -> dict[int, float]:
        return self.cost_params if self.unit == "params" else self.cost_macs

    def choose(self, need: float) -> tuple[set[int], dict[str, dict], float]:
        """Roots saving about `need` (priced), the per-layer summary, and the predicted damage (NaN: global)."""
        cfg = self.config
        if cfg.allocation == "sensitivity" and cfg.sensitivity_rounds > 1:
            counts, predicted = self._two_rounds(need)
        elif cfg.allocation == "sensitivity":
            counts, _saved, predicted = allocate(self.layers, self.widths, self.curves, self.cost, need, cfg.align,
                                                 cfg.min_channels, cfg.max_layer_fraction, floors=self.floors)
        else:
            counts, predicted = self._global(need), float("nan")
        chosen = {r for key, k in counts.items() for r in self.layers[key][:k]}
        summary = {key: {"width_before": w, "width_after": w - counts.get(key, 0), "blocked": w - len(self.layers[key])}
                   | ({"damage_curve": self.curves[key].to_dict()} if key in self.curves else {})
                   for key, w in self.widths.items()}
        return chosen, summary, predicted

    def _two_rounds(self, need: float) -> tuple[dict[str, int], float]:
        """Damage is not additive (pruning many layers a little costs more than their curves sum to): half the
        reduction is allocated on the curves, those channels zeroed, every layer's curve measured again on
        top of them, and the rest allocated on the new curves. The second measurement is made once per
        removal (the corrections of Planner.removal reuse it)."""
        cfg = self.config
        assert self.masked is not None
        if self._round is None:
            first, saved, predicted = allocate(self.layers, self.widths, self.curves, self.cost, need / 2, cfg.align,
                                               cfg.min_channels, cfg.max_layer_fraction, floors=self.floors)
            base = {r for key, k in first.items() for r in self.layers[key][:k]}
            d0 = self.masked.damage(base, cfg.damage)
            curves: dict[str, Curve] = {}
            todo = [key for key, roots in self.layers.items()
                    if min(len(roots), cfg.max_layer_fraction * self.widths[key]) > first.get(key, 0)]
            say = self.progress or (lambda done, total, what: None)
            for i, key in enumerate(todo):
                roots, st = self.layers[key], first.get(key, 0)
                top = min(len(roots), int(cfg.max_layer_fraction * self.widths[key] + 1e-9))
                ks = sorted({min(top, st + int(round(f * self.widths[key]))) for f in cfg.sensitivity_fractions} - {st})
                if not ks:
                    continue
                say(i, len(todo), f"sensitivity, round 2: {key[:60]}")
                dmg = [self.masked.damage(base | set(roots[:k]), cfg.damage) - d0 for k in ks]
                curves[key] = Curve(self.widths[key], ((st,) if st else ()) + tuple(ks), ((0.0,) if st else ()) + tuple(dmg))
            self._round = (first, saved, d0, curves)
        first, saved, d0, curves = self._round
        counts, _saved, predicted = allocate(self.layers, self.widths, curves, self.cost, max(need - saved, 0.0), cfg.align,
                                             cfg.min_channels, cfg.max_layer_fraction, start=first, floors=self.floors)
        return counts, d0 + predicted

    def _global(self, need: float) -> dict[str, int]:
        cfg = self.config
        lo, hi = 0.0, 0.999
        best: dict[str, int] = {}
        for _ in range(24):  # bisection on the ratio whose threshold saves `need`
            mid = (lo + hi) / 2
            chosen, _ = select(self.ctx, mid, cfg.criterion, "global", cfg.align, cfg.min_channels, self.activation)
            if sum(self.cost.get(r, 0.0) for r in chosen) >= need:
                hi, best = mid, self._counts(chosen)
            else:
                lo = mid
        return best or self._counts(select(self.ctx, hi, cfg.criterion, "global", cfg.align, cfg.min_channels,
                                           self.activation)[0])

    def _counts(self, chosen: set[int]) -> dict[str, int]:
        return {key: sum(r in chosen for r in roots) for key, roots in self.layers.items()}

    def removal(self, target: float, progress: Progress = None) -> Removal:
        """Prune to keep `target` of the MACs (or parameters), measured on the result; the request is raised
        by the shortfall when blocked or refused channels keep it above the target."""
        need = (1 - target) * self.before
        self._round = None  # the second round's measurement is made for this target
        result: Optional[Removal] = None
        for attempt in range(CORRECTIONS):
            chosen, summary, predicted = self.choose(need)
            stats = {"allocation": self.config.allocation, "criterion": self.config.criterion, "target": target,
                     "target_of": self.unit, "predicted_damage": predicted, "damage_kind": self.config.damage}
            if self.masked is not None:
                stats["measured_damage"] = self.masked.damage(chosen, self.config.damage)

            def pick(ctx: ChannelContext, chosen=chosen, summary=summary, stats=stats):
                return {ctx.find(r) for r in chosen}, summary, stats

            result = remove_selected(self.model, pick, self.macs, progress or self.progress,
                                     f"allocating to {target:.2f}x {self.unit} ({self.config.allocation})",
                                     self.config.align)
            s = result.record.stats
            after = s.get("params_after") if self.unit == "params" else s.get("macs_after")
            if after is None or after <= target * self.before * (1 + 1e-9) or not chosen:
                break
            more, grown = after - target * self.before, need
            for i in range(16):  # raise the request by the shortfall (doubling) until the choice changes
                grown += more * 2 ** i
                if grown >= self.before or self.choose(grown)[0] != chosen:
                    break
            if attempt == CORRECTIONS - 1 or self.choose(grown)[0] == chosen:
                break
            need = grown
        assert result is not None
        s = result.record.stats
        after = s.get("params_after") if self.unit == "params" else s.get("macs_after")
        s["reached"] = None if after is None else after / max(self.before, 1)
        if s["reached"] is not None and s["reached"] > target + 0.005:  # half a percent: a rounding, not a shortfall
            result.record.skip("target", f"kept {s['reached']:.3f}x {self.unit}, above the target {target:.3f}x: "
                               "the remaining channels are blocked or at their layer's floor")
        return result


def targeted_removal(model: onnx.ModelProto, config: PruneConfig, calibration: Any = None, macs: MacCounter = own_macs,
                     feed: Any = None, input_shapes: Any = None, progress: Progress = None,
                     on_plan: Optional[Callable[[Planner], None]] = None) -> Removal:
    """Prune `model` to config.target_macs / target_params (one Planner, one removal)."""
    target = config.target_params if config.target_params is not None else config.target_macs
    planner = Planner(model, config, calibration, macs, feed, input_shapes, progress)
    if on_plan is not None:
        on_plan(planner)
    return planner.removal(target)


def latency_removal(planner: Planner, target: float, feed: Any, steps: int = 5, progress: Progress = None,
                    runs: int = 30) -> Removal:
    """Prune to a measured latency: the largest MAC fraction whose batch-1, one-thread median latency,
    timed interleaved with the input model, is at most `target` of the input's; bisection on the MAC
    target (Planner.removal), starting at `target` itself. Without a fitting candidate, the fastest one
    tried, with a warning skip. Timing on a busy machine is noisy: the record keeps every measurement."""
    from ...evaluate.bench import time_sessions
    from ...runtime.session import make_session

    say = progress or (lambda done, total, what: None)
    if feed is None:
        raise InputError("--target-latency times the model on one sample of the data; pass -c DATA")
    run = dict(feed)
    ref = make_session(planner.model, threads=1, spinning=False)
    tried: list[tuple[float, float]] = []
    best: Optional[tuple[float, Removal]] = None
    fastest: Optional[tuple[float, float, Removal]] = None
    ok, fail = 0.0, 1.0  # MAC fractions known to fit / not to fit (1.0: the input model itself)
    t = target
    for i in range(steps + 1):
        say(i, steps + 1, f"latency: trying {t:.3f}x MACs")
        r = planner.removal(t)
        times = time_sessions({"ref": ref, "cand": make_session(r.model, threads=1, spinning=False)},
                              {"ref": run, "cand": run}, warmup=3, runs=runs)
        ratio = times["cand"].summary(1)["median_ms"] / max(times["ref"].summary(1)["median_ms"], 1e-9)
        tried.append((t, ratio))
        if fastest is None or ratio < fastest[1]:
            fastest = (t, ratio, r)
        if ratio <= target:
            ok = max(ok, t)
            if best is None or t > best[0]:
                best = (t, r)
        else:
            fail = min(fail, t)
        if ok > 0 and fail - ok < 0.02:
            break
        t = (ok + fail) / 2 if ok > 0 else fail * 0.75  # nothing fits yet: prune more
    chosen = best[1] if best is not None else fastest[2]
    chosen.record.stats["latency"] = {"target": target, "tried": [{"macs": a, "latency_ratio": b} for a, b in tried],
                                      "reached": next(b for a, b in tried if a == (best or fastest)[0])}
    if best is None:
        chosen.record.skip("target", f"no pruned model tried reached {target:.2f}x the input's latency; the fastest, "
                           f"{fastest[1]:.2f}x at {fastest[0]:.3f}x MACs, was kept")
    return chosen
