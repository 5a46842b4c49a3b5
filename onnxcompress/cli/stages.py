"""Pipeline commands: simplify, convert, demo."""
from __future__ import annotations

import click

from .common import emit, handle_errors, json_option

import dataclasses
from pathlib import Path

from ..config import PipelineConfig, load_config
from ..errors import InputError

REPO = Path(__file__).resolve().parents[2]
BUNDLED_MODEL = REPO / "models" / "fashion_net.onnx"
BUNDLED_CALIB = REPO / "calibration" / "fashion_calib.npz"
BUNDLED_VAL = REPO / "calibration" / "fashion_val.npz"


@click.command("simplify")
@click.argument("model", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@json_option
@handle_errors
def simplify_cmd(model, output, as_json):
    """Simplify MODEL with onnxsim (constant folding, dead nodes, shapes)."""
    from ..io import check_output_path, load_model, save_model
    from ..passes.simplify import simplify

    out = check_output_path(output, model)
    m, rec = simplify(load_model(model))
    save_model(m, out)
    emit(as_json, rec.to_dict(), f"wrote {out}: {rec.stats['nodes_before']} -> {rec.stats['nodes_after']} nodes"
         + "".join(f"\n  skipped {s.target}: {s.reason}" for s in rec.skipped))


def _pipeline_from_flags(config, **kw) -> PipelineConfig:
    cfg = load_config(config) if config else PipelineConfig()
    if kw.get("no_quantize"):
        cfg = dataclasses.replace(cfg, quant=dataclasses.replace(cfg.quant, enabled=False))
    if kw.get("prune_ratio") is not None:
        cfg = dataclasses.replace(cfg, prune=dataclasses.replace(cfg.prune, enabled=True, ratio=kw["prune_ratio"]))
    if kw.get("runs") is not None:
        cfg = dataclasses.replace(cfg, bench=dataclasses.replace(cfg.bench, runs=kw["runs"]))
    if kw.get("train_ratio") is not None:
        train = dataclasses.replace(cfg.train, enabled=True, ratio=kw["train_ratio"])
        if kw.get("train_epochs") is not None:
            train = dataclasses.replace(train, epochs=kw["train_epochs"])
        cfg = dataclasses.replace(cfg, train=train)
    cfg.validate()
    return cfg


def _run_convert(model, out_dir, cfg, calibration, validation, as_json, train_data=None):
    from ..pipeline import convert
    from ..evaluate.gates import AccuracyResult
    from ..report import stage_table, verdict_lines
    from .evaluate import exit_on_gates

    report = convert(model, out_dir, cfg, calibration, validation,
                     progress=None if as_json else (lambda s: click.echo(f"[{s}]", err=True)), train_data=train_data)
    emit(as_json, report, stage_table(report) + "\n\n" + "\n".join(verdict_lines(report))
         + f"\n\nreport: {', '.join(report['files'])}")
    exit_on_gates(AccuracyResult.from_dict(report["accuracy"]))  # exit 1, one line per failed gate
    return report


@click.command("convert")
@click.argument("model")
@click.option("-o", "--output-dir", required=True, type=click.Path(file_okay=False))
@click.option("--calibration", "-c", type=click.Path(), help="Calibration data .npz.")
@click.option("--validation", "-v", type=click.Path(), help="Validation data .npz (with labels for top-1).")
@click.option("--config", type=click.Path(), help="PipelineConfig JSON file (see --dump-config).")
@click.option("--prune-ratio", type=float, help="Enable ONNX structured pruning at this ratio.")
@click.option("--no-quantize", is_flag=True)
@click.option("--runs", type=int, help="Benchmark runs per model.")
@click.option("--input", "inputs", multiple=True, help="Torch models: NAME:Nx1x28x28[:dtype] (MODEL is then a factory, TorchScript or .pt2).")
@click.option("--weights", type=click.Path(), help="Torch models: state dict for the factory.")
@click.option("--train-ratio", type=float, help="Torch models: structured pruning ratio, fine-tuned by distillation.")
@click.option("--train-epochs", type=int, help="Torch models: distillation epochs.")
@click.option("--train-data", type=click.Path(), help="Torch models: data to distill on (default: the calibration data).")
@json_option
@handle_errors
def convert_cmd(model, output_dir, calibration, validation, config, prune_ratio, no_quantize, runs, inputs, weights,
                train_ratio, train_epochs, train_data, as_json):
    """Run the stages in order and write a report: [export, prune-distill,] simplify, prune, quantize,
    validate, bench. MODEL is an .onnx file, or with --input a torch model (factory, TorchScript, .pt2)."""
    cfg = _pipeline_from_flags(config, prune_ratio=prune_ratio, no_quantize=no_quantize, runs=runs,
                               train_ratio=train_ratio, train_epochs=train_epochs)
    source = model
    if inputs:
        from ..pipeline import TorchSource
        from ..torchload import load_any, parse_input_spec

        specs = [parse_input_spec(i) for i in inputs]
        name = Path(model.split(":")[0]).stem or "model"
        source = TorchSource(load_any(model, weights), specs, name)
    elif cfg.train.enabled:
        raise InputError("--train-ratio needs a torch model: pass MODEL as a factory with --input (and --weights)")
    _run_convert(source, output_dir, cfg, calibration, validation, as_json, train_data)


@click.command("demo")
@click.option("-o", "--output-dir", default="onnxcompress-demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--runs", type=int, default=300, show_default=True, help="Benchmark runs per model.")
@json_option
@handle_errors
def demo_cmd(output_dir, runs, as_json):
    """Convert the bundled Fashion-MNIST model with the bundled calibration and validation data."""
    for p in (BUNDLED_MODEL, BUNDLED_CALIB, BUNDLED_VAL):
        if not p.is_file():
            raise InputError(f"bundled file {p} is missing; run the demo from a clone of the repository (pip install -e .)")
    cfg = _pipeline_from_flags(None, runs=runs)
    _run_convert(BUNDLED_MODEL, output_dir, cfg, BUNDLED_CALIB, BUNDLED_VAL, as_json)


COMMANDS = [simplify_cmd, convert_cmd, demo_cmd]
