"""The quantize stage as users call it: plain, accuracy-gated (fallback), or auto (static vs dynamic),
followed by a speed check: the int8 model is never slower than FP32 at batch 1 without the record saying so.

`--mode auto` with validation data tries static int8 (with the fallback search) and dynamic int8,
measures the drop and the batch-1 latency of each against FP32 on this machine, and keeps the fastest
one within the budget that is faster than FP32; ORT leaves that choice to the user. Candidates that
cannot win are skipped up front, with the reason (dynamic int8 on conv-dominated models).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import numpy as np
import onnx

from ..config import QuantConfig
from ..data import Dataset, example_feed
from ..runtime.timing import time_sessions
from ..io import is_big
from ..runtime.session import make_session
from ..passes.base import PassRecord
from .fallback import Budget, Evaluator, OnBest, Progress, fallback_search
from .qdq import check_quantizable, quantize

AUTO_DEFAULT_DROP = 1.0  # points of the metric, when --mode auto gets no --max-drop
CONV_DOMINATED = 0.5  # share of the compute (MACs, else weights) in Conv above which dynamic int8 cannot win
DYNAMIC_CONV_WHY = ("ORT's dynamic int8 runs convs as ConvInteger with a run-time activation quantization "
                    "(measured 0.09x FP32 on real ImageNet CNNs)")
Measure = Callable[[dict], dict]  # {name: model} -> {name: batch-1 latency in ms (see _latencies)}


def budget_of(config: QuantConfig) -> Budget:
    drop = AUTO_DEFAULT_DROP if config.max_drop is None else config.max_drop
    return Budget(drop, config.metric, config.max_drop_relative)


def quantize_model(model: onnx.ModelProto, calibration: Optional[Dataset], validation: Optional[Dataset], config: QuantConfig,
                   on_best: OnBest = None, progress: Progress = None,
                   measure: Optional[Measure] = None, input_layout: tuple[str, ...] = ()) -> tuple[onnx.ModelProto, PassRecord]:
    """Quantize per `config` (QuantConfig); validation data enables the budgeted search and auto mode.
    Then (config.speed_check_seconds > 0) time FP32 against int8 at batch 1: see speed_guard.
    `measure` replaces the latency measurement (tests inject latencies). `input_layout`: the
    --input-layout items, for the random inputs timed when there is no data."""
    check_quantizable(model)
    say = progress or (lambda _m: None)
    data = validation if validation is not None else calibration
    big = is_big(model)  # sessions from a 2+ GB proto cannot be made in memory; timing it takes minutes anyway
    check = config.speed_check_seconds > 0 and not big
    if measure is None:  # auto mode times its candidates even with the speed check off
        def measure(models: dict) -> dict:
            return _latencies(models, data if data is not None else _random(model, input_layout),
                              config.speed_check_seconds or 2.0)
    measured = None
    if config.mode == "auto" and validation is not None:
        q, rec, measured = _auto(model, calibration, validation, config, say, on_best, measure)
    elif config.mode == "auto":
        cfg = dataclasses.replace(config, mode="static" if calibration is not None else "dynamic")
        q, rec = _gated(model, calibration, None, cfg, say, on_best)
        rec.stats["auto"] = {"chosen": cfg.mode, "why": "no validation data to compare modes: "
                             + ("static int8 (calibration data given)" if cfg.mode == "static" else
                                "dynamic int8 (no calibration data)")}
    else:
        q, rec = _gated(model, calibration, validation, config, say, on_best)
    if check:
        q, rec = speed_guard(model, q, rec, calibration, validation, config, measure, say, on_best, measured,
                             input_layout)
    elif big and config.speed_check_seconds > 0:
        rec.skip("speed", "model over 2 GB: FP32 vs int8 not timed; compare them with 'onnxcompress bench'")
    if validation is None and calibration is not None and config.quality_check and not big:
        from ..evaluate.quality import against_reference

        say("checking the int8 model's task metric against FP32 on the calibration data")
        quality = against_reference(model, q, calibration, config.task)
        if quality is not None:
            rec.stats["quality"] = quality
            for line in quality["failures"]:
                rec.skip("quality", f"on {quality['samples']} calibration samples: {line}; pass -v VAL (the search "
                                    "keeps the layers that break it in FP32) or check with 'onnxcompress validate'")
    return q, rec


def _random(model: onnx.ModelProto, input_layout: tuple[str, ...] = ()) -> Dataset:
    from ..data import model_layout, random_data

    return random_data(model_layout(model, input_layout), 1)


def _gated(model, calibration, validation, config: QuantConfig, say, on_best):
    if config.mode == "static" and config.max_drop is not None and validation is not None:
        return fallback_search(model, calibration, validation, config, budget_of(config), config.fallback_seconds,
                               config.fallback_layers, on_best, say)
    q, rec = quantize(model, calibration, config)
    if on_best:
        on_best(q, rec)
    return q, rec


LATENCY_PERCENTILE = 25  # of each model's run times: other processes on a loaded machine lengthen runs, never shorten
# them; a median there moves with the load (under load 8 on 2 cores, ppocr_cls FP32: median 6.8 ms, p10 2.5 ms; a
# median-based check once read 1.00x, no warning, for an int8 model whose p10 of 300 interleaved runs read 0.85x)


def _latencies(models: dict[str, onnx.ModelProto], data: Dataset, seconds: float,
               clear: float = 0.15) -> dict[str, float]:
    """Batch-1 latency (ms, the LATENCY_PERCENTILE of the runs), one thread, sessions timed in turn (fair on a
    noisy machine), in slices of ~0.5 s: timing stops early once two slices in a row, each on its own runs, order
    the models the same way with every two differing by more than `clear` (a 2x or 0.5x result needs no more rounds),
    else at `seconds`. (One slice was not enough under load 9 on 2 cores: it read an int8 ppocr_cls 1.21x faster than
    FP32, no warning, where 200 interleaved runs read it 0.85x.)"""
    feed = example_feed(data, 1, next(iter(models.values())))
    sessions = {k: make_session(m, threads=1, spinning=False) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    spent, warmup, clear_orders = 0.0, 5, []
    while True:
        step = min(0.5, max(seconds - spent, 0.05))
        timed = time_sessions(sessions, {k: feed for k in sessions}, warmup=warmup, time_budget=step)
        for k, t in timed.items():
            times[k] += t.times_ms
        spent, warmup = spent + step, 0
        now = {k: float(np.percentile(t.times_ms, LATENCY_PERCENTILE)) for k, t in timed.items()}
        vals = list(now.values())
        apart = all(abs(a / b - 1.0) > clear for i, a in enumerate(vals) for b in vals[i + 1:])
        clear_orders.append(tuple(sorted(now, key=now.get)) if apart else None)
        settled = len(clear_orders) >= 2 and clear_orders[-1] is not None and clear_orders[-1] == clear_orders[-2]
        if spent >= seconds or settled:
            return {k: float(np.percentile(v, LATENCY_PERCENTILE)) for k, v in times.items()}


def conv_share(model: onnx.ModelProto) -> tuple[float, str]:
    """Share of the compute in Conv/ConvTranspose: of the MACs when shapes give them, else of the weights."""
    from ..stats import node_macs

    ops = {n.name or n.output[0]: n.op_type for n in model.graph.node}
    try:
        macs, unknown = node_macs(model)
    except Exception:  # noqa: BLE001 - shape inference on third-party graphs; the weight share below still answers
        macs, unknown = {}, ["?"]
    if macs and not unknown:
        total = sum(macs.values())
        conv = sum(v for k, v in macs.items() if ops.get(k) in ("Conv", "ConvTranspose"))
        return (conv / total if total else 0.0), "MACs"
    inits = {i.name: int(np.prod(i.dims)) for i in model.graph.initializer}
    weights = {"conv": 0, "all": 0}
    for n in model.graph.node:
        if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            w = sum(inits.get(i, 0) for i in n.input[1:2])
            weights["all"] += w
            weights["conv"] += w if n.op_type in ("Conv", "ConvTranspose") else 0
    return (weights["conv"] / weights["all"] if weights["all"] else 0.0), "weights"


def decide(rows: list[dict], limit: float, metric: str) -> tuple[dict, str]:
    """Pick among measured candidates (rows: mode, drop, latency_ms, speedup): the fastest one within the
    budget that is faster than FP32 at batch 1; a slower one has failed. Failing that, the fastest within
    the budget (the speed guard then tries to fix it), else the most accurate."""
    for r in rows:
        r["within_budget"] = r["drop"] <= limit
        r["faster"] = r["speedup"] > 1.0
        r["fits"] = r["within_budget"] and r["faster"]
    fitting = [r for r in rows if r["fits"]]
    tail = lambda chosen: "".join(f"; {r['mode']}: drop {r['drop']:.3f}, {r['speedup']:.2f}x"  # noqa: E731
                                  for r in rows if r is not chosen)
    if fitting:
        c = min(fitting, key=lambda r: r["latency_ms"])
        return c, (f"{c['mode']}: fastest within the budget ({metric} drop {c['drop']:.3f} <= {limit:.3f}, "
                   f"{c['speedup']:.2f}x FP32 at batch 1){tail(c)}")
    within = [r for r in rows if r["within_budget"]]
    if within:
        c = min(within, key=lambda r: r["latency_ms"])
        return c, (f"no mode within the budget is faster than FP32 at batch 1; kept {c['mode']}, the fastest "
                   f"within it ({metric} drop {c['drop']:.3f}, {c['speedup']:.2f}x){tail(c)}")
    c = min(rows, key=lambda r: r["drop"])
    return c, (f"no mode fits the budget of {limit:.3f} {metric} points; kept {c['mode']}, the most accurate "
               f"(drop {c['drop']:.3f}, {c['speedup']:.2f}x){tail(c)}")


def _auto(model, calibration, validation, config: QuantConfig, say, on_best, measure):
    budget = budget_of(config)
    ev = Evaluator(model, validation, budget, samples=config.fallback_samples)
    found: dict[str, tuple[onnx.ModelProto, PassRecord, float]] = {}
    skipped: list[dict] = []
    share, basis = conv_share(model)
    if calibration is not None:
        say("auto: static int8")
        q, rec = fallback_search(model, calibration, validation, dataclasses.replace(config, mode="static"), budget,
                                 config.fallback_seconds, config.fallback_layers, None, say)
        found["static"] = (q, rec, rec.stats["fallback"]["drop"])
    if share > CONV_DOMINATED and found:
        why = f"conv-dominated model ({100 * share:.0f}% of the {basis} in Conv): {DYNAMIC_CONV_WHY}"
        skipped.append({"mode": "dynamic", "why": why})
        say(f"auto: dynamic int8 skipped: {why}")
    else:
        say("auto: dynamic int8")
        q, rec = quantize(model, None, dataclasses.replace(config, mode="dynamic"))
        found["dynamic"] = (q, rec, ev.drop(q))
    lat = measure({"fp32": model, **{k: v[0] for k, v in found.items()}})
    rows = [{"mode": k, "drop": v[2], "latency_ms": lat[k], "speedup": lat["fp32"] / lat[k]} for k, v in found.items()]
    chosen, why = decide(rows, ev.limit, ev.metric)
    q, rec, _ = found[chosen["mode"]]
    rec.stats["mode"] = chosen["mode"]
    rec.stats["auto"] = {"metric": ev.metric, "budget": ev.limit, "candidates": rows, "skipped": skipped,
                         "chosen": chosen["mode"], "why": why, "fp32_latency_ms": lat["fp32"]}
    for s in skipped:
        rec.skip(f"auto: {s['mode']}", s["why"])
    if not chosen["within_budget"]:
        rec.skip("auto", why)
    say(f"auto: {why}")
    if on_best:
        on_best(q, rec)
    return q, rec, {"fp32": lat["fp32"], "int8": lat[chosen["mode"]]}


PER_LAYER_MIN_MS = 0.2  # below this FP32 batch-1 latency, per-layer times are profiler resolution and noise


def slow_candidates(model: onnx.ModelProto, q: onnx.ModelProto, mode: str, data: Dataset,
                    fp32_ms: float = float("inf")) -> list[dict]:
    """Layers of `q` that ORT likely runs slower than FP32 (see audit.slow_layers; the per-layer comparison with
    the FP32 model only when it takes PER_LAYER_MIN_MS or more); in dynamic mode, every conv."""
    if mode == "dynamic":
        if not any(n.op_type == "ConvInteger" for n in q.graph.node):
            return []
        return [{"node": n.name, "op": n.op_type, "kernel": "ConvInteger", "why": DYNAMIC_CONV_WHY}
                for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose") and n.name]
    from .audit import slow_layers

    return slow_layers(q, example_feed(data, 1, model), reference=model if fp32_ms >= PER_LAYER_MIN_MS else None)


MATERIAL_LOSS = 0.01  # of the FP32 model's latency: a layer losing less is not worth the Q/DQ and layout changes
# keeping it FP32 costs (ppocr_v6_tiny_det: 83 candidates, all kept FP32 was not faster; 4 convs at full resolution
# (3- and 4-channel inputs, a depthwise 5x5) lost 8 ms of its 85)


def _loss_us(r: dict) -> float:
    """What a slow layer costs over FP32 per run: int8 kernel + Q/DQ - FP32 layer; for an island or Q/DQ-bound layer,
    its Q/DQ."""
    return r["kernel_us"] + r["qdq_us"] - r["fp32_us"] if "fp32_us" in r else r.get("qdq_us", 0.0)


def candidate_sets(slow: list[dict], fp32_ms: Optional[float] = None) -> list[list[dict]]:
    """What the speed guard tries in FP32, in turn: with the FP32 latency, first only the layers that lose a material
    share of it (MATERIAL_LOSS), when that is fewer than all; every slow layer; then, when several are slower than
    their FP32 layer, only the worse half of those (each layer kept FP32 between int8 neighbours costs a DQ and a Q,
    and layout changes: many small deficits can cost more than they save; measured on PP-OCR detectors)."""
    sets = [list(slow)]
    vs_fp32 = [r for r in slow if "fp32_us" in r]
    if len(vs_fp32) >= 2:
        worst = sorted(vs_fp32, key=lambda r: -_loss_us(r))[: len(vs_fp32) // 2]
        sets.append([r for r in slow if "fp32_us" not in r] + worst)
    if fp32_ms is not None:
        material = [r for r in slow if _loss_us(r) >= MATERIAL_LOSS * fp32_ms * 1000.0]
        if material and all(len(material) < len(s) for s in sets):
            sets.insert(0, material)
    return sets


def speed_guard(model, q, rec, calibration, validation, config, measure: Measure, say, on_best, measured=None,
                input_layout: tuple[str, ...] = ()):
    """Time FP32 against int8 at batch 1. When int8 is slower, keep the layers ORT runs slower in int8
    in FP32, re-quantize and re-measure (kept only if faster, and within the budget when there is one).
    A model still slower than FP32 is recorded (stats.speed.slower, a skip with the ratio)."""
    data = validation if validation is not None else calibration
    lat = measured or measure({"fp32": model, "int8": q})
    speed = {"fp32_ms": lat["fp32"], "int8_ms": lat["int8"], "speedup": lat["fp32"] / lat["int8"],
             "kept_fp32_for_speed": [], "slow_layers": []}
    if speed["speedup"] < 1.0:
        mode = rec.stats.get("mode", config.mode)
        say(f"speed: int8 is {speed['speedup']:.2f}x FP32 at batch 1; looking for layers that are slower in int8")
        slow = slow_candidates(model, q, mode, data if data is not None else _random(model, input_layout), lat["fp32"])
        speed["slow_layers"] = slow
        for layers in candidate_sets(slow, lat["fp32"]) if slow else []:
            retry = _requantize(model, calibration, validation, rec, config, list(layers))
            if retry is None:
                break
            q2, rec2, drop_ok, fp32_layers = retry
            lat2 = measure({"fp32": model, "int8": q, "fewer": q2})
            gain = lat2["fewer"] < 0.97 * lat2["int8"]  # a material gain, not timing noise
            speed["retry"] = {"fp32_ms": lat2["fp32"], "int8_ms": lat2["int8"], "fewer_int8_ms": lat2["fewer"],
                              "kept": gain and drop_ok,
                              "why": "faster" if gain and drop_ok else ("over the accuracy budget" if gain else "not faster")}
            say(f"speed: {len(fp32_layers)} layers in FP32: {lat2['fp32'] / lat2['fewer']:.2f}x FP32 "
                f"({'kept' if gain and drop_ok else 'undone: ' + speed['retry']['why']})")
            if gain and drop_ok:
                for key in ("fallback", "auto"):
                    if key in rec.stats:
                        rec2.stats[key] = rec.stats[key]
                q, rec = q2, rec2
                speed.update(fp32_ms=lat2["fp32"], int8_ms=lat2["fewer"], speedup=lat2["fp32"] / lat2["fewer"],
                             kept_fp32_for_speed=[r["node"] for r in fp32_layers], slow_layers=fp32_layers)
                for r in fp32_layers:
                    rec.skip(r["node"], f"kept FP32 for speed: {r['why']}")
                if on_best:
                    on_best(q, rec)
                # the kept model won a noisy comparison: its figure is biased up (measured: a retry read 1.00x and
                # kept, no warning, for a model at 0.80x in 300 interleaved runs); time it once more for the verdict
                lat3 = measure({"fp32": model, "final": q})
                speed.update(fp32_ms=lat3["fp32"], int8_ms=lat3["final"], speedup=lat3["fp32"] / lat3["final"],
                             confirmed=True)
                break
            speed["fp32_ms"], speed["int8_ms"] = lat2["fp32"], lat2["int8"]
            speed["speedup"] = lat2["fp32"] / lat2["int8"]
    speed["slower"] = speed["speedup"] < 1.0
    if speed["slower"]:
        speed["warning"] = (f"the int8 model is slower than FP32 at batch 1: {speed['speedup']:.2f}x "
                            f"({speed['int8_ms']:.3f} ms vs {speed['fp32_ms']:.3f} ms, one thread)"
                            + _slow_summary(model, speed["slow_layers"], bool(speed["kept_fp32_for_speed"])))
        rec.skip("speed", speed["warning"] + ("; slower layers: " + ", ".join(r["node"] for r in speed["slow_layers"])
                                              if speed["slow_layers"] else ""))
    rec.stats["speed"] = speed
    return q, rec


def _slow_summary(model: onnx.ModelProto, slow: list[dict], kept: bool) -> str:
    """'; N layers slower in int8 than in FP32 here (5 depthwise Conv, 2 Mul...), <what the guard did>': the warning's
    reason, by kind of layer (a depthwise conv is one whose groups each hold one input channel: ORT's int8 depthwise
    kernel measured 1.5-4x slower than its FP32 one on an AVX2 CPU at every channel count, multiples of 16 included)."""
    if not slow:
        return ""
    inits = {i.name: i for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node if n.name}

    def kind(r: dict) -> str:
        n = nodes.get(r["node"])
        if "island" in r.get("why", ""):
            return "float island"
        if n is not None and n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in inits:
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            cin = inits[n.input[1]].dims[1] if len(inits[n.input[1]].dims) > 1 else 0
            if group > 1 and cin == 1:
                return "depthwise Conv"
            if group == 1 and cin <= 4:
                return f"Conv on {cin} input channels"
        return n.op_type if n is not None else r.get("op", "?")

    from collections import Counter

    kinds = ", ".join(f"{c} {k}" for k, c in Counter(kind(r) for r in slow).most_common())
    done = "kept FP32" if kept else "keeping them FP32 was not faster"
    return f"; {len(slow)} layers slower in int8 than in FP32 here ({kinds}): {done}"


def _requantize(model, calibration, validation, rec, config, slow: list[dict]):
    """The same quantization with the `slow` layers kept in FP32 too; (model, record, within the budget,
    the layers kept FP32).
    A layer kept FP32 can leave its int8 producer without an int8 reader (DQ -> Conv -> float: a new
    float island): those are added to `slow` (with the reason) and the model re-quantized, a few rounds."""
    from .audit import audit

    mode = rec.stats.get("mode", config.mode)
    if mode == "static" and calibration is None:
        return None
    fb = rec.stats.get("fallback", {})
    for _ in range(4):
        names = tuple(r["node"] for r in slow)
        cfg = dataclasses.replace(config, mode=mode, max_drop=None,
                                  exclude=tuple(dict.fromkeys(tuple(config.exclude) + tuple(fb.get("excluded", ())) + names)),
                                  bias_correction=fb.get("bias_correction", config.bias_correction))
        q2, rec2 = quantize(model, calibration if mode == "static" else None, cfg)
        islands = [r for r in audit(q2).get("float_islands", []) if r["node"] not in names]
        if mode != "static" or not islands:
            break
        slow += [{"node": r["node"], "op": r["op"], "kernel": r["kernel"],
                  "why": "float island once its reader was kept FP32"} for r in islands]
    ok = True
    budget = fb.get("budget", rec.stats.get("auto", {}).get("budget"))
    if budget is not None and validation is not None:
        drop = Evaluator(model, validation, budget_of(config)).drop(q2)
        ok = drop <= budget
    return q2, rec2, ok, slow
