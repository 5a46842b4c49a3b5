"""`inspect`: ops, parameters, MACs and the int8 fusion audit of a model."""
from __future__ import annotations

import time

import click

from .common import emit, handle_errors, input_layout_option, json_option, layout_items
from .quant import fusion_line
from .target import inspect_platform, platform_option

input_shape_option = click.option(
    "--input-shape", "input_shape", multiple=True, metavar="NAME:DIMS",
    help="Input dims for MAC counts when the model's spatial/sequence dims are dynamic, e.g. images:1x3x640x640 "
         "(repeated or comma-separated); data, where given, is used instead.")


class StepPrinter:
    """A library progress callback (done, total, what) printed as one stderr line per step, with the time
    since the command started: long steps (analysis, layer-by-layer reconstruction) show they are moving."""

    def __init__(self, command: str) -> None:
        self.command, self.t0 = command, time.perf_counter()

    def __call__(self, done: int, total: int, what: str) -> None:
        click.echo(f"{self.command}: {what} [{time.perf_counter() - self.t0:.1f} s]", err=True)


def _macs(r: dict) -> str:
    return f"{r['macs']:,} MACs" if r.get("macs") is not None else "MACs unknown"


@click.command("inspect")
@click.argument("model", type=click.Path())
@click.option("--provider", default="cpu", show_default=True, help="Execution provider for the fusion audit.")
@click.option("--data", "-d", type=click.Path(), help="Data (.npz named after the inputs, or any source `quantize -c` "
              "takes): MACs come from the shapes one sample gives (needed when spatial/sequence dims are dynamic).")
@input_shape_option
@platform_option
@input_layout_option
@json_option
@handle_errors
def inspect_cmd(model, provider, data, input_shape, input_layout, as_json, platform_spec):
    """Print ops, parameters, MACs and (for quantized models) the int8 fusion audit of MODEL.

    MACs are per sample. With dynamic spatial or sequence dims they need the real shapes: give --data or
    --input-shape; without them no MAC figure is printed (one computed with those dims at 1 would be wrong)."""
    from ..data import example_feed, input_specs, load_data, model_layout
    from ..frontdoor import facts, load as load_front
    from ..io import model_size
    from ..quant.audit import audit
    from ..stats import check_input_shapes, model_stats, parse_input_shapes

    shapes = parse_input_shapes(input_shape)
    m, front = load_front(model)  # what the front door changed is shown below
    check_input_shapes(m, shapes)
    feed = None
    if data:
        layout = model_layout(m, layout_items(input_layout))
        feed = example_feed(load_data(data, layout), 1, m)
    st = model_stats(m, feed, shapes)
    st["size_bytes"] = model_size(model)
    st["inputs"] = [{"name": s.name, "shape": [d if d else "?" for d in s.shape], "dtype": str(s.dtype)} for s in input_specs(m)]
    st["outputs"] = [o.name for o in m.graph.output]
    st["fusion"] = audit(m, provider, feed, shapes)
    if platform_spec:  # the graph ORT optimizes on the emulated target, audited like the host's
        from ..platform.check import host_name

        st["fusion"]["platform"] = host_name()
        st["fusion_target"] = inspect_platform(platform_spec, m, feed, shapes, as_json)
    macs = (f"{st['macs']:,} MACs per sample" + (f" (shapes from {st['shapes_from']})" if st.get("shapes_from") in
                                                  ("data", "input shapes") else "")
            if st["macs"] is not None else "MACs not counted")
    lines = [f"{model}: {st['size_bytes'] / 1e6:.2f} MB, {st['params']:,} parameters, {macs}",
             "inputs: " + ", ".join(f"{i['name']} {'x'.join(map(str, i['shape']))} {i['dtype']}" for i in st["inputs"]),
             "ops: " + ", ".join(f"{k} {v}" for k, v in st["ops"].items())]
    st["frontdoor"] = {**front.to_dict(), "facts": facts(m, front).to_dict()}
    if st["frontdoor"]["facts"]["quantized"]:
        lines.append(f"already quantized: {st['frontdoor']['facts']['quantized']}")
    if front.changed or front.skipped:
        lines.append("front door: " + "; ".join(front.changed + [f"{s.target}: {s.reason}" for s in front.skipped]))
    if st["macs"] is None:
        lines.append(st["macs_note"])
    elif st["macs_unknown_nodes"]:
        lines.append(f"MACs leave out {len(st['macs_unknown_nodes'])} nodes of unknown shape: "
                     + ", ".join(st["macs_unknown_nodes"][:5]) + (", ..." if len(st["macs_unknown_nodes"]) > 5 else ""))
    f = st["fusion"]
    if f.get("available"):
        lines.append(f"{provider}{' on ' + f['platform'] if f.get('platform') else ''}: " + fusion_line(f))
        lines += [f"  float island: {r['node']} ({r['op']} -> {r['kernel']}, {_macs(r)})" for r in f["float_islands"][:20]]
        if f["kept_fp32"]:
            known = [r["macs"] for r in f["kept_fp32"] if r["macs"] is not None]
            lines.append(f"  kept in FP32 (no Q/DQ): {len(f['kept_fp32'])} nodes"
                         + (f", {sum(known):,} MACs" if len(known) == len(f["kept_fp32"]) else ""))
    t = st.get("fusion_target")
    if t and t.get("available"):
        lines.append(f"{t['platform']}: " + fusion_line(t))
        lines += [f"  float island: {r['node']} ({r['op']} -> {r['kernel']}, {_macs(r)})" for r in t["float_islands"][:20]]
    emit(as_json, st, "\n".join(lines))


COMMANDS = [inspect_cmd]
