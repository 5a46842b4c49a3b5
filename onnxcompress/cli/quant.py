"""`quantize` (and model inspection): int8 QDQ."""
from __future__ import annotations

import click

from .common import emit, handle_errors, json_option

from ..config import QuantConfig
from ..errors import InputError


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


COMMANDS = [quantize_cmd]
