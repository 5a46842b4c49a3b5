"""`quantize --target arm` on a non-ARM host: the fusion figures come from the emulated ARM target, and
the activation type is the one whose int8 kernels ORT fuses there.

ORT fuses other Q/DQ patterns on ARM than on x86 (measured on the bundled CNN with int8 activations: 6 of
13 convs on int8 kernels on x86, 13 of 13 on arm64), so the host's fusion audit says nothing about the
target, and the host's batch-1 timings say nothing about its speed.
"""
from __future__ import annotations

import dataclasses
import platform as _host
from typing import Any, Callable, Optional

import onnx

from .base import Backend, PlatformSpec, Progress, get_backend

TARGET_ARCH = {"arm": "arm64"}
ALTERNATIVE = {"int8": "uint8", "uint8": "int8"}
FUSION_KEYS = ("int8_mac_share", "fused_share", "int8_nodes", "compute_nodes", "share_basis")


def cross_target(target: str) -> Optional[str]:
    """The emulated arch for `--target`, when the host is not that CPU itself (None: no emulation needed)."""
    arch = TARGET_ARCH.get(target)
    machine = _host.machine().lower()
    if arch is None or machine in ("aarch64", "arm64"):
        return None
    return arch


def cross_target_config(config):
    """(config, note): on a host that is not the target, the batch-1 speed check times the host's kernels,
    and would keep layers FP32 that only the host runs slowly: it is turned off, saying so."""
    if cross_target(config.target) and config.speed_check_seconds > 0:
        note = (f"speed check skipped: --target {config.target} on a {_host.machine()} host; host timings say "
                "nothing about the target's speed (time the model on the device)")
        return dataclasses.replace(config, speed_check_seconds=0.0), note
    return config, None


def _summary(a: dict[str, Any], where: str) -> dict[str, Any]:
    d = {k: a[k] for k in FUSION_KEYS if k in a}
    d["float_islands"] = [f"{r['node']} ({r['op']} -> {r['kernel']})" for r in a.get("float_islands", [])]
    d["platform"] = where
    return d


def fuse_on_target(q: onnx.ModelProto, rec, requantize: Callable[[Any], tuple[onnx.ModelProto, Any]], config,
                   feed=None, cpu: Optional[str] = None, backend: Optional[Backend] = None,
                   progress: Progress = None) -> tuple[onnx.ModelProto, Any, bool]:
    """Audit `q` (record `rec`, a PassRecord) on the emulated target of config.target; when ORT leaves float
    islands there and the activation type was not forced, quantize again with the other activation type
    (`requantize(config)`) and keep the one that fuses more there. rec.stats["fusion"] becomes the target's
    figure (what --require-fusion gates), the host's moves to "fusion_host"; each says its platform.
    Returns (model, record, changed). A target that is not set up leaves the record saying so."""
    from ..quant.audit import audit
    from .base import CPUS

    say = progress or (lambda _m: None)
    arch = cross_target(config.target)
    host = f"host ({_host.machine()})"
    if arch is None:
        return q, rec, False
    backend = backend or get_backend(arch)
    spec = PlatformSpec(arch, cpu or CPUS[arch][0])
    if rec.stats.get("fusion"):
        rec.stats["fusion"]["platform"] = host
    st = backend.status(size=False)
    if not st["ready"] or backend.available():
        why = (f"the fusion figures are this {_host.machine()} host's, not the {spec.arch} target's "
               f"(ORT fuses other patterns there): the emulated target is not ready ({st.get('why') or backend.available()})")
        rec.stats["target_audit"] = {"platform": str(spec), "available": False, "why": why}
        rec.skip("target-audit", why)
        return q, rec, False

    def on_target(model: onnx.ModelProto) -> dict[str, Any]:
        return audit(model, feed=feed, optimized=backend.optimized_model(model, spec.cpu))

    say(f"fusion audit on the emulated {spec}")
    where = f"{spec} (emulated)"
    first = on_target(q)
    act = rec.stats.get("target", {}).get("activation_type")
    tried = [{"activation_type": act, "fused_share": first["fused_share"], "int8_mac_share": first["int8_mac_share"]}]
    chosen, why = (q, rec, first), "all quantized layers run on int8 kernels there"
    if first["fused_share"] < 0.999 and config.activation_type == "auto" and act in ALTERNATIVE:
        alt_act = ALTERNATIVE[act]
        say(f"{len(first['float_islands'])} float islands on {spec} with {act} activations; trying {alt_act}")
        q2, rec2 = requantize(dataclasses.replace(config, activation_type=alt_act))
        second = on_target(q2)
        tried.append({"activation_type": alt_act, "fused_share": second["fused_share"],
                      "int8_mac_share": second["int8_mac_share"]})
        if second["fused_share"] > first["fused_share"] + 0.01:
            if rec2.stats.get("fusion"):
                rec2.stats["fusion"]["platform"] = host
            chosen, why = (q2, rec2, second), (f"{alt_act} activations fuse more there ({100 * second['fused_share']:.0f}% "
                                               f"vs {100 * first['fused_share']:.0f}% of the quantized MACs)")
        else:
            why = f"{act} activations kept: {alt_act} fuses no more there"
    elif first["fused_share"] < 0.999:
        why = f"float islands there; activation type {config.activation_type} was given, so it was kept"
    q_out, rec_out, fusion = chosen
    rec_out.stats["fusion_host"] = rec_out.stats.get("fusion", {})
    rec_out.stats["fusion"] = _summary(fusion, where)
    rec_out.stats["target_audit"] = {"platform": str(spec), "available": True, "tried": tried, "why": why}
    return q_out, rec_out, q_out is not q
