"""Plan a sweep (every model x every grid combination = one job), run the unfinished jobs on a backend, merge.

Everything that can be wrong with the input (a grid key, a value, a model or data path, a --data entry) is found
while planning, before any job starts: a one-line ConfigError / InputError, exit 2, nothing written.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

from ..config import PipelineConfig, to_dict
from ..errors import ConfigError, InputError
from .backends import Backend, LocalPool
from .grid import Grid, expand
from .jobs import Fault, JobSpec, data_identity, job_id, model_digest, read_record

DataPair = tuple[Optional[str], Optional[str]]  # (calibration, validation)


@dataclass(frozen=True)
class SweepProgress:
    """The whole sweep at one moment; `event` says what just happened."""

    total: int
    done: int  # finished (converted or failed), skipped ones included
    failed: int
    running: int
    remaining: int  # not started yet
    skipped: int  # finished before this run
    eta_seconds: Optional[float]  # None until a job of this run has finished
    event: str = ""

    def line(self) -> str:
        eta = "-" if self.eta_seconds is None else _clock(self.eta_seconds)
        return (f"{self.done}/{self.total} done ({self.failed} failed), {self.running} running, "
                f"{self.remaining} remaining, ETA {eta}")


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _check_path(path: Optional[str], what: str) -> Optional[str]:
    if path is None:
        return None
    if not Path(path).exists() and not any(ch in str(path) for ch in "*?["):
        raise InputError(f"{what} {path} not found; pass an existing file or folder")
    return str(path)


def data_for(models: list[str], per_model: Mapping[str, DataPair], calibration: Optional[str],
             validation: Optional[str]) -> dict[str, DataPair]:
    """Each model's (calibration, validation): its --data entry (keyed by the path as given or the file stem),
    else the data given once for all."""
    stems: dict[str, list[str]] = {}
    for m in models:
        stems.setdefault(Path(m).stem, []).append(m)
    out = {m: (calibration, validation) for m in models}
    for key, pair in per_model.items():
        match = [key] if key in out else stems.get(Path(key).stem if key.endswith(".onnx") else key, [])
        if len(match) != 1:
            why = "matches no model" if not match else f"matches {len(match)} models; use the model's path"
            raise InputError(f"--data {key}=... {why}; use a model path or file stem from MODELS ({', '.join(models)})")
        out[match[0]] = pair
    return out


def plan(models: Iterable[str], grid: Grid, out_dir: str | Path, base: PipelineConfig = PipelineConfig(),
         per_model: Mapping[str, DataPair] = {}, calibration: Optional[str] = None,
         validation: Optional[str] = None) -> list[JobSpec]:
    """Every (model, config) job in order, each with its id; checks everything before anything runs."""
    models = [str(m) for m in models]
    if not models:
        raise InputError("no models given; pass one or more .onnx files")
    for m in models:
        if not Path(m).is_file():
            raise InputError(f"model {m} not found; pass existing .onnx files")
    configs = expand(grid, base)
    data = data_for(models, per_model, calibration, validation)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"output folder {out} is a file; choose a folder path for -o")
    jobs_dir = out / "jobs"
    specs, seen = [], set()
    ident: dict[Optional[str], Optional[str]] = {}
    for m in models:
        cal, val = (_check_path(p, w) for p, w in zip(data[m], ("calibration data", "validation data")))
        for p in (cal, val):
            if p not in ident:
                ident[p] = data_identity(p)
        digest = model_digest(m)
        for overrides, cfg in configs:
            cdict = to_dict(cfg)
            jid = job_id(digest, cdict, ident[cal], ident[val])
            if jid in seen:  # the same model file twice, or grid values that make the same config
                continue
            seen.add(jid)
            specs.append(JobSpec(jid, m, overrides, cdict, cal, val, str(jobs_dir)))
    return specs


def _check_threads(specs: list[JobSpec], cpus_per_job: int) -> None:
    for s in specs:
        threads = max(s.config["bench"]["threads"])
        if threads > cpus_per_job:
            raise ConfigError(f"bench.threads {threads} is more than the {cpus_per_job} CPU(s) each job gets; "
                              f"set --cpus-per-worker {threads} or bench.threads <= {cpus_per_job}")


def make_backend(name: str, workers: Optional[int] = None, cpus_per_worker: int = 1, address: Optional[str] = None,
                 fault: Fault = None) -> Backend:
    if cpus_per_worker < 1 or (workers is not None and workers < 1):
        raise ConfigError("--workers and --cpus-per-worker must be >= 1")
    if name == "local":
        return LocalPool(workers, cpus_per_worker, fault=fault)
    if name == "ray":
        from .ray_backend import RayBackend

        return RayBackend(address, cpus_per_worker, fault=fault,
                          local_cpus=None if workers is None else workers * cpus_per_worker)
    raise ConfigError(f"backend={name!r} is not valid; choose one of local, ray")


def _reset_failed(specs: list[JobSpec]) -> None:
    """--retry-failed: a failed job's folder is moved aside and removed, so the job runs again."""
    for s in specs:
        rec = read_record(s.folder)
        if rec is not None and rec["status"] == "failed":
            trash = s.folder.with_name(f".{s.id}.failed-{time.time_ns()}")
            s.folder.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)


