"""`validate` (task metrics, CI gates) and `bench` (interleaved latency). Flags -> frozen configs -> library calls."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from ..config import TASKS, BenchConfig, TaskConfig, ValidateConfig
from ..evaluate.gates import AccuracyResult
from .common import csv_ints, emit, handle_errors, input_layout_option, json_option, layout_items
from .dataopts import build_data_config, data_arg, data_options, open_data
from .target import bench_platform, platform_option, validate_platform


class ByteSize(click.ParamType):
    """Bytes, optionally with a decimal suffix: 300000, 300k, 1.5M, 2G."""

    name = "bytes"
    _units = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        text = str(value).strip().lower().removesuffix("b")
        unit = text[-1:] if text[-1:] in "kmg" else ""
        try:
            return int(float(text[: len(text) - len(unit)]) * self._units[unit])
        except ValueError:
            self.fail(f"'{value}' is not a size; give bytes such as 300000, 300k or 1.5M", param, ctx)


class Progress:
    """A click progress bar on stderr, fed by the library's (done, total, what) callback; only on a TTY,
    so CI logs and --json output stay clean."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.bar = enabled and sys.stderr.isatty(), None

    def __call__(self, done: int, total: int, what: str) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = click.progressbar(length=total, label=what, file=click.get_text_stream("stderr"), show_pos=True)
            self.bar.__enter__()
        self.bar.label = what
        self.bar.update(done - self.bar.pos)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


