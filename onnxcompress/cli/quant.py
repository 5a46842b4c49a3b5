"""`quantize` (and model inspection): int8 QDQ."""
from __future__ import annotations

import dataclasses
from typing import Optional

import click

from .common import emit, handle_errors, input_layout_option, json_option, layout_items
from .dataopts import build_data_config, data_options, open_data

from ..config import CHOICES, TASKS, QuantConfig
from ..errors import InputError
from ..evaluate.gates import quantize_verdict


def _quant_options(fn):
    for opt in reversed([
        click.option("--mode", type=click.Choice(CHOICES["quant.mode"]), default="auto", show_default=True,
                     help="auto: with --validation, try static and dynamic and keep the fastest within --max-drop (default 1 point); without, static (dynamic if no --calibration)."),
        click.option("--target", type=click.Choice(CHOICES["quant.target"]), default="auto", show_default=True,
                     help="CPU the model will run on; chooses int8 types and reduce_range."),
        click.option("--method", "calibration_method", type=click.Choice(CHOICES["quant.calibration"]), default="minmax", show_default=True),
        click.option("--per-tensor", is_flag=True, help="Per-tensor weights (default: per-channel)."),
        click.option("--activation-type", type=click.Choice(CHOICES["quant.activation_type"]), default="auto", show_default=True),
        click.option("--samples", type=int, default=QuantConfig.calibration_samples, show_default=True, help="Calibration samples used."),
        click.option("--exclude", multiple=True, help="Node name kept in FP32; repeatable."),
        click.option("--op-types", multiple=True, help="Only quantize these op types (default: all ORT supports); repeatable."),
        click.option("--equalize/--no-equalize", default=None, help="Cross-layer equalization before calibration (default: on with --per-tensor)."),
        click.option("--bias-correction/--no-bias-correction", default=None, help="Empirical bias correction after quantization."),
        click.option("--smooth-quant", type=float, default=None, metavar="ALPHA", help="SmoothQuant MatMul inputs (e.g. 0.5)."),
        click.option("--max-drop", default=None, metavar="POINTS[%]",
                     help="Accuracy budget (needs --validation): keep sensitive layers in FP32 until the drop fits; "
                          "'0.5' = points of --metric, '1%' = percent of the FP32 value."),
        click.option("--metric", type=click.Choice(CHOICES["quant.metric"]), default="auto", show_default=True,
                     help="Budget metric; auto = the task's own (guessed from the outputs: top1 with labels or agreement for "
                          "classifiers, F1 against FP32 boxes for detectors, mIoU, character agreement, rank correlation)."),
        click.option("--fallback-seconds", type=float, default=QuantConfig.fallback_seconds, show_default=True),
        click.option("--fallback-layers", type=int, default=QuantConfig.fallback_layers, show_default=True,
                     help="Most layers tried in FP32 by the fallback search."),
        click.option("--speed-check", "speed_check_seconds", type=float, default=QuantConfig.speed_check_seconds,
                     show_default=True, metavar="SECONDS",
                     help="Time FP32 vs int8 at batch 1 after quantizing: layers slower in int8 are kept FP32, and a "
                          "model still slower than FP32 gets a warning; 0 = off."),
    ]):
        fn = opt(fn)
    return fn


def parse_drop(text: Optional[str]) -> tuple[Optional[float], bool]:
    if text is None:
        return None, False
    t = text.strip()
    rel = t.endswith("%")
    try:
        value = float(t[:-1] if rel else t)
    except ValueError:
        raise InputError(f"--max-drop '{text}' is not a number; use points like 0.5 or a percent like 1%") from None
    return value, rel


