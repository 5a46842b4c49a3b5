"""Latency measurement: warmup, then timed runs; several models (and execution providers) are run
interleaved so that machine noise hits them alike (one round = one run of each, in rotating order).

`bench_models` is what `onnxcompress bench` and `convert` call; `time_sessions` (runtime.timing) is the timing loop."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..config import BenchConfig
from ..data import Dataset, example_feed, model_layout, random_data
from ..io import load_model, model_size
from ..progress import Tick
from ..runtime.session import make_session, resolve_provider
from ..runtime.timing import Timing, time_sessions  # noqa: F401 - the timing loop lives in runtime/

BENCH_SCHEMA_VERSION = 1
Progress = Optional[Tick]  # the tick half of progress.Progress: (done, total, what)


def bench_feed(model_path: str | Path, data: Optional[Dataset], batch: int,
               input_layout: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """One run of `batch` samples from data (repeated when data has fewer), random when data is None,
    in the model's input layout (data.feeds)."""
    layout = model_layout(load_model(model_path, check=False), input_layout)
    src = data if data is not None else random_data(layout, batch)
    return example_feed(src, batch, layout)


def bench_models(paths: dict[str, Path], data: Optional[Dataset], config: BenchConfig = BenchConfig(),
                 memory: bool = False, progress: Progress = None,
                 input_layout: Optional[tuple[str, ...]] = None) -> dict[str, Any]:
    """Time every model on every provider at each thread count and batch size, all models and providers of
    one (threads, batch) setting interleaved. Ratios: `speedup` against the first model on the same
    provider, `speedup_vs_<provider>` against the first provider for the same model (> 1 = faster)."""
    config.validate()
    providers = list(dict.fromkeys(p.strip().lower() for p in config.providers))
    for p in providers:
        resolve_provider(p)  # a missing EP fails before any work, naming the package to install
    if input_layout is None:  # the --input-layout the data was checked with
        input_layout = data.layout.explicit if getattr(data, "layout", None) is not None else ()
    fixed = {n: _fixed_batch(p, input_layout) for n, p in paths.items()}
    first_model, first_prov = next(iter(paths)), providers[0]
    sizes = {n: model_size(p) for n, p in paths.items()}
    result: dict[str, Any] = {
        "schema_version": BENCH_SCHEMA_VERSION,
        "config": {"warmup": config.warmup, "runs": config.runs, "time_budget": config.time_budget,
                   "threads": list(config.threads), "batch_sizes": list(config.batch_sizes), "providers": providers},
        "models": {n: {"path": str(p), "size_bytes": sizes[n], "size_ratio": sizes[n] / sizes[first_model]}
                   for n, p in paths.items()},
        "results": {n: {} for n in paths},
    }
    settings = [(t, b) for t in config.threads for b in config.batch_sizes]
    per = 1 if config.time_budget is not None else config.runs
    total = len(settings) * per + (len(paths) * len(providers) if memory else 0)
    done = 0
    for threads, batch in settings:
        sessions, feeds = {}, {}
        for n, p in paths.items():
            if fixed[n] is not None and fixed[n] != batch:
                for prov in providers:
                    result["results"][n][f"{prov}/t{threads}/b{batch}"] = {
                        "skipped": f"the model has a fixed batch of {fixed[n]}; re-export with a dynamic batch axis"}
                continue
            feed = bench_feed(p, data, batch, input_layout)
            for prov in providers:
                sessions[(n, prov)] = make_session(p, prov, threads=threads, spinning=False)
                feeds[(n, prov)] = feed
        what = f"timing t{threads}/b{batch}"
        tick = (lambda i, d=done, w=what: progress(d + i, total, w)) if progress and config.time_budget is None else None
        # every model skipped at this batch size (a fixed batch): nothing to time
        timings = time_sessions(sessions, feeds, config.warmup, config.runs, config.time_budget, on_round=tick) if sessions else {}
        done += per
        if progress:
            progress(done, total, what)
        for (n, prov), t in timings.items():
            result["results"][n][f"{prov}/t{threads}/b{batch}"] = t.summary(batch)
        for (n, prov), t in timings.items():
            s = result["results"][n][f"{prov}/t{threads}/b{batch}"]
            base_model = timings.get((first_model, prov))
            if base_model is not None:
                s["speedup"] = _ratio(base_model, t)
            if prov != first_prov and (n, first_prov) in timings:
                s[f"speedup_vs_{first_prov}"] = _ratio(timings[(n, first_prov)], t)
    if memory:
        from .memory import peak_memory_mb

        for n, p in paths.items():
            batch = fixed[n] or config.batch_sizes[0]
            feed = bench_feed(p, data, batch, input_layout)
            mem = result["models"][n]["memory"] = {}
            for prov in providers:
                mem[prov] = peak_memory_mb(p, feed, prov, threads=config.threads[0])
                mem[prov]["batch"] = batch
                done += 1
                if progress:
                    progress(done, total, f"memory {n} {prov}")
    return result


def _fixed_batch(path: Path, input_layout: tuple[str, ...] = ()) -> Optional[int]:
    return model_layout(load_model(path, check=False), input_layout).batch


def _ratio(base: Timing, t: Timing) -> float:
    b, c = float(np.median(base.times_ms)), float(np.median(t.times_ms))
    return b / c if c > 0 else float("inf")


def bench_table(result: dict[str, Any]) -> str:
    """Side-by-side text: sizes and memory, then one block per setting, then EP ratios."""
    models = result["models"]
    w = max(12, *(len(n) for n in models))
    lines = [f"{'model':{w}s}  {'size MB':>9s}  {'size x':>6s}  peak memory (model / process MB)"]
    for n, info in models.items():
        mem = "  ".join(f"{prov} {m['model_mb']:.1f} / {m['peak_rss_mb']:.0f}" if "model_mb" in m else f"{prov} {m.get('error')}"
                        for prov, m in info.get("memory", {}).items()) or "-"
        lines.append(f"{n:{w}s}  {info['size_bytes'] / 1e6:9.3f}  {info['size_ratio']:6.2f}  {mem}")
    keys = list(dict.fromkeys(k for res in result["results"].values() for k in res))
    for key in keys:
        lines.append("")
        lines.append(f"{key:{w + 10}s} {'median ms':>10s} {'p90':>8s} {'p99':>8s} {'mean':>8s} {'items/s':>9s} {'vs first':>8s}")
        for n, res in result["results"].items():
            s = res.get(key)
            if s is None:
                continue
            if "skipped" in s:
                lines.append(f"  {n:{w + 8}s} skipped: {s['skipped']}")
                continue
            sp = f"{s['speedup']:.2f}x" if "speedup" in s else "-"
            lines.append(f"  {n:{w + 8}s} {s['median_ms']:10.3f} {s['p90_ms']:8.3f} {s['p99_ms']:8.3f} {s['mean_ms']:8.3f} "
                         f"{s['throughput_per_s']:9.1f} {sp:>8s}")
    provs = result["config"]["providers"]
    if len(provs) > 1:
        lines += ["", f"execution providers side by side (median latency of {provs[0]} / other; > 1 = other is faster):"]
        for n, res in result["results"].items():
            for key, s in res.items():
                r = s.get(f"speedup_vs_{provs[0]}")
                if r is not None:
                    prov, rest = key.split("/", 1)
                    base = res[f"{provs[0]}/{rest}"]["median_ms"]
                    lines.append(f"  {n:{w}s} {rest:8s} {prov} {s['median_ms']:.3f} ms vs {provs[0]} {base:.3f} ms: {r:.2f}x")
    return "\n".join(lines)
