"""One sweep job = one `convert` of one model with one config, in a folder of its own.

OUT/jobs/<id>/ is written atomically: the job runs in a hidden staging folder beside it, writes done.json (its
record) last, then renames the folder into place. A folder OUT/jobs/<id>/ therefore always holds a finished job
(converted, or failed with its one-line error); a re-run skips it. Each attempt first appends one line to
OUT/jobs/<id>.attempts (outside the staging folder, so a killed attempt is still counted): the record's
`attempts` is that count, which is how "the job ran twice and no more" is shown.

The id is a hash of the model file's bytes, the canonical JSON of the full PipelineConfig and the data's
identity (a file's bytes; a folder's file names, sizes and modification times), so changing any of them makes a
new job and nothing stale is reused.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..config import PipelineConfig, from_dict
from ..errors import InternalError, OnnxCompressError
from ..io import atomic_write_bytes
from ..report import to_json

RECORD_VERSION = 1
DONE = "done.json"
ID_CHARS = 24  # hex digits of sha256 kept in folder names (96 bits)

# A picklable callable run in the worker at each stage of a job: fault(job_id, stage). Only fault injection for
# tests uses it (faults.KillWorkerOnce); None in every real run.
Fault = Optional[Callable[[str, str], None]]


@dataclass(frozen=True)
class JobSpec:
    id: str
    model: str  # the model path as given on the command line (the report groups jobs by it)
    overrides: dict = field(default_factory=dict)  # the grid values of this job
    config: dict = field(default_factory=dict)  # config.to_dict of the full PipelineConfig
    calibration: Optional[str] = None
    validation: Optional[str] = None
    jobs_dir: str = ""  # OUT/jobs

    @property
    def folder(self) -> Path:
        return Path(self.jobs_dir) / self.id

    def pipeline_config(self) -> PipelineConfig:
        return from_dict(PipelineConfig, self.config)


def _digest_file(h: "hashlib._Hash", path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def data_identity(path: Optional[str]) -> Optional[str]:
    """A file: sha256 of its bytes. A folder (images, WAVs): its files' names, sizes and mtimes (reading every
    image of a large folder would cost more than the jobs). Anything else (a glob): the text as given."""
    if path is None:
        return None
    p = Path(path)
    h = hashlib.sha256()
    if p.is_file():
        _digest_file(h, p)
        return "file:" + h.hexdigest()
    if p.is_dir():
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            st = f.stat()
            h.update(f"{f.relative_to(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return "dir:" + h.hexdigest()
    return "text:" + str(path)


def job_id(model_digest: str, config: dict, calibration: Optional[str], validation: Optional[str]) -> str:
    canonical = json.dumps({"model": model_digest, "config": config, "calibration": calibration,
                            "validation": validation}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:ID_CHARS]


def model_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    _digest_file(h, Path(path))
    return h.hexdigest()


def read_record(folder: Path) -> Optional[dict]:
    """The record of a finished job, None when the job has not finished."""
    p = Path(folder) / DONE
    if not p.is_file():
        return None
    return json.loads(p.read_text())


def attempts_path(spec: JobSpec) -> Path:
    return Path(spec.jobs_dir) / f"{spec.id}.attempts"


def count_attempts(spec: JobSpec) -> int:
    p = attempts_path(spec)
    return len(p.read_text().splitlines()) if p.is_file() else 0


def _begin_attempt(spec: JobSpec, cpus: int) -> int:
    line = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "cpus": cpus, "time": time.time()})
    with open(attempts_path(spec), "a") as f:  # one short O_APPEND write per attempt
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
    return count_attempts(spec)


def _open_data(path: Optional[str], cfg: PipelineConfig, model_path: str):
    """Arrays go to convert as paths (as `onnxcompress convert` does); images, text and audio are opened here
    with the config's data section, which convert does not read."""
    if path is None:
        return None
    from ..sources import detect_kind

    if detect_kind(path, cfg.data) == "arrays" and cfg.data.samples is None:
        return path
    from ..data import load_data, model_layout
    from ..io import load_model

    model = load_model(model_path)
    return load_data(path, model_layout(model, cfg.data.input_layout), cfg.data, model)


def _summary(report: dict) -> dict[str, Any]:
    """What the merged report needs from a job's report.json: the delivered (last) stage against FP32."""
    from ..report_html import PLOTTED

    first, last = report["stages"][0]["metrics"], report["stages"][-1]["metrics"]
    metric = value = None
    for key, words in PLOTTED:  # the task metric the single-job report plots, in the same order
        v = last.get(key, (last.get("task_metrics") or {}).get(key))
        if isinstance(v, (int, float)):
            metric, value = key, float(v)
            break
    acc = report.get("accuracy") or {}
    return {"stage": report["stages"][-1]["name"], "size_bytes": last.get("size_bytes"),
            "fp32_size_bytes": first.get("size_bytes"), "latency_ms": last.get("latency_ms"),
            "fp32_latency_ms": first.get("latency_ms"), "metric": metric, "metric_value": value,
            "task": (report.get("task") or {}).get("name"), "verdict": acc.get("verdict"),
            "failed_gates": [g["message"] for g in acc.get("gates", []) if not g["passed"]]}


