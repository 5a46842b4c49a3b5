"""`prune`: remove zeroed channels, or structured channel pruning at a ratio, on ONNX directly."""
from __future__ import annotations

import re
from collections import Counter

import click

from ..config import CHOICES, TASKS, PruneConfig, TaskConfig
from .common import emit, handle_errors, input_layout_option, json_option, layout_items
from .dataopts import build_data_config, data_options, open_data
from .inspect import StepPrinter, input_shape_option
from ..passes.base import split_step
from ..passes.prune.remove import INTERNAL


@click.command("prune")
@click.argument("model", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option("--ratio", type=float, default=0.0, show_default=True,
              help="Share of channels to prune (0 = only remove channels whose weights are already zero).")
@click.option("--zeroed-only", is_flag=True, help="Only remove channels that are already zero (exact).")
@click.option("--target-macs", type=float, help="Keep this fraction of the MACs (e.g. 0.7), allocated over the layers "
              "with the least measured damage (--allocation); instead of --ratio.")
@click.option("--target-params", type=float, help="Keep this fraction of the parameters (like --target-macs).")
@click.option("--target-latency", type=float, help="Keep this fraction of the measured batch-1 latency (one thread, "
              "timed on a calibration sample), by bisection on the MACs target (timing is noisy on a busy machine).")
@click.option("--allocation", type=click.Choice(CHOICES["prune.allocation"]), default=PruneConfig.allocation,
              show_default=True, help="With a target: 'sensitivity' measures each layer's output damage at "
              "--sensitivity-fractions on calibration data and spends the reduction where it hurts least; 'global' "
              "is one score threshold (the --ratio rule).")
@click.option("--damage", type=click.Choice(CHOICES["prune.damage"]), default=PruneConfig.damage,
              show_default=True, help="Output damage against the input model: auto = KL on class outputs, else relative MSE.")
@click.option("--sensitivity-samples", type=int, default=PruneConfig.sensitivity_samples, show_default=True,
              help="Calibration samples the sensitivity and activation scores read.")
@click.option("--sensitivity-rounds", type=click.IntRange(1, 2), default=PruneConfig.sensitivity_rounds, show_default=True,
              help="2: allocate half, measure every layer again on top of it, allocate the rest (twice the runs).")
@click.option("--max-layer-fraction", type=float, default=PruneConfig.max_layer_fraction, show_default=True,
              help="Never prune more than this share of one layer.")
@click.option("--max-drop", type=float, help="With -v: search (bisection on the target) for the largest reduction whose "
              "drop stays within D points (top-1 with labels, else agreement with the input model); the best model "
              "so far is written; none within it exits 1.")
@click.option("--search-steps", type=int, default=PruneConfig.search_steps, show_default=True,
              help="Bisection steps of the --max-drop search.")
@click.option("--step", type=float, default=PruneConfig.step, show_default=True,
              help="With a target and -c: reach it in steps removing at most this share of the original each, every "
              "step refit and the next one measured on the refit model (0: one step).")
@click.option("--criterion", "--score", "criterion",
              type=click.Choice(CHOICES["prune.criterion"]), default=PruneConfig.criterion,
              show_default=True, help="How channels are ranked within a layer: weight norms, BN scale, or mean |activation| "
              "/ activation RMS on calibration data (needs -c).")
@click.option("--scope", type=click.Choice(CHOICES["scope"]), default=PruneConfig.scope, show_default=True)
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
def prune_cmd(model, output, ratio, zeroed_only, target_macs, target_params, target_latency, allocation, damage,
              sensitivity_samples, sensitivity_rounds, max_layer_fraction, max_drop, search_steps, step, criterion, scope, align,
              min_channels, calibration, calibration_samples, validation, task, gate_exprs, input_shape, verbose, as_json,
              input_layout, data_flags):
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
                      align=align, min_channels=min_channels, calibration_samples=calibration_samples,
                      target_macs=target_macs, target_params=target_params, target_latency=target_latency,
                      allocation=allocation, damage=damage,
                      sensitivity_samples=sensitivity_samples, sensitivity_rounds=sensitivity_rounds,
                      max_layer_fraction=max_layer_fraction, max_drop=max_drop,
                      search_steps=search_steps, step=step)
    cfg.validate()
    if max_drop is not None and not validation:
        raise InputError("--max-drop searches against validation data; pass -v VAL")
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
    batches = ds.take(calibration_samples) if ds else None  # a Dataset: each step runs it at its own batch size
    progress = None if as_json else StepPrinter("prune")
    exact = (cfg.zeroed_only or cfg.ratio == 0) and (cfg.target_macs, cfg.target_params, cfg.target_latency) == (None,) * 3
    if max_drop is not None:
        from ..passes.prune.search import search

        def save(model_, rec_, cand) -> None:  # the best model so far, atomically, through the back door
            save_verified(model_, out, pass_name="prune", reference=m, exact=False, feeds=feeds_from(ds or val, m),
                          record=rec_)

        found = search(m, cfg, val, batches, TaskConfig(name=task), tuple(gate_exprs),
                       feed=example_feed(ds, 1, m) if ds else None, input_shapes=shapes, progress=progress, on_best=save)
        lines = search_lines(found.to_dict(), max_drop)
        if found.best is None:
            last = found.tried[-1]
            drop = "not measured" if last.drop is None else f"{last.drop:.2f} points"
            emit(as_json, {"search": found.to_dict()}, "\n".join(lines))
            raise AccuracyRegression(f"no pruned model is within --max-drop {max_drop:g}: even the smallest step "
                                     f"({found.knob} {last.amount:.3f}) measured a drop of {drop} "
                                     f"({'; '.join(last.verdict.failures())}); nothing written")
        rec = found.best_record
        rec.stats["quality"] = found.best.quality
        rec.stats["search"] = found.to_dict()
        emit(as_json, rec.to_dict(), summary(out, rec.to_dict(), verbose) + "\n" + "\n".join(
            lines + quality_lines(found.best.quality, "pruned", "")))
        return
    pruned, rec = prune_model(m, cfg, calibration=batches, progress=progress,
                              feed=example_feed(ds, 1, m) if ds else None, input_shapes=shapes)
    save_verified(pruned, out, pass_name="prune", reference=m, exact=exact, feeds=feeds_from(ds or val, m), record=rec)
    quality = against_reference(m, pruned, val if val is not None else ds, TaskConfig(name=task), tuple(gate_exprs),
                                held_out=val is not None)
    rec.stats["quality"] = quality
    emit(as_json, rec.to_dict(), summary(out, rec.to_dict(), verbose) + "\n" + "\n".join(
        quality_lines(quality, "pruned", "pass -v VAL to gate it, or a smaller --ratio")))
    if quality is not None and quality["data"] == "validation" and quality["passed"] is False:
        raise AccuracyRegression("; ".join(quality["failures"]) + f" (pruned model written to {out})")


