"""Accuracy-gated fallback: keep the most sensitive layers in FP32, greedily, until the drop fits.

ORT's quantizer has no accuracy loop (Olive/NNCF have one, but they re-calibrate per trial and give
no per-layer account). Here: prepare and calibrate once, rank layers by the quantization noise each
one adds (per-layer SQNR on instrumented copies), then try excluding them one by one, keep an
exclusion only when it lowers the measured drop, stop when the drop fits the budget, the time budget
is spent or the layer cap is reached. The best model so far is handed to `on_best` at every
improvement, so an interrupted or timed-out search still leaves a usable file.
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import onnx

from ..config import QuantConfig, TaskConfig
from ..data import Dataset
from ..errors import InputError
from ..progress import Say
from ..evaluate.tasks import TaskRun, points
from ..runtime.budget import run_batch
from ..runtime.session import iter_outputs, make_session
from ..passes.base import PassRecord
from .qdq import Prepared, prepare, quantize_prepared

CANDIDATE_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Concat", "AveragePool",
                 "GlobalAveragePool", "MaxPool", "Softmax", "LayerNormalization", "Gather", "Where", "Sigmoid",
                 "Resize", "Pad", "Split", "Transpose", "Reshape", "Squeeze", "Unsqueeze"}
OnBest = Optional[Callable[[onnx.ModelProto, PassRecord], None]]
Progress = Optional[Say]  # the say half of progress.Progress


@dataclass
class Budget:
    """The accuracy budget: `max_drop` points of `metric` (relative: percent of the reference value).

    metric "auto" = the task's own metric (evaluate.tasks: top-1 with labels or agreement for
    classifiers, F1 against the FP32 detections for detectors, mIoU / IoU for dense maps, character
    agreement for CTC, rank correlation for embeddings, cosine otherwise); "top1"/"agreement" are
    classification metrics; "cosine" is the mean cosine of the task's output (x100: points)."""

    max_drop: float
    metric: str = "auto"  # "auto" | "top1" | "agreement" | "cosine"
    relative: bool = False
    task: TaskConfig = field(default_factory=TaskConfig)

    def resolve(self, labels: bool) -> str:
        if self.metric == "auto":
            return "top1" if labels else "agreement"
        if self.metric == "top1" and not labels:
            raise InputError("--metric top1 needs labels in the validation data; add a 'labels' array "
                             "or use --metric agreement / cosine")
        return self.metric


class Evaluator:
    """Reference outputs computed once; `drop(model)` runs a candidate with ORT's optimizations on
    (the int8 kernels it will really use) and returns the drop of the task metric, in points. The same
    task metrics as `validate` (evaluate.tasks), so the search optimizes what the gates check."""

    def __init__(self, reference: onnx.ModelProto, data: Dataset, budget: Budget, samples: int = QuantConfig.fallback_samples,
                 batch_size: int = 64, task: Optional[TaskConfig] = None):
        self.data = data.take(min(samples, len(data)))
        self.batch_size = run_batch(reference, self.data, batch_size)  # within the data's memory budget
        self.task_config = task or budget.task
        self.why = ""
        labels = self.data.labels is not None
        sess = make_session(reference)
        self.refs = list(iter_outputs(sess, self.data, self.batch_size))
        probe = TaskRun(self.task_config)
        self.task = probe.start(self.refs[0]).name if self.refs else "generic"
        if budget.metric in ("top1", "agreement") and self.task != "classification":
            raise InputError(f"--metric {budget.metric} measures classifiers, but the model looks like a {self.task} "
                             f"model ({probe.metric.why}); use --metric auto (its {self.task} metric) or set the task")
        self.metric = budget.resolve(labels) if self.task == "classification" or budget.metric == "cosine" \
            else probe.metric.primary(labels)
        self.reference_value = self._value(self.refs)
        if self.reference_value is None:  # e.g. a detector that finds nothing on this data: fall back to cosine
            self.why = f"{self.metric} is not measurable on this data ({self._missing}); the search uses cosine"
            self.metric = "cosine"
            self.reference_value = self._value(self.refs)
        limit = budget.max_drop * self.reference_value / 100.0 if budget.relative else budget.max_drop
        self.limit = float(limit)

    def _value(self, outs: list[dict]) -> Optional[float]:
        """The metric of `outs` against the reference outputs, in points (None: not measurable)."""
        run = TaskRun(self.task_config if self.metric != "cosine" else TaskConfig(name="generic", output=self.task_config.output))
        seen = 0
        for r, c in zip(self.refs, outs):
            n = len(next(iter(r.values())))
            run.update(r, c, None if self.data.labels is None else self.data.labels[seen:seen + n])
            seen += n
        res = run.result()
        if self.metric not in res["metrics"]:
            self._missing = res["unavailable"].get(self.metric, "not measured")
            return None
        return points(self.metric, res["metrics"][self.metric])

    def drop(self, model: onnx.ModelProto) -> float:
        sess = make_session(model)
        value = self._value(list(iter_outputs(sess, self.data, self.batch_size)))
        return float(self.reference_value - value) if value is not None else float("inf")


