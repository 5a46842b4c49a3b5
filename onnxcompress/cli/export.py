"""`export`: torch -> ONNX with a numeric check against torch."""
from __future__ import annotations

import click

from .common import emit, handle_errors, json_option

from ..config import ExportConfig


@click.command("export")
@click.argument("factory")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .onnx path.")
@click.option("--weights", type=click.Path(), help="State dict: .pt/.pth (loaded with weights_only=True) or .safetensors.")
@click.option("--input", "inputs", multiple=True, required=True, help="NAME:1x3x224x224[:dtype]; repeat for several inputs; a named dim (N) is dynamic.")
@click.option("--opset", type=int, default=ExportConfig.opset, show_default=True)
@click.option("--exporter", type=click.Choice(["auto", "dynamo", "torchscript"]), default="auto", show_default=True)
@click.option("--static-batch", is_flag=True, help="Export with a fixed batch dimension.")
@click.option("--output-name", "output_names", multiple=True, help="Names for the model outputs, in order; repeatable.")
@json_option
@handle_errors
def export_cmd(factory, output, weights, inputs, opset, exporter, static_batch, output_names, as_json):
    """Export a torch model to ONNX and check it against torch.

    FACTORY is pkg.module:fn or file.py:fn (with --weights), a TorchScript file, or a torch.export .pt2."""
    from ..export import export
    from ..io import check_output_path
    from ..torchload import load_any, parse_input_spec

    specs = [parse_input_spec(s) for s in inputs]
    cfg = ExportConfig(opset=opset, exporter=exporter, dynamic_batch=not static_batch)
    cfg.validate()
    out = check_output_path(output, weights)
    module = load_any(factory, weights)
    rec = export(module, specs, out, cfg, output_names=list(output_names) or None)
    s = rec.stats
    emit(as_json, rec.to_dict(), f"wrote {out} (exporter {s['exporter']}, opset {s['opset']}); "
         f"max abs error vs torch {s['max_abs_error']:.2e} on {s['checked_inputs']} inputs")


COMMANDS = [export_cmd]