def task_config_from_flags(task: str, task_output, task_params) -> TaskConfig:
    """--task NAME, --task-output NAME and --task-param KEY=VALUE -> TaskConfig (checked like a config file)."""
    from ..config import from_dict

    data: dict = {"name": task, "output": task_output}
    for item in task_params:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"'{item}' is not KEY=VALUE, e.g. score_threshold=0.3", param_hint="--task-param")
        try:
            data[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            data[key.strip()] = value
    return from_dict(TaskConfig, data, prefix="task.")


def task_options(fn):
    """The options that say what the model does; shared by validate and convert."""
    for opt in reversed([
        click.option("--task", type=click.Choice(TASKS), default="auto", show_default=True,
                     help="What the model does, so the metrics fit it; auto guesses from the output shapes and prints the guess."),
        click.option("--task-output", help="The output the task metric reads (default: the first)."),
        click.option("--task-param", "task_params", multiple=True, metavar="KEY=VALUE",
                     help="Task setting, repeatable: score_threshold, nms_iou, match_iou, objectness (detection), "
                          "map_threshold (single-channel maps), blank (CTC)."),
        click.option("--metric", "user_metric", metavar="FILE.py:FN",
                     help="Your metric: FN(reference_outputs, candidate_outputs, labels) -> {name: float}; gate on it with --gate."),
        click.option("--gate", "gate_exprs", multiple=True, metavar="METRIC>=LIMIT",
                     help="Gate on any measured metric by name, repeatable: recall>=95, char_agreement>=99, sqnr_db>=30."),
        click.option("--default-gates/--no-default-gates", default=True, show_default=True,
                     help="The task's default gates on metrics no gate of yours names (see README: metrics and gates)."),
    ]):
        fn = opt(fn)
    return fn


def validate_config(task, task_output, task_params, user_metric, gate_exprs, default_gates, **fields) -> ValidateConfig:
    cfg = ValidateConfig(**fields, task=task_config_from_flags(task, task_output, task_params), metric=user_metric,
                         gates=tuple(gate_exprs), default_gates=default_gates)
    cfg.validate()
    return cfg


def exit_on_gates(accuracy: AccuracyResult) -> None:
    """One stderr line per failed gate, exit 1; the one place the CLI turns a verdict into an exit code."""
    failed = accuracy.failures()
    for msg in failed:
        click.echo(f"gate failed: {msg}", err=True)
    if failed:
        sys.exit(1)


def _gate_options(fn):
    for opt in reversed([
        click.option("--max-drop", type=float, default=ValidateConfig.max_drop, show_default=True,
                     help="Max top-1 drop in points (on by default when DATA has labels; given explicitly, labels are required)."),
        click.option("--min-agreement", type=float, help="Min prediction agreement with REFERENCE, in % (classifiers)."),
        click.option("--min-cosine", type=float, help="Min mean cosine similarity of the task's output."),
        click.option("--max-size", type=ByteSize(), help="Max candidate size on disk: bytes, or 300k / 1.5M."),
        click.option("--max-latency-ratio", type=float, help="Max candidate/reference median latency (batch 1, 1 thread)."),
        click.option("--batch-size", type=int, default=ValidateConfig.batch_size, show_default=True),
        click.option("--max-samples", type=int, help="Use at most this many samples."),
        click.option("--layer-samples", type=int, default=ValidateConfig.layer_samples, show_default=True,
                     help="Samples for --layers."),
    ]):
        fn = opt(fn)
    return fn


@click.command("validate")
@click.argument("reference", type=click.Path())
@click.argument("candidate", type=click.Path())
@click.option("--data", "-d", type=click.Path(), help="Validation data .npz or folder (with 'labels' for top-1/top-5), or an "
              "image folder (class subfolders = labels), text or WAV files; random inputs if omitted.")
@click.option("--layers", is_flag=True, help="Also report per-layer SQNR of CANDIDATE against REFERENCE (worst first).")
@click.option("--provider", default="cpu", show_default=True, help="Execution provider to run both models on (cpu, openvino, ...).")
@platform_option
@click.option("--samples", type=int, default=100, show_default=True,
              help="With --platform: samples run on the host and under emulation (a subset: emulation is slow).")
@_gate_options
@task_options
@input_layout_option
@data_options
@json_option
@click.pass_context
@handle_errors
def validate_cmd(ctx, reference, candidate, data, layers, provider, as_json, input_layout, data_flags, platform_spec,
                 samples, **opts):
    """Compare CANDIDATE against REFERENCE with the task's metrics; exit 1 with one line per failed gate.
    --json: docs/validate-schema.json."""
    from ..evaluate.validate import summary_lines, validate

    explicit_drop = ctx.get_parameter_source("max_drop") == ParameterSource.COMMANDLINE and opts["max_drop"] is not None
    cfg = validate_config(**opts, require_labels=explicit_drop)
    budget = build_data_config(**data_flags).memory_budget_bytes()
    if data:  # images, text, audio: opened here with the data flags (arrays: loaded by validate, as before)
        from ..data import model_layout
        from ..io import load_model

        ref = load_model(reference)
        data = data_arg(data, model_layout(ref, layout_items(input_layout)), build_data_config(**data_flags), ref,
                        None if as_json else (lambda msg: click.echo(msg, err=True)))
    if platform_spec:  # the emulated target (cli/target.py): host vs target, its gates, fusion on both
        if layers or provider != "cpu":
            raise click.UsageError("--platform runs ORT's CPU provider on the target; drop --layers/--provider")
        return validate_platform(platform_spec, reference, candidate, data, cfg, samples, as_json,
                                 layout_items(input_layout))
    with Progress(not as_json) as bar:
        res = validate(reference, candidate, data, cfg, provider=provider, layers=layers, progress=bar,
                       input_layout=layout_items(input_layout), memory_budget=budget)
    emit(as_json, res, "\n".join(summary_lines(res)))
    exit_on_gates(AccuracyResult.from_dict(res))


@click.command("bench")
@click.argument("models", nargs=-1, required=True, type=click.Path())
@click.option("--data", "-d", type=click.Path(), help="Inputs to time with (.npz, or images, text, WAV files); random if omitted.")
@click.option("--providers", default="cpu", show_default=True, help="Comma-separated: cpu, openvino, ...")
@click.option("--threads", default="1", show_default=True, help="Comma-separated intra-op thread counts (1 = edge-like).")
@click.option("--batch", default="1", show_default=True, help="Comma-separated batch sizes.")
@click.option("--runs", type=int, default=BenchConfig.runs, show_default=True, help="Timed rounds per setting.")
@click.option("--warmup", type=int, default=BenchConfig.warmup, show_default=True)
@click.option("--time-budget", type=float, help="Seconds per setting instead of a run count.")
@click.option("--memory/--no-memory", default=True, show_default=True, help="Peak memory per model and provider (a fresh process each).")
@platform_option
@input_layout_option
@data_options
@json_option
@handle_errors
def bench_cmd(models, data, providers, threads, batch, runs, warmup, time_budget, memory, as_json, input_layout, data_flags,
              platform_spec):
    """Time MODELS side by side (interleaved); the first model and the first provider are the baselines for ratios."""
    from ..data import load_data, model_layout
    from ..evaluate.bench import bench_models, bench_table
    from ..io import load_model

    cfg = BenchConfig(warmup=warmup, runs=runs, time_budget=time_budget, batch_sizes=csv_ints(batch),
                      threads=csv_ints(threads), providers=tuple(p.strip() for p in providers.split(",") if p.strip()))
    cfg.validate()
    paths: dict[str, Path] = {}
    for m in models:
        paths[Path(m).name if Path(m).name not in paths else m] = Path(m)
    items = layout_items(input_layout)
    first = load_model(models[0])
    layout = model_layout(first, items)  # checked against the model and the data, before any work
    ds = open_data(data, layout, build_data_config(**data_flags), first,
                   None if as_json else (lambda msg: click.echo(msg, err=True))) if data else None
    if platform_spec:  # emulated: each model runs once there, no timings (emulated speed is not device speed)
        from ..data import example_feed, random_data

        return bench_platform(platform_spec, models, example_feed(ds if ds is not None else random_data(layout, 1), 1, first),
                              as_json)
    with Progress(not as_json) as bar:
        result = bench_models(paths, ds, cfg, memory=memory, progress=bar, input_layout=items)
    emit(as_json, result, bench_table(result))


COMMANDS = [validate_cmd, bench_cmd]
