"""`inspect`: ops, parameters, MACs and the int8 fusion audit of a model."""
from __future__ import annotations

import click

from .common import emit, handle_errors, json_option
from .quant import fusion_line


@click.command("inspect")
@click.argument("model", type=click.Path())
@click.option("--provider", default="cpu", show_default=True, help="Execution provider for the fusion audit.")
@json_option
@handle_errors
def inspect_cmd(model, provider, as_json):
    """Print ops, parameters, MACs and (for quantized models) the int8 fusion audit of MODEL."""
    from ..data import input_specs
    from ..io import load_model, model_size
    from ..quant.audit import audit
    from ..stats import model_stats

    m = load_model(model)
    st = model_stats(m)
    st["size_bytes"] = model_size(model)
    st["inputs"] = [{"name": s.name, "shape": [d if d else "?" for d in s.shape], "dtype": str(s.dtype)} for s in input_specs(m)]
    st["outputs"] = [o.name for o in m.graph.output]
    st["fusion"] = audit(m, provider)
    lines = [f"{model}: {st['size_bytes'] / 1e6:.2f} MB, {st['params']:,} parameters, {st['macs']:,} MACs per sample",
             "inputs: " + ", ".join(f"{i['name']} {'x'.join(map(str, i['shape']))} {i['dtype']}" for i in st["inputs"]),
             "ops: " + ", ".join(f"{k} {v}" for k, v in st["ops"].items())]
    f = st["fusion"]
    if f.get("available"):
        lines.append(f"{provider}: " + fusion_line(f))
        lines += [f"  float island: {r['node']} ({r['op']} -> {r['kernel']}, {r['macs']:,} MACs)" for r in f["float_islands"][:20]]
        if f["kept_fp32"]:
            lines.append(f"  kept in FP32 (no Q/DQ): {len(f['kept_fp32'])} nodes, {sum(r['macs'] for r in f['kept_fp32']):,} MACs")
    emit(as_json, st, "\n".join(lines))


COMMANDS = [inspect_cmd]