def _quant_config(mode, target, calibration_method, per_tensor, activation_type, samples, exclude, op_types,
                  equalize, bias_correction, smooth_quant, max_drop, metric, fallback_seconds, fallback_layers,
                  speed_check_seconds=QuantConfig.speed_check_seconds) -> QuantConfig:
    drop, rel = parse_drop(max_drop)
    base = QuantConfig()
    cfg = QuantConfig(mode=mode, target=target, calibration=calibration_method, per_channel=not per_tensor,
                      activation_type=activation_type, calibration_samples=samples, exclude=tuple(exclude),
                      op_types=tuple(op_types), equalize=base.equalize if equalize is None else equalize,
                      bias_correction=base.bias_correction if bias_correction is None else bias_correction,
                      smooth_quant=smooth_quant, max_drop=drop, max_drop_relative=rel, metric=metric,
                      fallback_seconds=fallback_seconds, fallback_layers=fallback_layers,
                      speed_check_seconds=speed_check_seconds)
    cfg.validate()
    return cfg


def _summary(out, rec: dict) -> str:
    st = rec["stats"]
    text = f"wrote {out} ({st['mode']}, {st['target']['why']})"
    text += "".join(f"\nnote: {n}" for n in st.get("notes", []))
    if st.get("op_types", {}).get("regions"):
        text += f"\nper region: {st['op_types']['why']}"
    fusion = st.get("fusion", {})
    if fusion:
        host = st.get("fusion_host")
        if host:  # --target arm on another CPU: the target's audit (emulated) next to this host's
            text += f"\non {host['platform']}: " + fusion_line(host)
        text += "\n" + (f"on {fusion['platform']}: " if fusion.get("platform") else "") + fusion_line(fusion)
        text += "".join(f"\n  float island: {f}" for f in fusion["float_islands"])
        if st.get("target_audit", {}).get("available"):
            text += f"\ntarget: {st['target_audit']['why']}"
    fb = st.get("fallback")
    if fb:
        text += (f"\nfallback: {fb['metric']} drop {fb['drop']:.3f} (budget {fb['budget']:.3f}, "
                 f"{'fits' if fb['fits'] else 'OVER BUDGET'}), FP32 layers: {', '.join(fb['excluded']) or 'none'} "
                 f"({fb['stopped']}, {fb['seconds']} s)")
    if "auto" in st:
        text += f"\nauto: {st['auto']['why']}"
        text += "".join(f"\nauto: {s['mode']} skipped: {s['why']}" for s in st["auto"].get("skipped", []))
        cands = st["auto"].get("candidates") or []
        if cands and not any(c.get("fits") for c in cands):  # exit 1 only when --max-drop was given
            text += (f"\nwarning: no int8 model within the {st['auto'].get('budget', 0):.3f}-point "
                     f"{st['auto'].get('metric', '')} budget; the most accurate one was written (give --max-drop to "
                     "make this exit 1)")
    speed = st.get("speed")
    if speed:
        kept = speed.get("kept_fp32_for_speed", [])
        text += (f"\nspeed: {speed['speedup']:.2f}x FP32 at batch 1 ({speed['int8_ms']:.3f} ms vs {speed['fp32_ms']:.3f} ms)"
                 + (f"; kept FP32 for speed: {', '.join(kept[:5])}" + (f" and {len(kept) - 5} more" if len(kept) > 5 else "")
                    if kept else ""))
        if speed.get("slower"):
            text += f"\nwarning: {speed['warning']}"
    if st.get("quality"):
        from ..evaluate.quality import quality_lines

        text += "".join("\n" + line for line in quality_lines(st["quality"], "int8",
                                                              "pass -v VAL to search for a model that keeps it"))
    return text


def fusion_line(f: dict) -> str:
    if f.get("share_basis") == "nodes":
        share = f"{100 * f['int8_mac_share']:.1f}% of the compute nodes (MACs unknown: dynamic dims)"
    else:
        share = f"{100 * f['int8_mac_share']:.1f}% of all MACs, {100 * f['fused_share']:.1f}% of the quantized MACs"
    return (f"int8 kernels: {f['int8_nodes']}/{f['compute_nodes']} compute nodes, {share} "
            f"({len(f['float_islands'])} float islands)")