def search_lines(found: dict, max_drop: float) -> list[str]:
    """The --max-drop search, one line per candidate, then the verdict."""
    lines = [f"search for the largest reduction within a drop of {max_drop:g} points ({found['knob']}):"]
    for c in found["tried"]:
        reached = "" if c["reached"] is None else f" -> {c['reached']:.3f}x"
        drop = "drop ?" if c["drop"] is None else f"drop {c['drop']:.2f}"
        lines.append(f"  {found['knob']} {c['amount']:.3f}{reached}: {drop} "
                     + ("PASS" if c["passed"] is not False else "FAIL " + "; ".join(c["failures"])))
    best = found["best"]
    lines.append("no candidate within the budget" if best is None else
                 f"kept {found['knob']} {best['amount']:.3f} (the best within the budget)")
    return lines


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
    failed = [r for t, r in skipped if INTERNAL in r]
    lines += [f"warning: {r}" for r in failed]
    if s.get("allocation"):
        kind = s.get("damage_kind", "auto")
        dm = s.get("measured_damage")
        pd = s.get("predicted_damage")
        lines.append(f"allocation {s['allocation']} ({s.get('criterion')}) to {s['target']:.2f}x {s['target_of']}"
                     + ("" if s.get("reached") is None else f", reached {s['reached']:.3f}x")
                     + ("" if pd is None or pd != pd else f"; output damage ({kind}) predicted {pd:.4g}")
                     + ("" if dm is None else f", measured {dm:.4g} on calibration data before refit"))
        lat = s.get("latency")
        if lat:
            lines.append(f"latency (batch 1, 1 thread) {lat['reached']:.2f}x the input's, target {lat['target']:.2f}x; tried "
                         + ", ".join(f"{t['macs']:.3f}x MACs -> {t['latency_ratio']:.2f}x" for t in lat["tried"]))
        lines += [f"warning: {r}" for t, r in skipped if t == "target"]
        if verbose:
            lines += [f"  {k}: {v['width_before']} -> {v['width_after']}" for k, v in s.get("layers", {}).items()
                      if v["width_after"] != v["width_before"]]
    rc = s.get("reconstruct")
    if rc is not None:
        layers = rc["layers"]
        ratios = sorted(r["mse_after"] / r["mse_before"] for r in layers.values() if r["accepted"] and r["mse_before"] > 0)
        lines.append(f"reconstructed {rc['refit']} of {len(layers)} layers on {rc['samples']} samples ({rc['seconds']:.1f} s)"
                     + (f"; held-out output MSE x{ratios[len(ratios) // 2]:.2f} (median over refit layers)" if ratios else ""))
        if verbose:
            lines += [f"  {name}: {r['mse_before']:.4g} -> {r['mse_after']:.4g}{'' if r['accepted'] else ' (not applied)'}"
                      for name, r in layers.items()]
    not_refit, others = split_step(rec.get("skipped", []), "reconstruct")
    if not_refit and not verbose:
        by = Counter(re.sub(r" \(group=\d+\)", "", r) for _, r in not_refit)
        lines += [f"  not refit: {n} x {r}" for r, n in by.most_common()]
    if verbose:
        lines += [f"  not refit {t}: {r}" for t, r in not_refit]
        lines += [f"  kept {t}: {r}" for t, r in others if INTERNAL not in r and t != "target"]
    elif kept or not_refit:
        lines.append("(--verbose lists every node)")
    return "\n".join(lines)


COMMANDS = [prune_cmd]
