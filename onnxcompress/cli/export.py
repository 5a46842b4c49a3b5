"""`export`: torch -> ONNX with a numeric check against torch."""
from __future__ import annotations

import click

from .common import emit, handle_errors, json_option

from ..config import CHOICES, ExportConfig


def torch_source_options(fn):
    """--weights and --input, shared by the commands that load a torch model."""
    fn = click.option("--input", "inputs", multiple=True, required=True,
                      help="NAME:1x3x224x224[:dtype]; repeat for several inputs. A named dim is dynamic "
                           "(Nx3x224x224, 1xseq=128:int64); equal names share a size.")(fn)
    fn = click.option("--weights", type=click.Path(),
                      help="State dict for a factory: .pt/.pth (torch.load weights_only=True) or .safetensors.")(fn)
    return fn


def export_options(fn):
    fn = click.option("--static-batch", is_flag=True, help="Export every axis static (no dynamic batch or named dims).")(fn)
    fn = click.option("--exporter", type=click.Choice(CHOICES["export.exporter"]), default=ExportConfig.exporter,
                      show_default=True, help="auto: dynamo, falling back to torchscript (reason recorded).")(fn)
    fn = click.option("--opset", type=int, default=ExportConfig.opset, show_default=True,
                      help="ONNX opset (the dynamo exporter needs >= 18 and uses 18 below that).")(fn)
    return fn


def check_inputs_from(path, specs, samples: int) -> list[tuple]:
    """Batches of real inputs (arrays named after the inputs) to compare ONNX and torch on."""
    from ..train.run import load_training_data

    xs, _ = load_training_data(path, specs)
    n = min(samples, len(xs[0]))
    return [tuple(a[i:i + 8] for a in xs) for i in range(0, n, 8)]


@click.command("export")
@click.argument("source")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .onnx path.")
@torch_source_options
@export_options
@click.option("--output-name", "output_names", multiple=True, help="Names for the model outputs, in order; repeatable.")
@click.option("--check-data", type=click.Path(), help="Also compare on these inputs (.npz with arrays named after the inputs).")
@click.option("--check-samples", type=int, default=32, show_default=True, help="Samples of --check-data to compare on.")
@json_option
@handle_errors
def export_cmd(source, output, weights, inputs, opset, exporter, static_batch, output_names, check_data,
               check_samples, as_json):
    """Export a torch model to ONNX, checked against torch on random and on provided inputs.

    SOURCE is pkg.module:function or path/to/file.py:function returning an nn.Module (weights from
    --weights), a TorchScript file, or a torch.export .pt2 program."""
    from ..export import export
    from ..io import check_output_path
    from ..torchload import load_any, parse_input_spec

    specs = [parse_input_spec(s) for s in inputs]
    cfg = ExportConfig(opset=opset, exporter=exporter, dynamic_batch=not static_batch)
    cfg.validate()
    out = check_output_path(output, weights, check_data, source.rpartition(":")[0] or source)
    checks = check_inputs_from(check_data, specs, check_samples) if check_data else None
    module = load_any(source, weights)
    rec = export(module, specs, out, cfg, output_names=list(output_names) or None, check_inputs=checks)
    s = rec.stats
    lines = [f"wrote {out}{' (+ ' + str(out) + '.data)' if s['external_data'] else ''} "
             f"(exporter {s['exporter']}, opset {s['opset']}"
             f"{'' if s['opset'] == s['opset_requested'] else ', the dynamo exporter needs >= 18'})",
             f"checked against torch on {s['checked_inputs']} inputs ({s['checked_provided']} provided): "
             f"max abs error {s['max_abs_error']:.2e}, max rel error {s['max_rel_error']:.2e}"]
    if "fallback_reason" in s:
        lines.append(f"fell back: {s['fallback_reason']}")
    emit(as_json, rec.to_dict(), "\n".join(lines))


COMMANDS = [export_cmd]
