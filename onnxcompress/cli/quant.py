"""`quantize` (and model inspection): int8 QDQ."""
from __future__ import annotations

import click

from .common import emit, handle_errors, json_option

from ..config import QuantConfig
from ..errors import AccuracyRegression, InputError


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
        click.option("--op-types", multiple=True, help="Only quantize these op types (default: all ORT supports); repeatable."),
    ]):
        fn = opt(fn)
    return fn


def _quant_config(mode, target, calibration_method, per_tensor, activation_type, samples, exclude, op_types) -> QuantConfig:
    cfg = QuantConfig(mode=mode, target=target, calibration=calibration_method, per_channel=not per_tensor,
                      activation_type=activation_type, calibration_samples=samples, exclude=tuple(exclude),
                      op_types=tuple(op_types))
    cfg.validate()
    return cfg


@click.command("quantize")
@click.argument("model", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option("--calibration", "-c", type=click.Path(), help="Calibration data (.npz named after the inputs).")
@click.option("--require-fusion", type=float, help="Gate: minimum share of MACs ORT runs on int8 kernels (e.g. 0.95); exit 1 below it.")
@_quant_options
@json_option
@handle_errors
def quantize_cmd(model, output, calibration, require_fusion, as_json, **qopts):
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
    fusion = rec.stats.get("fusion", {})
    text = f"wrote {out} ({rec.stats['mode']}, {rec.stats['target']['why']})"
    if fusion:
        text += (f"\nint8 kernels: {fusion['int8_nodes']}/{fusion['compute_nodes']} compute nodes, "
                 f"{100 * fusion['int8_mac_share']:.1f}% of MACs")
        text += "".join(f"\n  float island: {f}" for f in fusion["float_islands"])
    emit(as_json, rec.to_dict(), text)
    if require_fusion is not None and fusion.get("int8_mac_share", 0.0) < require_fusion:
        raise AccuracyRegression(f"fusion gate failed: {100 * fusion.get('int8_mac_share', 0.0):.1f}% of MACs on int8 "
                                 f"kernels < required {100 * require_fusion:.1f}%; see the float islands above")


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
        lines.append(f"{provider}: {f['int8_nodes']}/{f['compute_nodes']} compute nodes on int8 kernels, "
                     f"{100 * f['int8_mac_share']:.1f}% of MACs")
        lines += [f"  float: {r['node']} ({r['op']} -> {r['kernel']}, {r['macs']:,} MACs)" for r in f["float_islands"][:20]]
    emit(as_json, st, "\n".join(lines))


COMMANDS = [quantize_cmd, inspect_cmd]