def node_tensors(ref: onnx.ModelProto, qmodel: onnx.ModelProto) -> dict[str, tuple[str, list[str]]]:
    """Candidate node name -> (its output tensor, its float input tensors), named as in `ref`, read
    through the quantized graph: ORT folds a Relu/Clip into the producer and renames its output to
    the activation's, so we follow the node names of the quantized graph, not ref's tensor names."""
    ref_tensors = {o for n in ref.graph.node for o in n.output} | {i.name for i in ref.graph.input}
    prod = {o: n for n in qmodel.graph.node for o in n.output}

    def float_name(t: str) -> str:
        dq = prod.get(t)
        if dq is not None and dq.op_type == "DequantizeLinear":
            q = prod.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                return q.input[0]
        return t

    out = {}
    for n in qmodel.graph.node:
        if n.op_type not in CANDIDATE_OPS or not n.name or not n.output:
            continue
        o = n.output[0]
        if o not in ref_tensors:
            cons = [c for c in qmodel.graph.node if o in c.input and c.op_type == "QuantizeLinear"]
            if not cons or not o.endswith("_QuantizeLinear_Input"):
                continue
            o = o[: -len("_QuantizeLinear_Input")]  # graph outputs: ORT renames the producer's tensor
            if o not in ref_tensors:
                continue
        out[n.name] = (o, [float_name(i) for i in n.input if float_name(i) in ref_tensors])
    return out


def sensitivity(prep: Prepared, qmodel: onnx.ModelProto, data: Dataset, samples: int = 64) -> list[dict]:
    """Quantizable nodes ranked by the noise they add: noise-to-signal of their output minus the worst
    noise-to-signal of their inputs (SQNR alone would blame every layer after the first bad one)."""
    from ..evaluate.layers import layer_sqnr, shared_tensors

    nodes = node_tensors(prep.model, qmodel)
    seen = shared_tensors(prep.model, qmodel)  # tensor -> (quantized view of it in qmodel, op)
    pairs = {}
    for out, ins in nodes.values():
        for t in [out, *ins]:
            if t in seen:
                pairs[t] = seen[t]
            elif t in {i.name for i in prep.model.graph.input}:
                pairs[t] = (t, "input")
    rows = layer_sqnr(prep.model, qmodel, data, samples=samples, pairs=pairs)
    nsr = {r["tensor"]: (10 ** (-r["sqnr_db"] / 10) if np.isfinite(r["sqnr_db"]) else (0.0 if r["sqnr_db"] > 0 else 1.0))
           for r in rows}
    ops = {n.name: n.op_type for n in qmodel.graph.node}
    ranked = []
    for name, (out, ins) in nodes.items():
        if out not in nsr:
            continue
        before = max((nsr.get(i, 0.0) for i in ins), default=0.0)
        ranked.append({"node": name, "op": ops[name], "added_noise": nsr[out] - before,
                       "output_sqnr_db": float(-10 * np.log10(max(nsr[out], 1e-30)))})
    ranked.sort(key=lambda r: -r["added_noise"])
    return [r for r in ranked if r["added_noise"] > 0]


