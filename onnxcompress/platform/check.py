"""Validate and inspect a model on an emulated target: the same data through ORT on the host and on the
target, compared with validate's task metrics and gates, the differences counted in output quantization
steps, and the fusion audit of the graph ORT optimizes on each side.

Why: ORT runs other int8 code on ARM (other fusions, S8S8 kernels, dot-product / i8mm), so a model
validated on x86 can flip predictions on the device, and the host's fusion audit can be wrong for it.
"""
from __future__ import annotations

import platform as _host
from pathlib import Path
from typing import Any, Optional

import numpy as np
import onnx

from ..config import ValidateConfig
from ..errors import ConfigError, InputError
from .base import Backend, PlatformSpec, Progress, get_backend

DEFAULT_SAMPLES = 100
PASSTHROUGH = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Transpose"}


def host_name() -> str:
    return f"host ({_host.machine() or 'unknown'})"


def output_scales(model: onnx.ModelProto) -> dict[str, Optional[dict[str, Any]]]:
    """Per graph output: the quantization step of the DequantizeLinear that makes it (directly or through
    data-movement ops), {"scale": float | array, "axis": int | None, "node"}; None when the output is float
    (not produced by a DequantizeLinear) or its scale is not a constant."""
    prod = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    consts = {n.output[0]: next((a.t for a in n.attribute if a.name == "value"), None)
              for n in model.graph.node if n.op_type == "Constant"}
    out: dict[str, Optional[dict[str, Any]]] = {}
    for o in model.graph.output:
        n, moved = prod.get(o.name), False
        while n is not None and n.op_type in PASSTHROUGH:
            n, moved = prod.get(n.input[0]), moved or n.op_type != "Identity"
        if n is None or n.op_type != "DequantizeLinear" or len(n.input) < 2:
            out[o.name] = None
            continue
        t = inits.get(n.input[1]) or consts.get(n.input[1])
        if t is None:
            out[o.name] = None
            continue
        scale = onnx.numpy_helper.to_array(t).astype(np.float64)
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        if scale.size == 1:
            out[o.name] = {"scale": float(scale.reshape(-1)[0]), "axis": None, "node": n.name}
        elif moved:  # a per-channel scale moved by a Reshape/Transpose: its axis is not the output's
            out[o.name] = None
        else:
            out[o.name] = {"scale": scale, "axis": axis, "node": n.name}
    return out


class StepCounter:
    """The largest |a - b| of one output in its quantization steps, and how many values differ at all,
    accumulated run by run."""

    def __init__(self, scale: Optional[dict[str, Any]]) -> None:
        self.scale = scale
        self.max_steps: Optional[float] = 0.0 if scale else None
        self.max_abs, self.differing, self.values = 0.0, 0, 0

    def update(self, a: np.ndarray, b: np.ndarray) -> None:
        d = np.abs(a.astype(np.float64) - b.astype(np.float64))
        self.values += d.size
        self.differing += int(np.count_nonzero(d))
        if d.size:
            self.max_abs = max(self.max_abs, float(d.max()))
        if self.scale is None or not d.size:
            return
        s = self.scale["scale"]
        if self.scale["axis"] is not None:
            axis = self.scale["axis"] % d.ndim
            if d.shape[axis] != s.size:
                self.max_steps, self.scale = None, None  # the batch axis moved: the channel axis is unknown
                return
            s = s.reshape([-1 if i == axis else 1 for i in range(d.ndim)])
        self.max_steps = max(self.max_steps or 0.0, float((d / s).max()))

    def result(self) -> dict[str, Any]:
        r: dict[str, Any] = {"max_steps": None if self.max_steps is None else round(self.max_steps, 3),
                             "max_abs_diff": self.max_abs, "differing": self.differing, "values": self.values}
        if self.scale is None:
            r["why"] = "n/a: the output is not quantized (no DequantizeLinear with a constant scale makes it)"
        else:
            s = self.scale["scale"]
            r["scale"] = s if isinstance(s, float) else f"per-channel (axis {self.scale['axis']})"
        return r


