"""`validate` (CI gates) and `bench` (interleaved latency)."""
from __future__ import annotations

import click

from .common import csv_ints, emit, handle_errors, json_option

from pathlib import Path

from ..config import BenchConfig, ValidateConfig
from ..errors import AccuracyRegression


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
@click.option("--layers", is_flag=True, help="Also report per-layer SQNR of CANDIDATE against REFERENCE (worst first).")
@click.option("--provider", default="cpu", show_default=True, help="Execution provider to run both models on.")
@_gate_options
@json_option
@handle_errors
def validate_cmd(reference, candidate, data, layers, provider, as_json, **gates):
    """Compare CANDIDATE against REFERENCE; exit 1 when a gate fails."""
    from ..evaluate.validate import validate

    cfg = ValidateConfig(**gates)
    res = validate(reference, candidate, data, cfg, provider=provider, layers=layers)
    lines = [f"{k}: {v:.3f}" for k, v in res.items() if k.endswith(("top1", "top5", "drop")) and isinstance(v, float)]
    for name, m in res["outputs"].items():
        lines.append(f"output {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in m.items()))
    if layers:
        lines.append("per-layer SQNR (worst first):")
        lines += [f"  {r['sqnr_db']:7.2f} dB  {r['op']:20s} {r['tensor']}" for r in res["layers"][:15]]
    lines += [("PASS " if g["passed"] else "FAIL ") + g["message"] for g in res["gates"]]
    emit(as_json, res, "\n".join(lines))
    if not res["passed"]:
        failed = [g["message"] for g in res["gates"] if not g["passed"]]
        raise AccuracyRegression("\n".join(f"gate failed: {m}" for m in failed))


@click.command("bench")
@click.argument("models", nargs=-1, required=True, type=click.Path())
@click.option("--data", "-d", type=click.Path(), help="Inputs to time with (.npz); random if omitted.")
@click.option("--providers", default="cpu", show_default=True, help="Comma-separated: cpu, openvino, ...")
@click.option("--threads", default="1", show_default=True, help="Comma-separated intra-op thread counts.")
@click.option("--batch", default="1", show_default=True, help="Comma-separated batch sizes.")
@click.option("--runs", type=int, default=BenchConfig.runs, show_default=True)
@click.option("--warmup", type=int, default=BenchConfig.warmup, show_default=True)
@click.option("--time-budget", type=float, help="Seconds per configuration instead of a run count.")
@click.option("--memory/--no-memory", default=True, show_default=True, help="Measure peak memory per model (fresh process each).")
@json_option
@handle_errors
def bench_cmd(models, data, providers, threads, batch, runs, warmup, time_budget, memory, as_json):
    """Time MODELS side by side (interleaved); the first model is the baseline for ratios."""
    from ..data import input_specs, load_data
    from ..io import load_model, model_size
    from ..pipeline import benchmark

    cfg = BenchConfig(warmup=warmup, runs=runs, time_budget=time_budget, batch_sizes=csv_ints(batch),
                      threads=csv_ints(threads), providers=tuple(p.strip() for p in providers.split(",") if p.strip()))
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
    if memory:
        from ..evaluate.memory import peak_memory_mb
        from ..pipeline import _bench_feed

        for name, p in paths.items():
            result["models"][name]["memory"] = peak_memory_mb(p, _bench_feed(p, ds, cfg.batch_sizes[0]), cfg.providers[0])
    lines = []
    base_size = next(iter(result["models"].values()))["size_bytes"]
    for name, info in result["models"].items():
        mem = info.get("memory", {})
        lines.append(f"{name:30s} size {info['size_bytes'] / 1e6:8.3f} MB ({info['size_bytes'] / base_size:.2f}x)"
                     + (f"  peak memory {mem['model_mb']:7.1f} MB over a {mem['baseline_mb']:.0f} MB process"
                        if "model_mb" in mem else ""))
    for name, res in result["results"].items():
        for key, s in res.items():
            lines.append(f"{name:30s} {key:18s} median {s['median_ms']:8.3f} ms  p90 {s['p90_ms']:8.3f}  "
                         f"{s['throughput_per_s']:9.1f}/s  speedup {s['speedup']:.2f}x")
    if len(cfg.providers) > 1:  # EP side by side: each provider against the first, same model and setting
        first = cfg.providers[0]
        for name, res in result["results"].items():
            for key, s in res.items():
                prov, rest = key.split("/", 1)
                if prov != first and f"{first}/{rest}" in res:
                    ratio = res[f"{first}/{rest}"]["median_ms"] / s["median_ms"]
                    s[f"speedup_vs_{first}"] = ratio
                    lines.append(f"{name:30s} {prov} vs {first} ({rest}): {ratio:.2f}x")
    emit(as_json, result, "\n".join(lines))


COMMANDS = [validate_cmd, bench_cmd]
