"""Pipeline commands: simplify, convert, demo."""
from __future__ import annotations

import click

from .common import emit, handle_errors, input_layout_option, json_option, layout_items
from .dataopts import build_data_config, data_arg, data_options
from .evaluate import task_config_from_flags, task_options

import dataclasses
from pathlib import Path

from ..config import PipelineConfig, load_config
from ..errors import InputError

from ..bundled import BUNDLED_CALIB, BUNDLED_VAL, bundled_files


@click.command("simplify")
@click.argument("model", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@json_option
@handle_errors
def simplify_cmd(model, output, as_json):
    """Simplify MODEL with onnxsim (constant folding, dead nodes, shapes)."""
    from ..backdoor import save_verified
    from ..io import check_output_path, load_model
    from ..passes.simplify import simplify

    out = check_output_path(output, model)
    src = load_model(model)
    m, rec = simplify(src)
    save_verified(m, out, pass_name="simplify", reference=src, exact=True, record=rec)
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
    if kw.get("input_layout"):
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, input_layout=layout_items(kw["input_layout"])))
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


def _with_task_flags(cfg: PipelineConfig, task, task_output, task_params, user_metric, gate_exprs,
                     default_gates) -> PipelineConfig:
    """The task flags over the config file's `validate` section (and the quantizer's task): a flag left at
    its default keeps the file's value; --gate adds to the file's gates."""
    v = cfg.validate_
    if task != "auto" or task_output or task_params:
        t = task_config_from_flags(task, task_output, task_params)
        v = dataclasses.replace(v, task=t)
        cfg = dataclasses.replace(cfg, quant=dataclasses.replace(cfg.quant, task=t))
    if user_metric:
        v = dataclasses.replace(v, metric=user_metric)
    if gate_exprs:
        v = dataclasses.replace(v, gates=tuple(v.gates) + tuple(gate_exprs))
    if not default_gates:
        v = dataclasses.replace(v, default_gates=False)
    cfg = dataclasses.replace(cfg, validate_=v)
    cfg.validate()
    return cfg


@click.command("convert")
@click.argument("model")
@click.option("-o", "--output-dir", required=True, type=click.Path(file_okay=False))
@click.option("--calibration", "-c", type=click.Path(), help="Calibration data .npz, or an image folder, text file or WAV files (streamed).")
@click.option("--validation", "-v", type=click.Path(), help="Validation data .npz (with labels for top-1), or an image folder "
              "(class subfolders = labels), text or WAV files.")
@click.option("--config", type=click.Path(), help="PipelineConfig JSON file (see --dump-config); its 'data' section sets the sources.")
@click.option("--prune-ratio", type=float, help="Enable ONNX structured pruning at this ratio.")
@click.option("--no-quantize", is_flag=True)
@click.option("--runs", type=int, help="Benchmark runs per model.")
@click.option("--input", "inputs", multiple=True, help="Torch models: NAME:Nx1x28x28[:dtype] (MODEL is then a factory, TorchScript or .pt2).")
@click.option("--weights", type=click.Path(), help="Torch models: state dict for the factory.")
@click.option("--train-ratio", type=float, help="Torch models: structured pruning ratio, fine-tuned by distillation.")
@click.option("--train-epochs", type=int, help="Torch models: distillation epochs.")
@click.option("--train-data", type=click.Path(), help="Torch models: data to distill on (default: the calibration data).")
@task_options
@input_layout_option
@data_options
@json_option
@handle_errors
def convert_cmd(model, output_dir, calibration, validation, config, prune_ratio, no_quantize, runs, inputs, weights,
                train_ratio, train_epochs, train_data, as_json, input_layout, data_flags, task, task_output, task_params,
                user_metric, gate_exprs, default_gates):
    """Run the stages in order and write a report: [export, prune-distill,] simplify, prune, quantize,
    validate, bench. MODEL is an .onnx file, or with --input a torch model (factory, TorchScript, .pt2)."""
    cfg = _pipeline_from_flags(config, prune_ratio=prune_ratio, no_quantize=no_quantize, runs=runs,
                               train_ratio=train_ratio, train_epochs=train_epochs, input_layout=input_layout)
    cfg = _with_task_flags(cfg, task, task_output, task_params, user_metric, gate_exprs, default_gates)
    source = model
    if inputs:
        from ..pipeline import TorchSource
        from ..torchload import load_any, parse_input_spec

        specs = [parse_input_spec(i) for i in inputs]
        name = Path(model.split(":")[0]).stem or "model"
        source = TorchSource(load_any(model, weights), specs, name)
    elif cfg.train.enabled:
        raise InputError("--train-ratio needs a torch model: pass MODEL as a factory with --input (and --weights)")
    cfg = dataclasses.replace(cfg, data=build_data_config(base=cfg.data, **data_flags))
    if not inputs:  # images, text, audio: opened and checked here with the data settings, before any work
        calibration, validation = _open_sources(model, cfg, calibration, validation, as_json)
    _run_convert(source, output_dir, cfg, calibration, validation, as_json, train_data)


def _open_sources(model, cfg, calibration, validation, as_json):
    from ..data import model_layout
    from ..io import load_model

    if not calibration and not validation:
        return calibration, validation
    m = load_model(model)
    layout = model_layout(m, cfg.data.input_layout)
    say = None if as_json else (lambda msg: click.echo(msg, err=True))
    return tuple(data_arg(p, layout, cfg.data, m, say) if p else p for p in (calibration, validation))


@click.command("demo")
@click.option("-o", "--output-dir", default="onnxcompress-demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--runs", type=int, default=300, show_default=True, help="Benchmark runs per model.")
@click.option("--data", "data_kind", type=click.Choice(["arrays", "images", "text"]), default="arrays", show_default=True,
              help="images: the bundled arrays written as a Fashion-MNIST PNG folder (class subfolders) first, and "
                   "read from it; text: a small encoder with its own tokenizer.json, made here, on a .txt file.")
@json_option
@handle_errors
def demo_cmd(output_dir, runs, data_kind, as_json):
    """Convert the bundled Fashion-MNIST model with the bundled calibration and validation data."""
    model, calib, val = bundled_files()
    cfg = _pipeline_from_flags(None, runs=runs)
    if data_kind != "arrays":
        from ..sources import demo

        data_dir = Path(output_dir) / f"{data_kind}-data"
        if data_kind == "images":  # 512 + 500 PNGs, generated at run time (the repository keeps only the arrays)
            calib = demo.write_fashion_folder(BUNDLED_CALIB, data_dir / "calibration")
            val = demo.write_fashion_folder(BUNDLED_VAL, data_dir / "validation", limit=500)
            cfg = dataclasses.replace(cfg, data=demo.fashion_data_config())
        else:
            files = demo.write_text_demo(data_dir)
            model, calib, val = files["model"], files["text"], files["text"]
            cfg = dataclasses.replace(cfg, data=build_data_config(data_config_file=str(files["data_config"])))
        if not as_json:
            click.echo(f"demo data written to {data_dir}", err=True)
        calib, val = _open_sources(model, cfg, calib, val, as_json)
    _run_convert(model, output_dir, cfg, calib, val, as_json)


COMMANDS = [simplify_cmd, convert_cmd, demo_cmd]
