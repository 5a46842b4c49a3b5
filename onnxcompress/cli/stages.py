"""Pipeline-stage commands: export, simplify, quantize, validate, bench, convert, demo."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from ..config import BenchConfig, ExportConfig, PipelineConfig, QuantConfig, ValidateConfig, load_config
from ..errors import AccuracyRegression, InputError
from .common import emit, handle_errors, json_option

REPO = Path(__file__).resolve().parents[2]
BUNDLED_MODEL = REPO / "models" / "fashion_net.onnx"
BUNDLED_CALIB = REPO / "calibration" / "fashion_calib.npz"
BUNDLED_VAL = REPO / "calibration" / "fashion_val.npz"


def _csv_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a comma-separated list of integers, e.g. 1,8") from None


@click.command("export")
@click.argument("factory")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .onnx path.")
@click.option("--weights", type=click.Path(), help="State dict: .pt/.pth (loaded with weights_only=True) or .safetensors.")
@click.option("--input", "inputs", multiple=True, required=True, help="NAME:1x3x224x224[:dtype]; repeat for several inputs; a named dim (N) is dynamic.")
@click.option("--opset", type=int, default=ExportConfig.opset, show_default=True)
@click.option("--exporter", type=click.Choice(["auto", "dynamo", "torchscript"]), default="auto", show_default=True)
@click.option("--static-batch", is_flag=True, help="Export with a fixed batch dimension.")
@json_option
@handle_errors
def export_cmd(factory, output, weights, inputs, opset, exporter, static_batch, as_json):
    """Export a torch model built by FACTORY (pkg.module:fn or file.py:fn) to ONNX and check it against torch."""
    from ..export import export
    from ..io import check_output_path
    from ..torchload import load_module, parse_input_spec

    specs = [parse_input_spec(s) for s in inputs]
    cfg = ExportConfig(opset=opset, exporter=exporter, dynamic_batch=not static_batch)
    cfg.validate()
    out = check_output_path(output, weights)
    module = load_module(factory, weights)
    rec = export(module, specs, out, cfg)
    s = rec.stats
    emit(as_json, rec.to_dict(), f"wrote {out} (exporter {s['exporter']}, opset {s['opset']}); "
         f"max abs error vs torch {s['max_abs_error']:.2e} on {s['checked_inputs']} inputs")


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


def _quant_options(fn):
    for opt in reversed([
        click.option("--mode", type=click.Choice(["static", "dynamic", "auto"]), default="static", show_default=True),
        click.option("--target", type=click.Choice(["auto", "vnni", "avx2", "arm", "generic"]), default="auto", show_default=True,
                     help="CPU the model will run on; chooses int8 types and reduce_range."),
        click.option("--method", "calibration_method", type=click.Choice(["minmax", "percentile", "entropy"]), default="minmax", show_default=True),
        click.option("--per-tensor", is_flag=True, help="Per-tensor weights (default: per-channel)."),
        click.option("--activation-type", type=click.Choice(["auto", "uint8", "int8"]), default="auto", show_default=True),
        click.option("--samples", type=int, default=QuantConfig.calibration_samples, show_default=True, help="Calibration samples used."),
        click.option("--exclude", multiple=True, help="Node name kept in FP32; repeatable."),
    ]):
        fn = opt(fn)
    return fn


def _quant_config(mode, target, calibration_method, per_tensor, activation_type, samples, exclude) -> QuantConfig:
    cfg = QuantConfig(mode=mode, target=target, calibration=calibration_method, per_channel=not per_tensor,
                      activation_type=activation_type, calibration_samples=samples, exclude=tuple(exclude))
    cfg.validate()
    return cfg


@click.command("quantize")
@click.argument("model", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option("--calibration", "-c", type=click.Path(), help="Calibration data (.npz named after the inputs).")
@_quant_options
@json_option
@handle_errors
def quantize_cmd(model, output, calibration, as_json, **qopts):
    """Quantize MODEL to int8 QDQ (static with calibration data, or dynamic)."""
    from ..data import input_specs, load_data
    from ..io import check_output_path, load_model, save_model
    from ..quant.qdq import quantize

    cfg = _quant_config(**qopts)
    out = check_output_path(output, model, calibration)
    m = load_model(model)
    data = load_data(calibration, input_specs(m)) if calibration else None
    if data is None and cfg.mode != "dynamic":
        raise InputError("static quantization needs calibration data; pass --calibration DATA.npz or use --mode dynamic")
    q, rec = quantize(m, data, cfg)
    save_model(q, out)
    emit(as_json, rec.to_dict(), f"wrote {out} ({rec.stats['mode']}, {rec.stats['target']['why']})")


def _gate_options(fn):
    for opt in reversed([
        click.option("--max-drop", type=float, default=ValidateConfig.max_drop, show_default=True, help="Max top-1 drop in points (needs labels)."),
        click.option("--min-agreement", type=float, help="Min prediction agreement with REF in %."),
        click.option("--min-cosine", type=float, help="Min mean cosine similarity of outputs."),
        click.option("--max-size", type=int, help="Max candidate size in bytes."),
        click.option("--max-latency-ratio", type=float, help="Max candidate/reference median latency."),
        click.option("--batch-size", type=int, default=ValidateConfig.batch_size, show_default=True),
        click.option("--max-samples", type=int, help="Use at most this many samples."),
    ]):
        fn = opt(fn)
    return fn


@click.command("validate")
@click.argument("reference", type=click.Path())
@click.argument("candidate", type=click.Path())
@click.option("--data", "-d", type=click.Path(), help="Validation data .npz (with 'labels' for top-1); random inputs if omitted.")
@_gate_options
@json_option
@handle_errors
def validate_cmd(reference, candidate, data, as_json, **gates):
    """Compare CANDIDATE against REFERENCE; exit 1 when a gate fails."""
    from ..evaluate.validate import validate

    cfg = ValidateConfig(**gates)
    res = validate(reference, candidate, data, cfg)
    lines = [f"{k}: {v:.3f}" for k, v in res.items() if k.endswith(("top1", "top5", "drop")) and isinstance(v, float)]
    for name, m in res["outputs"].items():
        lines.append(f"output {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in m.items()))
    lines += [("PASS " if g["passed"] else "FAIL ") + g["message"] for g in res["gates"]]
    emit(as_json, res, "\n".join(lines))
    if not res["passed"]:
        failed = [g["message"] for g in res["gates"] if not g["passed"]]
        if not as_json:
            pass
        raise AccuracyRegression("gate failed: " + "; ".join(failed))


@click.command("bench")
@click.argument("models", nargs=-1, required=True, type=click.Path())
@click.option("--data", "-d", type=click.Path(), help="Inputs to time with (.npz); random if omitted.")
@click.option("--providers", default="cpu", show_default=True, help="Comma-separated: cpu, openvino, ...")
@click.option("--threads", default="1", show_default=True, help="Comma-separated intra-op thread counts.")
@click.option("--batch", default="1", show_default=True, help="Comma-separated batch sizes.")
@click.option("--runs", type=int, default=BenchConfig.runs, show_default=True)
@click.option("--warmup", type=int, default=BenchConfig.warmup, show_default=True)
@click.option("--time-budget", type=float, help="Seconds per configuration instead of a run count.")
@json_option
@handle_errors
def bench_cmd(models, data, providers, threads, batch, runs, warmup, time_budget, as_json):
    """Time MODELS side by side (interleaved); the first model is the baseline for ratios."""
    from ..data import input_specs, load_data
    from ..io import load_model, model_size
    from ..pipeline import benchmark

    cfg = BenchConfig(warmup=warmup, runs=runs, time_budget=time_budget, batch_sizes=_csv_ints(batch),
                      threads=_csv_ints(threads), providers=tuple(p.strip() for p in providers.split(",") if p.strip()))
    cfg.validate()
    paths = {}
    for m in models:
        load_model(m)
        key = Path(m).name if Path(m).name not in paths else m
        paths[key] = Path(m)
    ds = load_data(data, input_specs(load_model(models[0], check=False))) if data else None
    result = {"models": {k: {"path": str(p), "size_bytes": model_size(p)} for k, p in paths.items()}, "results": {}}
    for prov in cfg.providers:
        for name, res in benchmark(paths, ds, cfg, prov).items():
            result["results"].setdefault(name, {}).update(res)
    lines = []
    for name, res in result["results"].items():
        for key, s in res.items():
            lines.append(f"{name:30s} {key:18s} median {s['median_ms']:8.3f} ms  p90 {s['p90_ms']:8.3f}  "
                         f"{s['throughput_per_s']:9.1f}/s  speedup {s['speedup']:.2f}x")
    emit(as_json, result, "\n".join(lines))


def _pipeline_from_flags(config, **kw) -> PipelineConfig:
    cfg = load_config(config) if config else PipelineConfig()
    if kw.get("no_quantize"):
        cfg = dataclasses.replace(cfg, quant=dataclasses.replace(cfg.quant, enabled=False))
    if kw.get("prune_ratio") is not None:
        cfg = dataclasses.replace(cfg, prune=dataclasses.replace(cfg.prune, enabled=True, ratio=kw["prune_ratio"]))
    if kw.get("runs") is not None:
        cfg = dataclasses.replace(cfg, bench=dataclasses.replace(cfg.bench, runs=kw["runs"]))
    cfg.validate()
    return cfg


def _run_convert(model, out_dir, cfg, calibration, validation, as_json):
    from ..pipeline import convert
    from ..report import stage_table

    report = convert(model, out_dir, cfg, calibration, validation,
                     progress=None if as_json else (lambda s: click.echo(f"[{s}]", err=True)))
    emit(as_json, report, stage_table(report) + f"\n\nreport: {', '.join(report['files'])}")
    return report


@click.command("convert")
@click.argument("model", type=click.Path())
@click.option("-o", "--output-dir", required=True, type=click.Path(file_okay=False))
@click.option("--calibration", "-c", type=click.Path(), help="Calibration data .npz.")
@click.option("--validation", "-v", type=click.Path(), help="Validation data .npz (with labels for top-1).")
@click.option("--config", type=click.Path(), help="PipelineConfig JSON file (see --dump-config).")
@click.option("--prune-ratio", type=float, help="Enable ONNX structured pruning at this ratio.")
@click.option("--no-quantize", is_flag=True)
@click.option("--runs", type=int, help="Benchmark runs per model.")
@json_option
@handle_errors
def convert_cmd(model, output_dir, calibration, validation, config, prune_ratio, no_quantize, runs, as_json):
    """Run the stages in order (simplify, prune, quantize, validate, bench) and write a report."""
    cfg = _pipeline_from_flags(config, prune_ratio=prune_ratio, no_quantize=no_quantize, runs=runs)
    _run_convert(model, output_dir, cfg, calibration, validation, as_json)


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


COMMANDS = [export_cmd, simplify_cmd, quantize_cmd, validate_cmd, bench_cmd, convert_cmd, demo_cmd]
