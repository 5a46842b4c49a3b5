"""`target setup|status|clean ARCH`: the emulated edge target; and the `--platform` side of validate, inspect
and bench (their commands call in here when --platform is given)."""
from __future__ import annotations

from typing import Any

import click

from .common import emit, handle_errors, json_option

ARCHES = click.Choice(["arm64", "aarch64"], case_sensitive=False)


def _say(msg: str) -> None:
    click.echo(f"target: {msg}", err=True)


def platform_option(fn):
    return click.option(
        "--platform", "platform_spec", metavar="arm64[:CPU]",
        help="Also run on an emulated target (qemu; set it up once with 'onnxcompress target setup arm64'); CPU: "
             "cortex-a76 (default: dot product), cortex-a72 (Raspberry Pi 4: none) or max (i8mm too).")(fn)


def _size(n: Any) -> str:
    return f"{n / 1e9:.2f} GB" if isinstance(n, (int, float)) else "?"


@click.group("target")
def target_group() -> None:
    """The emulated edge target (arm64 under qemu) that validate/inspect/quantize check models on."""


@target_group.command("setup")
@click.argument("arch", type=ARCHES, default="arm64")
@click.option("--force", is_flag=True, help="Rebuild from nothing even when the target is ready.")
@click.option("--cache", type=click.Path(file_okay=False), help="Directory for the target (default "
              "~/.cache/onnxcompress/targets/ARCH).")
@json_option
@handle_errors
def setup_cmd(arch, force, cache, as_json):
    """Build the emulated ARCH target once (Debian + Python + the host's onnxruntime version, ~4 minutes and
    0.8 GB; needs root, debootstrap and qemu-user-static). Idempotent: a ready target is left as it is."""
    from ..platform import get_backend

    st = get_backend(arch, cache).setup(progress=_say, force=force)
    emit(as_json, st, _status_text(st))


@target_group.command("status")
@click.argument("arch", type=ARCHES, default="arm64")
@click.option("--cache", type=click.Path(file_okay=False))
@json_option
@handle_errors
def status_cmd(arch, cache, as_json):
    """Whether the emulated ARCH target is set up, its onnxruntime version and size. Exit 0 either way."""
    from ..platform import get_backend

    b = get_backend(arch, cache)
    st = b.status()
    problem = b.available()
    if problem:
        st["missing"] = problem
    emit(as_json, st, _status_text(st))


@target_group.command("clean")
@click.argument("arch", type=ARCHES, default="arm64")
@click.option("--cache", type=click.Path(file_okay=False))
@handle_errors
def clean_cmd(arch, cache):
    """Remove the cached ARCH target."""
    from ..platform import get_backend

    b = get_backend(arch, cache)
    click.echo(f"removed {b.dir}" if b.clean() else f"nothing to remove: {b.dir} does not exist")


def _status_text(st: dict) -> str:
    if st.get("ready"):
        text = (f"{st['arch']}: ready in {st['path']} ({st['backend']}, python {st['python']}, onnxruntime "
                f"{st['onnxruntime']} = host's, {_size(st.get('size_bytes'))})")
    else:
        text = f"{st['arch']}: not ready: {st['why']}"
    return text + (f"\n{st['missing']}" if st.get("missing") else "")


# -- --platform for validate / inspect / bench -------------------------------------------------------------
def _metrics(task: dict[str, Any]) -> str:
    from ..evaluate.validate import _metric_text

    return ", ".join(_metric_text(k, v) for k, v in task["metrics"].items() if not k.startswith("reference_"))


def step_text(s: dict[str, Any]) -> str:
    if s["max_steps"] is None:
        return "output steps n/a (float output)"
    scale = f"step {s['scale']:.4g}" if isinstance(s["scale"], float) else s["scale"]
    return f"max {s['max_steps']:g} output steps ({scale})"


def validate_lines(res: dict[str, Any]) -> list[str]:
    from ..evaluate.gates import AccuracyResult
    from .quant import fusion_line

    info = res["target_info"]
    lines = [f"{res['platform']} emulated by {res['backend']} (onnxruntime {info.get('onnxruntime')}, CPU features: "
             f"{' '.join(info.get('cpu_features', [])) or 'none'}); {res['samples']} samples from {res['data']}",
             f"candidate vs reference on {res['platform']}: task {res['on_target']['task']['name']}: "
             f"{_metrics(res['on_target']['task'])}",
             f"candidate vs reference on the {res['host']}: {_metrics(res['on_host']['task'])}"]
    for k in ("candidate", "reference"):
        lines.append(f"{k}, host vs {res['platform']}: {_metrics(res['host_vs_target'][k]['task']) or 'no task metric'}")
        lines += [f"  output {name}: {step_text(s)}, max abs diff {s['max_abs_diff']:.3g}, {s['differing']} of "
                  f"{s['values']} values differ" for name, s in res["steps"][k].items()]
    for side in ("host", "target"):
        f = res["fusion"][side]
        if f.get("available"):
            lines.append(f"fusion on {f['platform']}: " + fusion_line(f))
    return lines + AccuracyResult.from_dict(res).lines()


def validate_platform(spec_text, reference, candidate, data, cfg, samples, as_json, input_layout) -> None:
    from ..evaluate.gates import AccuracyResult
    from ..platform import parse_platform, validate_on_platform
    from .evaluate import exit_on_gates

    spec = parse_platform(spec_text)
    res = validate_on_platform(reference, candidate, data, spec, cfg, samples,
                               progress=None if as_json else _say, input_layout=input_layout)
    emit(as_json, res, "\n".join(validate_lines(res)))
    exit_on_gates(AccuracyResult.from_dict(res))


def inspect_platform(spec_text, model, feed, shapes, as_json) -> dict[str, Any]:
    """The target's fusion audit for inspect (its lines are printed by inspect next to the host's)."""
    from ..platform import inspect_on_platform, parse_platform

    return inspect_on_platform(model, parse_platform(spec_text), feed, shapes, progress=None if as_json else _say)


def bench_platform(spec_text, models, feed, as_json) -> None:
    """bench --platform: each model runs once on the target, and no time is printed."""
    from ..io import load_raw
    from ..platform import get_backend, parse_platform

    spec = parse_platform(spec_text)
    backend = get_backend(spec.arch)
    run = backend.run_models({m: load_raw(m, check=False) for m in models}, [dict(feed)], spec.cpu, optimized=False,
                             progress=None if as_json else _say)
    why = ("no timings under emulation: emulated speed is not device speed (qemu translates every instruction); "
           "time the model on the device itself, and use validate/inspect --platform for numerics and fusion")
    res = {"platform": str(spec), "emulated": True, "timings": None, "why": why, "target_info": run.info,
           "models": {m: {"ran": True, "outputs": list(run.outputs[m][0])} for m in models}}
    emit(as_json, res, "\n".join([f"{m}: runs on {spec} (emulated, onnxruntime {run.info.get('onnxruntime')})"
                                  for m in models] + [why]))


COMMANDS = [target_group]