def fallback_search(model: onnx.ModelProto, calibration: Dataset, validation: Dataset, config: QuantConfig, budget: Budget,
                    seconds: float = 180.0, max_layers: int = 16, on_best: OnBest = None,
                    progress: Progress = None) -> tuple[onnx.ModelProto, PassRecord]:
    """Quantize with `config`, then exclude layers greedily until the drop fits `budget`."""
    say = progress or (lambda _msg: None)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="onnxcompress-fb-") as d:
        work = Path(d)
        prep = prepare(model, calibration, config, work)
        if prep.path is not None or prep.mode != "static":
            raise InputError("the accuracy-gated fallback needs static quantization of a model under 2 GB; "
                             "drop --max-drop or use --mode static")
        ev = Evaluator(prep.model, validation, budget, samples=config.fallback_samples, task=config.task)
        best, rec = quantize_prepared(prep, config, work, calibration=calibration)
        best_drop = ev.drop(best)
        steps = [{"excluded": [], "drop": best_drop, "kept": True}]
        say(f"all layers int8: {ev.metric} drop {best_drop:.3f} (budget {ev.limit:.3f})")
        if on_best:
            on_best(best, rec)
        excluded: list[str] = []
        stop = "fits the budget" if best_drop <= ev.limit else ""
        if not stop and not config.bias_correction:
            # first rung: bias correction keeps every layer int8 (no speed cost), try it before FP32 layers
            say("bias correction: measuring each layer's output drift on calibration samples")
            bc = dataclasses.replace(config, bias_correction=True)
            q, qrec = quantize_prepared(prep, bc, work, calibration=calibration)
            drop = ev.drop(q)
            keep = drop < best_drop - 1e-9
            steps.append({"excluded": [], "bias_correction": True, "drop": drop, "kept": keep})
            say(f"bias correction: drop {drop:.3f}{' (kept)' if keep else ' (no gain, undone)'}")
            if keep:
                config, best, rec, best_drop = bc, q, qrec, drop
                if on_best:
                    on_best(best, rec)
            stop = "fits the budget" if best_drop <= ev.limit else ""
        if not stop:
            from .qdq import sample_cap

            n = sample_cap(prep.model, validation, 64)
            say(f"ranking layers by the noise each adds, on {n} validation samples")
        ranked = [] if stop else sensitivity(prep, best, validation, samples=n)
        try:
            for row in ranked[:max_layers] if not stop else []:
                if time.monotonic() - start > seconds:
                    stop = f"time budget of {seconds:.0f} s spent"
                    break
                trial = excluded + [row["node"]]
                q, qrec = quantize_prepared(prep, config, work, exclude=tuple(trial), calibration=calibration)
                drop = ev.drop(q)
                keep = drop < best_drop - 1e-9
                steps.append({"excluded": trial, "drop": drop, "kept": keep, "node": row["node"], "op": row["op"]})
                say(f"FP32 {row['node']} ({row['op']}): drop {drop:.3f}{' (kept)' if keep else ' (no gain, undone)'}")
                if keep:
                    excluded, best, rec, best_drop = trial, q, qrec, drop
                    if on_best:
                        on_best(best, rec)
                if best_drop <= ev.limit:
                    stop = "fits the budget"
                    break
            else:
                stop = stop or (f"{min(max_layers, len(ranked))} most sensitive layers tried" if ranked
                                else "no layer adds measurable noise")
        except KeyboardInterrupt:
            stop = "interrupted: the best model so far is kept"
    rec.stats["fallback"] = {
        "task": ev.task, "metric": ev.metric, "metric_note": ev.why, "reference": ev.reference_value, "budget": ev.limit,
        "drop": best_drop,
        "fits": best_drop <= ev.limit, "excluded": excluded, "bias_correction": bool(config.bias_correction), "steps": steps, "stopped": stop,
        "seconds": round(time.monotonic() - start, 1), "validation_samples": len(ev.data),
        "sensitivity": ranked[:max_layers],
    }
    if best_drop > ev.limit:
        rec.skip("fallback", f"{ev.metric} drop {best_drop:.3f} is over the budget {ev.limit:.3f} ({stop}); "
                 "raise --max-drop, --fallback-layers or --fallback-seconds")
    return best, rec
