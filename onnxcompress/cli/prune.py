"""`prune`: remove zeroed channels, or structured channel pruning at a ratio, on ONNX directly."""
from __future__ import annotations

import re
from collections import Counter

import click

from ..config import TASKS, PruneConfig, TaskConfig
from .common import emit, handle_errors, input_layout_option, json_option, layout_items
from .dataopts import build_data_config, data_options, open_data
from .inspect import StepPrinter, input_shape_option


@click.command("prune")
@click.argument("model", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option("--ratio", type=float, default=0.0, show_default=True,
              help="Share of channels to prune (0 = only remove channels whose weights are already zero).")
@click.option("--zeroed-only", is_flag=True, help="Only remove channels that are already zero (exact).")
@click.option("--criterion", type=click.Choice(["l1", "l2", "bn_scale"]), default=PruneConfig.criterion, show_default=True)
@click.option("--scope", type=click.Choice(["global", "layer"]), default=PruneConfig.scope, show_default=True)
@click.option("--align", type=int, default=PruneConfig.align, show_default=True, help="Keep widths multiples of N.")
@click.option("--min-channels", type=int, default=PruneConfig.min_channels, show_default=True)
@click.option("--calibration", "-c", type=click.Path(),
              help="Calibration data: with --ratio, the layers that lost input channels are refit by least squares "
                   "to reproduce the original model's layer outputs.")
@click.option("--calibration-samples", type=int, default=PruneConfig.calibration_samples, show_default=True,
              help="Calibration samples read for the reconstruction.")
@click.option("--validation", "-v", type=click.Path(),
              help="Validation data: the pruned model's task metric against the input model, with the task's default "
                   "gates and --gate; a failed gate exits 1 (the model is still written).")
@click.option("--task", type=click.Choice(TASKS), default="auto", show_default=True,
              help="What the model does (the metric the quality check uses); auto guesses from the output shapes.")
@click.option("--gate", "gate_exprs", multiple=True, metavar="METRIC>=LIMIT",
              help="Gate on a measured metric, repeatable (with -v): agreement>=90, recall>=95.")
@input_shape_option
@click.option("--verbose", is_flag=True, help="List every kept channel group's node and every layer's refit.")
@input_layout_option
@data_options
@json_option
@handle_errors
def prune_cmd(model, output, ratio, zeroed_only, criterion, scope, align, min_channels, calibration,
              calibration_samples, validation, task, gate_exprs, input_shape, verbose, as_json, input_layout, data_flags):
    """Physically remove channels from MODEL: dead ones exactly, or the weakest at --ratio. The result's task
    metric against MODEL is printed (on -v, gated; else on calibration samples)."""
    from ..backdoor import feeds_from, save_verified
    from ..errors import AccuracyRegression, InputError
    from ..evaluate.gates import parse_gate
    from ..evaluate.quality import against_reference, quality_lines
    from ..data import example_feed, model_layout
    from ..io import check_output_path, load_model
    from ..passes.prune import prune_model
    from ..stats import check_input_shapes, parse_input_shapes

    cfg = PruneConfig(enabled=True, ratio=ratio, zeroed_only=zeroed_only, criterion=criterion, scope=scope,
                      align=align, min_channels=min_channels, calibration_samples=calibration_samples)
    cfg.validate()
    shapes = parse_input_shapes(input_shape)
    out = check_output_path(output, model, calibration, validation)
    for g in gate_exprs:
        parse_gate(g)  # a malformed gate fails before any work
    if gate_exprs and not validation:
        raise InputError("--gate needs validation data to measure against; pass -v VAL")
    m = load_model(model)
    check_input_shapes(m, shapes)
    items = layout_items(input_layout)  # checked against the model and the data, before any work (no data: none needed)
    layout = model_layout(m, items) if calibration or validation or items else None
    dcfg = build_data_config(**data_flags)
    say = None if as_json else (lambda msg: click.echo(msg, err=True))
    ds = open_data(calibration, layout, dcfg, m, say) if calibration else None
    val = open_data(validation, layout, dcfg, m, say) if validation else None
    batches = list(ds.feeds(64, calibration_samples)) if ds else None
    pruned, rec = prune_model(m, cfg, calibration=batches, progress=None if as_json else StepPrinter("prune"),
                              feed=example_feed(ds, 1, m) if ds else None, input_shapes=shapes)
    save_verified(pruned, out, pass_name="prune", reference=m, exact=cfg.zeroed_only or cfg.ratio == 0,
                  feeds=feeds_from(ds or val, m), record=rec)
    quality = against_reference(m, pruned, val if val is not None else ds, TaskConfig(name=task), tuple(gate_exprs),
                                held_out=val is not None)
    rec.stats["quality"] = quality
    emit(as_json, rec.to_dict(), summary(out, rec.to_dict(), verbose) + "\n" + "\n".join(
        quality_lines(quality, "pruned", "pass -v VAL to gate it, or a smaller --ratio")))
    if quality is not None and quality["data"] == "validation" and quality["passed"] is False:
        raise AccuracyRegression("; ".join(quality["failures"]) + f" (pruned model written to {out})")


def _ratio(before, after) -> str:
    if before is None or after is None:
        return "unknown"
    return f"{before:,} -> {after:,} ({after / max(1, before):.2f}x)"


def _top(ops: dict) -> str:
    return ", ".join(f"{n} {op}" for op, n in list(ops.items())[:3]) + (", ..." if len(ops) > 3 else "")


def summary(out, rec: dict, verbose: bool = False) -> str:
    """The prune result in a few lines: sizes, groups removed, kept groups counted by reason (--verbose:
    every node and every refit layer)."""
    s = rec["stats"]
    lines = [f"wrote {out}", f"params {_ratio(s['params_before'], s['params_after'])}",
             f"MACs   {_ratio(s.get('macs_before'), s.get('macs_after'))}" +
             (f" ({s['macs_note']})" if s.get("macs_before") is None and s.get("macs_note") else ""),
             f"channel groups removed {s['groups_removed']} of {s.get('groups_total', '?')}"]
    kept = s.get("kept_by_reason") or []
    if kept:
        lines.append(f"kept {sum(k['groups'] for k in kept)} groups:")
        lines += [f"  {k['groups']} {k['reason']} ({k['nodes']} node{'s' if k['nodes'] > 1 else ''}: {_top(k['ops'])})"
                  for k in kept]
    for k in s.get("selected_but_kept") or []:
        lines.append(f"  {k['groups']} selected but kept: {k['reason']} ({_top(k['ops'])})")
    skipped = [(sk["target"], sk["reason"]) for sk in rec.get("skipped", [])]
    failed = [r for t, r in skipped if "channel pruning failed" in r]
    lines += [f"warning: {r}" for r in failed]
    rc = s.get("reconstruct")
    if rc is not None:
        layers = rc["layers"]
        ratios = sorted(r["mse_after"] / r["mse_before"] for r in layers.values() if r["accepted"] and r["mse_before"] > 0)
        lines.append(f"reconstructed {rc['refit']} of {len(layers)} layers on {rc['samples']} samples ({rc['seconds']:.1f} s)"
                     + (f"; held-out output MSE x{ratios[len(ratios) // 2]:.2f} (median over refit layers)" if ratios else ""))
        if verbose:
            lines += [f"  {name}: {r['mse_before']:.4g} -> {r['mse_after']:.4g}{'' if r['accepted'] else ' (not applied)'}"
                      for name, r in layers.items()]
    not_refit = [(t, r.removeprefix("reconstruct: ")) for t, r in skipped if r.startswith("reconstruct:")]
    if not_refit and not verbose:
        by = Counter(re.sub(r" \(group=\d+\)", "", r) for _, r in not_refit)
        lines += [f"  not refit: {n} x {r}" for r, n in by.most_common()]
    if verbose:
        lines += [f"  not refit {t}: {r}" for t, r in not_refit]
        lines += [f"  kept {t}: {r}" for t, r in skipped if not r.startswith("reconstruct:") and "channel pruning failed" not in r]
    elif kept or not_refit:
        lines.append("(--verbose lists every node)")
    return "\n".join(lines)


COMMANDS = [prune_cmd]