@click.command("quantize")
@click.argument("model", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option("--calibration", "-c", type=click.Path(), help="Calibration data: .npz named after the inputs, or a folder/glob "
              "of images, a .txt/.jsonl/.csv of text (--tokenizer), WAV files; streamed from disk.")
@click.option("--validation", "-v", type=click.Path(), help="Validation data for --max-drop and --mode auto.")
@click.option("--require-fusion", type=float, help="Gate: minimum share of the quantized layers' MACs that ORT runs on int8 kernels "
              "(e.g. 0.95; layers kept in FP32 on purpose do not count); exit 1 below it.")
@click.option("--task", type=click.Choice(TASKS), default="auto", show_default=True,
              help="What the model does: the metric the search (-v) optimizes and, without -v, the check on "
                   "calibration data; auto guesses from the output shapes.")
@click.option("--task-output", help="The output the task metric reads (default: the first).")
@click.option("--task-param", "task_params", multiple=True, metavar="KEY=VALUE",
              help="Task setting, repeatable (see validate --help).")
@_quant_options
@input_layout_option
@data_options
@json_option
@handle_errors
def quantize_cmd(model, output, calibration, validation, require_fusion, as_json, input_layout, data_flags,
                 task, task_output, task_params, **qopts):
    """Quantize MODEL to int8 QDQ (static with calibration data, dynamic, or auto)."""
    from ..data import load_data, model_layout
    from ..backdoor import feeds_from, save_verified
    from ..io import check_output_path, load_model
    from ..quant.search import quantize_model

    from .evaluate import task_config_from_flags

    cfg = dataclasses.replace(_quant_config(**qopts), task=task_config_from_flags(task, task_output, task_params))
    from ..platform.tune import cross_target_config, fuse_on_target

    cfg, cross_note = cross_target_config(cfg)  # --target arm on x86: host timings say nothing about the target
    out = check_output_path(output, model, calibration, validation)
    m = load_model(model)
    specs = model_layout(m, layout_items(input_layout))  # checked against the model and the data, before any work
    dcfg = build_data_config(**data_flags)  # images, text, audio: streamed (see --preset, --tokenizer, ...)
    say_data = None if as_json else (lambda msg: click.echo(msg, err=True))
    data = open_data(calibration, specs, dcfg, m, say_data) if calibration else None
    val = open_data(validation, specs, dcfg, m, say_data) if validation else None
    if data is None and cfg.mode == "static":
        raise InputError("static quantization needs calibration data; pass --calibration DATA.npz or use --mode dynamic")
    if cfg.max_drop is not None and val is None:
        raise InputError("--max-drop needs validation data to measure the drop; pass --validation DATA.npz")
    say = None if as_json else (lambda msg: click.echo(msg, err=True))
    # every improvement is written at once (atomically): a timed-out or interrupted search leaves the best so far
    # each is checked first (backdoor): a model that fails is never written
    feeds = feeds_from(val if val is not None else data, m)
    q, rec = quantize_model(m, data, val, cfg, progress=say, input_layout=specs.explicit, on_best=lambda model_, rec_: save_verified(
        model_, out, pass_name="quantize", reference=m, feeds=feeds, record=rec_))
    from ..data import example_feed

    # the fusion audit of the emulated target (platform/tune.py), and the activation type that fuses there
    some = val if val is not None else data
    q, rec, changed = fuse_on_target(q, rec, lambda c: quantize_model(m, data, val, c, progress=say,
                                                                      input_layout=specs.explicit), cfg,
                                     feed=example_feed(some, 1, m) if some is not None else None, progress=say)
    if changed:
        save_verified(q, out, pass_name="quantize", reference=m, feeds=feeds, record=rec)
    if cross_note:
        rec.stats.setdefault("notes", []).append(cross_note)
    d = rec.to_dict()
    emit(as_json, d, _summary(out, d))
    # the gates live in the library evaluator (evaluate.gates), like validate's and convert's
    quantize_verdict(d["stats"], cfg.max_drop is not None, cfg.mode, require_fusion).raise_for_failures(
        f"; best model written to {out}")


COMMANDS = [quantize_cmd]
