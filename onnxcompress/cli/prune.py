"""`prune`: remove zeroed channels, or structured channel pruning at a ratio, on ONNX directly."""
from __future__ import annotations

import click

from ..config import PruneConfig
from .common import emit, handle_errors, json_option


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
@json_option
@handle_errors
def prune_cmd(model, output, ratio, zeroed_only, criterion, scope, align, min_channels, calibration,
              calibration_samples, as_json):
    """Physically remove channels from MODEL: dead ones exactly, or the weakest at --ratio."""
    from ..data import input_specs, load_data
    from ..io import check_output_path, load_model, save_model
    from ..passes.prune import prune_model

    cfg = PruneConfig(enabled=True, ratio=ratio, zeroed_only=zeroed_only, criterion=criterion, scope=scope,
                      align=align, min_channels=min_channels, calibration_samples=calibration_samples)
    cfg.validate()
    out = check_output_path(output, model, calibration)
    m = load_model(model)
    batches = list(load_data(calibration, input_specs(m)).batches(64, calibration_samples)) if calibration else None
    pruned, rec = prune_model(m, cfg, calibration=batches)
    save_model(pruned, out)
    s = rec.stats
    lines = [f"wrote {out}",
             f"params {s['params_before']:,} -> {s['params_after']:,} ({s['params_after'] / max(1, s['params_before']):.2f}x)",
             f"MACs   {s['macs_before']:,} -> {s['macs_after']:,} ({s['macs_after'] / max(1, s['macs_before']):.2f}x)",
             f"channel groups removed {s['groups_removed']} of {s['groups_total']}, blocked {s['groups_blocked']}"]
    rc = s.get("reconstruct")
    if rc is not None:
        lines.append(f"reconstructed {rc['refit']} of {len(rc['layers'])} layers on {rc['samples']} samples "
                     f"({rc['seconds']:.1f} s); held-out output MSE per layer:")
        lines += [f"  {name}: {r['mse_before']:.4g} -> {r['mse_after']:.4g}{'' if r['accepted'] else ' (not applied)'}"
                  for name, r in rc["layers"].items()]
    lines += [f"  not refit {sk.target}: {sk.reason.removeprefix('reconstruct: ')}" if sk.reason.startswith("reconstruct:")
              else f"  kept {sk.target}: {sk.reason}" for sk in rec.skipped]
    emit(as_json, rec.to_dict(), "\n".join(lines))


COMMANDS = [prune_cmd]
