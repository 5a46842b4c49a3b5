"""`prune-distill`: torch-side pruning, fine-tuning by distillation from the original, export, removal."""
from __future__ import annotations

import click

from ..config import CHOICES, ExportConfig, TrainConfig
from ..errors import InputError
from ..sources.preprocess import PRESETS
from .common import csv_ints, emit, handle_errors, json_option
from .export import export_options


def train_options(fn):
    """Pruning and distillation flags -> TrainConfig (shared with other commands that fine-tune)."""
    opts = [
        click.option("--ratio", type=float, default=TrainConfig.ratio, show_default=True,
                     help="Share of channels to prune (of weights with --unstructured)."),
        click.option("--unstructured", is_flag=True,
                     help="L1 weight sparsity instead of channels: smaller compressed file, not faster on ORT's CPU kernels."),
        click.option("--criterion", type=click.Choice(CHOICES["train.criterion"]), default=TrainConfig.criterion, show_default=True,
                     help="Filter norm ranking channels (structured)."),
        click.option("--scope", type=click.Choice(CHOICES["scope"]), default=TrainConfig.scope, show_default=True,
                     help="One threshold over the model, or the ratio in every layer."),
        click.option("--align", type=int, default=TrainConfig.align, show_default=True, help="Kept widths are multiples of this."),
        click.option("--min-channels", type=int, default=TrainConfig.min_channels, show_default=True),
        click.option("--steps", type=int, default=TrainConfig.steps, show_default=True,
                     help="Iterative schedule: prune ratio/steps more per step, fine-tune after each."),
        click.option("--epochs", type=int, default=TrainConfig.epochs, show_default=True,
                     help="Fine-tuning epochs per step (0 = no fine-tuning)."),
        click.option("--lr", type=float, default=TrainConfig.lr, show_default=True),
        click.option("--batch-size", type=int, default=TrainConfig.batch_size, show_default=True),
        click.option("--temperature", type=float, default=TrainConfig.temperature, show_default=True),
        click.option("--alpha", type=float, default=TrainConfig.alpha, show_default=True,
                     help="Cross-entropy weight when the data has labels (0 = label-free)."),
        click.option("--loss", type=click.Choice(CHOICES["train.loss"]), default=TrainConfig.loss, show_default=True,
                     help="kl for classifiers; mse on the outputs for other models."),
        click.option("--outputs", "loss_outputs", default="", help="Output indices the loss uses, e.g. 0,2 (default: all)."),
        click.option("--patience", type=int, default=TrainConfig.patience, show_default=True,
                     help="Stop after this many epochs without a better validation metric."),
        click.option("--freeze-bn", is_flag=True, help="Keep BatchNorm statistics fixed (small data sets)."),
        click.option("--seed", type=int, default=TrainConfig.seed, show_default=True),
        click.option("--checkpoint-dir", type=click.Path(file_okay=False), help="Write best.pt, last.pt, history.json here."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


TRAIN_KEYS = ("ratio", "unstructured", "criterion", "scope", "align", "min_channels", "steps", "epochs", "lr",
              "batch_size", "temperature", "alpha", "loss", "loss_outputs", "patience", "freeze_bn", "seed",
              "checkpoint_dir")


def train_config_from(kw: dict) -> TrainConfig:
    cfg = TrainConfig(enabled=True, ratio=kw["ratio"], structured=not kw["unstructured"], criterion=kw["criterion"],
                      scope=kw["scope"], align=kw["align"], min_channels=kw["min_channels"], steps=kw["steps"],
                      epochs=kw["epochs"], lr=kw["lr"], batch_size=kw["batch_size"], temperature=kw["temperature"],
                      alpha=kw["alpha"], loss=kw["loss"], patience=kw["patience"], freeze_bn=kw["freeze_bn"],
                      seed=kw["seed"], checkpoint_dir=kw["checkpoint_dir"], outputs=csv_ints(kw["loss_outputs"]))
    cfg.validate()
    return cfg


@click.command("prune-distill")
@click.argument("source")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .onnx (pruned channels removed).")
@click.option("--input", "inputs", multiple=True,
              help="Torch sources: NAME:1x3x224x224[:dtype]; repeat for several inputs (an .onnx source has its own).")
@click.option("--weights", type=click.Path(), help="Torch factories: state dict .pt/.pth (weights_only=True) or .safetensors.")
@click.option("--data", "-d", required=True, type=click.Path(),
              help="Training inputs: .npz (unlabeled is fine; labels used only with --alpha > 0), e.g. the calibration "
                   "set; for an .onnx source also an image folder (--preset).")
@click.option("--val", "-v", "val", type=click.Path(), help="Validation data for early stopping / the best state and the numbers (top-1 with labels).")
@click.option("--target-macs", type=float, default=None,
              help="ONNX source: keep this fraction of the MACs (e.g. 0.7), allocated by measured damage, instead of --ratio.")
@click.option("--time-budget", default=None, metavar="DURATION",
              help="ONNX source: train for this long (30m, 90s, 1h) instead of --epochs, keeping the best state.")
@click.option("--calibration-samples", type=int, default=1000, show_default=True,
              help="ONNX source: samples the ONNX pruner reads (allocation, refit) before training.")
@click.option("--student", type=click.Path(dir_okay=False),
              help="ONNX source: an already pruned copy of it (e.g. from `onnxcompress prune`) to train instead of pruning here.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default=None, help="ONNX source, image data: preprocessing preset.")
@click.option("--data-config", "data_config_file", type=click.Path(), help="ONNX source: DataConfig JSON for --data/--val.")
@train_options
@export_options
@json_option
@handle_errors
def prune_distill_cmd(source, output, weights, inputs, data, val, opset, exporter, static_batch, as_json, target_macs,
                      time_budget, calibration_samples, student, preset, data_config_file, **kw):
    """Prune a torch or ONNX model, win accuracy back by distilling from the original, remove channels.

    SOURCE is pkg.module:function or path/to/file.py:function (with --weights), a TorchScript file, a
    torch.export .pt2 program, or an .onnx model (pruned on the ONNX side to --target-macs/--ratio, then
    its graph trained in torch, label-free, within --time-budget). Prints the metric of the original, of
    the same pruning without fine-tuning, and after distillation."""
    import dataclasses
    import sys

    if source.lower().endswith(".onnx"):
        from .train_onnx import parse_duration, run_onnx

        cfg = dataclasses.replace(train_config_from(kw), time_budget=parse_duration(time_budget))
        cfg.validate()
        return run_onnx(source, output, data, val, cfg, target_macs, calibration_samples,
                        {"preset": preset, "data_config_file": data_config_file, "seed": kw["seed"]}, as_json, student)
    if not inputs:
        raise InputError("--input is required for a torch source (NAME:1x3x224x224); an .onnx source needs none")
    if target_macs is not None or time_budget is not None or student is not None:
        raise InputError("--target-macs, --time-budget and --student apply to .onnx sources; for a torch source use "
                         "--ratio and --epochs")

    from ..io import check_output_path
    from ..torchload import load_any, parse_input_spec
    from ..train.distill import progress
    from ..train.run import load_training_data, prune_and_distill

    cfg = train_config_from(kw)
    ecfg = ExportConfig(opset=opset, exporter=exporter, dynamic_batch=not static_batch)
    ecfg.validate()
    specs = [parse_input_spec(s) for s in inputs]
    out = check_output_path(output, weights, data, val, source.rpartition(":")[0] or source)
    xs, ys = load_training_data(data, specs)
    vx, vy = load_training_data(val, specs) if val else (None, None)
    module = load_any(source, weights)
    rec = prune_and_distill(module, specs, xs, out, cfg, train_y=ys, val_x=vx, val_y=vy, export_config=ecfg,
                            show=None if as_json else progress)
    s = rec.stats
    rm = s["onnx_removal"]
    lines = [f"wrote {out} (exporter {s['export']['exporter']}, max abs error vs torch {s['export']['max_abs_error']:.1e})",
             f"{s['metric']}: original {s['teacher_metric']:.2f}, pruned without fine-tuning "
             f"{s['pruned_no_finetune_metric']:.2f}, pruned + distilled {s['final_metric']:.2f}",
             f"weight sparsity {100 * s['weight_sparsity']:.1f}%; params {s['params_before']:,} -> {s['params_after']:,}, "
             f"MACs {rm['macs_before']:,} -> {rm['macs_after']:,} after channel removal"]
    if not as_json:
        sys.stderr.write("\n")
    emit(as_json, rec.to_dict(), "\n".join(lines))


COMMANDS = [prune_distill_cmd]