def execute(specs: list[JobSpec], backend_factory: Callable[[], Backend],
            progress: Optional[Callable[[SweepProgress], None]] = None) -> tuple[dict[str, dict], dict[str, Any]]:
    """Run the unfinished jobs; returns ({job id: record}, run facts). The backend is only started when a job is
    left to run, so a finished sweep re-run starts no worker."""
    report = progress or (lambda p: None)
    records: dict[str, dict] = {}
    todo: deque[JobSpec] = deque()
    for s in specs:
        rec = read_record(s.folder)
        if rec is None:
            todo.append(s)
        else:
            records[s.id] = rec
    skipped = len(records)
    total = len(specs)
    facts: dict[str, Any] = {"jobs": total, "skipped": skipped, "ran": len(todo), "retried": 0}
    running: dict[str, float] = {}
    durations: list[float] = []
    t_start = time.perf_counter()

    def emit(event: str, slots: int = 1) -> None:
        failed = sum(r["status"] == "failed" for r in records.values())
        eta = None
        if durations:
            eta = sum(durations) / len(durations) * (len(todo) + len(running)) / max(slots, 1)
        report(SweepProgress(total, len(records), failed, len(running), len(todo), skipped, eta, event))

    if not todo:
        emit(f"all {total} jobs already done; nothing to run")
        facts.update(seconds=0.0, backend=None)
        return records, facts
    emit(f"{skipped} of {total} jobs already done; {len(todo)} to run" if skipped else f"{total} jobs to run")
    backend = backend_factory()  # a backend that cannot start (no Ray cluster) leaves nothing behind
    Path(specs[0].jobs_dir).mkdir(parents=True, exist_ok=True)
    facts["backend"] = backend.describe()
    abort = True
    try:
        while todo or running:
            while todo and len(running) < backend.slots:
                job = todo.popleft()
                backend.submit(job)
                running[job.id] = time.perf_counter()
                emit(f"started {job.id}", backend.slots)
            for ev in backend.poll(0.5):
                if ev.kind == "retried":
                    facts["retried"] += 1
                    emit(f"{ev.job.id}: {ev.message}", backend.slots)
                    continue
                durations.append(time.perf_counter() - running.pop(ev.job.id))
                records[ev.job.id] = ev.record
                what = "failed: " + ev.record["error"] if ev.record["status"] == "failed" else "done"
                emit(f"{ev.job.id} {what}", backend.slots)
        abort = False
    finally:
        backend.close(abort=abort)
    facts["seconds"] = round(time.perf_counter() - t_start, 3)
    return records, facts


def run_sweep(models: Iterable[str], grid: Grid, out_dir: str | Path, base: PipelineConfig = PipelineConfig(),
              per_model: Mapping[str, DataPair] = {}, calibration: Optional[str] = None,
              validation: Optional[str] = None, backend: str = "local", workers: Optional[int] = None,
              cpus_per_worker: int = 1, address: Optional[str] = None, retry_failed: bool = False,
              objective: str = "size", progress: Optional[Callable[[SweepProgress], None]] = None,
              fault: Fault = None) -> dict[str, Any]:
    """Run a sweep into out_dir; returns the merged report (also written as OUT/sweep.json and sweep.html).

    `fault`: fault injection for tests only (faults.KillWorkerOnce); leave None."""
    from .merge import merge, write_merged

    if objective not in ("size", "latency"):
        raise ConfigError(f"objective={objective!r} is not valid; choose one of size, latency")
    specs = plan(models, grid, out_dir, base, per_model, calibration, validation)
    _check_threads(specs, cpus_per_worker)
    if retry_failed:
        _reset_failed(specs)
    records, facts = execute(specs, lambda: make_backend(backend, workers, cpus_per_worker, address, fault), progress)
    merged = merge(specs, records, grid=grid, objective=objective, facts=facts)
    merged["files"] = [str(p) for p in write_merged(merged, Path(out_dir))]
    return merged


def with_gates(base: PipelineConfig, gates: Iterable[str]) -> PipelineConfig:
    """--gate expressions added to the base config's validate gates (every job evaluates them)."""
    gates = tuple(gates)
    if not gates:
        return base
    cfg = dataclasses.replace(base, validate_=dataclasses.replace(base.validate_, gates=base.validate_.gates + gates))
    cfg.validate()
    return cfg