def _shaped(session, layout, runs, raw: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Raw per-run outputs -> samples first, padding dropped (what runner.iter_outputs yields)."""
    declared = {o.name: layout.output_axis(o.shape) for o in session.get_outputs()}
    out = []
    for feed, outs in zip(runs, raw):
        d = {}
        for name, value in outs.items():
            v, axis = feed.output(value, declared[name])
            declared[name] = declared[name] if axis is None else axis
            d[name] = v
        out.append(d)
    return out


def _audit_pair(model: onnx.ModelProto, optimized: onnx.ModelProto, feed, spec: PlatformSpec) -> dict[str, Any]:
    from ..quant.audit import audit

    host = audit(model, feed=feed)
    target = audit(model, feed=feed, optimized=optimized)
    host["platform"], target["platform"] = host_name(), f"{spec} (emulated)"
    return {"host": host, "target": target}


def validate_on_platform(ref: str | Path, cand: str | Path, data: Optional[str | Path], spec: PlatformSpec,
                         config: ValidateConfig = ValidateConfig(), samples: int = DEFAULT_SAMPLES,
                         backend: Optional[Backend] = None, progress: Progress = None,
                         input_layout: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run REFERENCE and CANDIDATE on `samples` samples on the host and on the emulated target; the
    verdict comes from validate's gates on the target's comparison (candidate vs reference, both on the
    target). Also: host vs target for each model (task metric, max difference in output steps) and the
    candidate's fusion audit on both sides."""
    from ..data import example_feed, feeds, load_data, model_layout, random_data
    from ..evaluate.compare import compare_batches
    from ..evaluate.gates import evaluate_comparison, validation_gates
    from ..runtime.session import make_session
    from ..evaluate.validate import RANDOM_SAMPLES
    from ..io import load_model, load_raw, model_size

    config.validate()
    if config.max_latency_ratio is not None:
        raise ConfigError("--max-latency-ratio with --platform: emulated speed is not device speed; "
                          "time the models on the device itself")
    if samples < 1:
        raise ConfigError(f"--samples {samples}: give 1 or more")
    backend = backend or get_backend(spec.arch)
    say = progress or (lambda _m: None)
    raw = {"reference": load_raw(ref, check=False), "candidate": load_raw(cand, check=False)}
    ref_model = load_model(ref)
    if [i.name for i in raw["reference"].graph.input] != [i.name for i in raw["candidate"].graph.input]:
        raise InputError("the models have different inputs; compare two versions of the same network")
    layout = model_layout(ref_model, input_layout)
    ds = load_data(data, layout) if data else random_data(layout, RANDOM_SAMPLES)
    n = min(samples, len(ds))
    if config.max_samples:
        n = min(n, config.max_samples)
    runs = list(feeds(ds, config.batch_size, n, layout))
    say(f"host: running both models on {n} samples")
    sessions = {k: make_session(m, "cpu", threads=1) for k, m in raw.items()}
    host = {k: _shaped(s, layout, runs, [dict(zip([o.name for o in s.get_outputs()], s.run(None, f))) for f in runs])
            for k, s in sessions.items()}
    tr = backend.run_models(raw, [dict(f) for f in runs], spec.cpu, optimized=True, progress=say)
    target = {k: _shaped(sessions[k], layout, runs, tr.outputs[k]) for k in raw}
    labels = None if ds.labels is None else ds.labels[:n]
    cmp = lambda a, b, lab: compare_batches(zip(a, b), lab, config.task, config.metric)  # noqa: E731
    on_target = cmp(target["reference"], target["candidate"], labels)
    on_host = cmp(host["reference"], host["candidate"], labels)
    cross = {k: cmp(host[k], target[k], None) for k in raw}
    steps: dict[str, dict[str, Any]] = {}
    for k in raw:
        scales = output_scales(raw[k])
        counters = {name: StepCounter(scales.get(name)) for name in host[k][0]} if host[k] else {}
        for h, t in zip(host[k], target[k]):
            for name, c in counters.items():
                c.update(h[name], t[name])
        steps[k] = {name: c.result() for name, c in counters.items()}
    say(f"fusion audit: the candidate as ORT optimizes it on the host and on {spec}")
    fusion = _audit_pair(raw["candidate"], tr.optimized["candidate"], example_feed(ds, 1, layout), spec)
    result: dict[str, Any] = {
        "kind": "validate --platform", "schema_version": 1, "platform": str(spec), "arch": spec.arch, "cpu": spec.cpu, "backend": backend.name, "emulated": True,
        "target_info": tr.info, "host": host_name(), "reference": str(ref), "candidate": str(cand),
        "data": str(data) if data else "random", "samples": n,
        "reference_size": model_size(ref), "candidate_size": model_size(cand),
        "on_target": on_target, "on_host": on_host, "host_vs_target": cross, "steps": steps, "fusion": fusion}
    gates = validation_gates(config, on_target["task"], real_data=data is not None)
    verdict = evaluate_comparison({**on_target, "size_bytes": result["candidate_size"]}, gates)
    result.update(verdict.to_dict())
    return result


def inspect_on_platform(model: onnx.ModelProto, spec: PlatformSpec, feed=None, input_shapes=None,
                        backend: Optional[Backend] = None, progress: Progress = None) -> dict[str, Any]:
    """The fusion audit of `model` on the host and as ORT optimizes it on the emulated target."""
    from ..quant.audit import audit

    backend = backend or get_backend(spec.arch)
    tr = backend.run_models({"model": model}, [], spec.cpu, optimized=True, progress=progress)
    target = audit(model, feed=feed, input_shapes=input_shapes, optimized=tr.optimized["model"])
    target["platform"], target["target_info"] = f"{spec} (emulated)", tr.info
    return target