def _record(spec: JobSpec, status: str, **extra) -> dict[str, Any]:
    return {"version": RECORD_VERSION, "id": spec.id, "model": spec.model, "overrides": spec.overrides,
            "status": status, "error": None, "exit_code": None, "summary": None, **extra}


def _publish(spec: JobSpec, staging: Path, record: dict) -> dict:
    """done.json last, then one rename: OUT/jobs/<id>/ appears complete or not at all."""
    record["attempts"] = count_attempts(spec)
    atomic_write_bytes(staging / DONE, (to_json(record) + "\n").encode())
    try:
        os.rename(staging, spec.folder)
    except OSError:
        done = read_record(spec.folder)
        if done is None:  # a folder we did not make sits where the job goes: leave both for a person to look at
            raise
        shutil.rmtree(staging, ignore_errors=True)  # another attempt finished first; its record stands
        return done
    return record


def _remove_staging(spec: JobSpec) -> None:
    for old in Path(spec.jobs_dir).glob(f".{spec.id}.staging-*"):  # left by an attempt that was killed
        shutil.rmtree(old, ignore_errors=True)


def _staging(spec: JobSpec, attempt: int) -> Path:
    p = Path(spec.jobs_dir) / f".{spec.id}.staging-{attempt}-{os.getpid()}"
    shutil.rmtree(p, ignore_errors=True)
    p.mkdir(parents=True)
    atomic_write_bytes(p / "job.json", (to_json(dataclasses.asdict(spec)) + "\n").encode())
    return p


def _clear_outputs(staging: Path, keep: tuple[str, ...] = ("job.json",)) -> None:
    """A failed job keeps its record and no half-written models."""
    for p in staging.iterdir():
        if p.name not in keep:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def run_job(spec: JobSpec, cpus: int = 1, fault: Fault = None) -> dict[str, Any]:
    """Run one job in this process with `cpus` ORT intra-op threads per session; returns its record. A finished
    job is not run again. Every error of the job becomes its record: one job never stops the sweep."""
    done = read_record(spec.folder)
    if done is not None:
        return done
    _remove_staging(spec)
    attempt = _begin_attempt(spec, cpus)
    staging = _staging(spec, attempt)
    t0 = time.perf_counter()
    worker = {"pid": os.getpid(), "host": socket.gethostname(), "cpus": cpus}

    def stage(name: str) -> None:
        if fault is not None:
            fault(spec.id, name)

    try:
        from ..runtime.session import session_threads
        from ..pipeline import convert

        cfg = spec.pipeline_config()
        stage("start")
        with session_threads(cpus):
            calib = _open_data(spec.calibration, cfg, spec.model)
            val = _open_data(spec.validation, cfg, spec.model)
            report = convert(spec.model, staging, cfg, calib, val, progress=stage)
        record = _record(spec, "done", summary=_summary(report), report=f"{spec.id}/report.html")
    except OnnxCompressError as exc:
        _clear_outputs(staging)
        record = _record(spec, "failed", error=str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                         error_type=type(exc).__name__, exit_code=exc.exit_code)
    except MemoryError:
        _clear_outputs(staging)
        record = _record(spec, "failed", error="out of memory; give each worker more memory, or run fewer workers",
                         error_type="MemoryError", exit_code=2)
    except Exception as exc:  # noqa: BLE001 - the job boundary: our bug in one job is recorded, the sweep goes on
        _clear_outputs(staging)
        (staging / "traceback.txt").write_text(traceback.format_exc())
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        record = _record(spec, "failed", error=f"internal error: {type(exc).__name__}: {first} (a bug in onnxcompress; "
                                               f"traceback in {spec.id}/traceback.txt)",
                         error_type=type(exc).__name__, exit_code=InternalError.exit_code)
    record.update(seconds=round(time.perf_counter() - t0, 3), worker=worker)
    return _publish(spec, staging, record)


def record_failure(spec: JobSpec, error: str, exit_code: int = InternalError.exit_code,
                   error_type: str = "WorkerDied", detail: Optional[str] = None) -> dict[str, Any]:
    """Record a job that could not run (its worker died on every attempt), written like any finished job."""
    done = read_record(spec.folder)
    if done is not None:
        return done
    _remove_staging(spec)
    staging = _staging(spec, count_attempts(spec))
    return _publish(spec, staging, _record(spec, "failed", error=error, error_type=error_type, exit_code=exit_code,
                                           detail=detail, seconds=None, worker=None))
