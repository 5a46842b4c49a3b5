"""Where sweep jobs run, behind one small interface: `slots` jobs at once, `submit(job)`, `poll(timeout)` for what
happened since, `close()`. The scheduler (sweep.run) is the same for every backend.

LocalPool is our own small pool rather than concurrent.futures.ProcessPoolExecutor: when a worker of that
executor dies, every pending future fails with BrokenProcessPool and the pool cannot say which job killed it.
Here each worker runs one job at a time over its own pipe, so a dead worker (its process sentinel fires with no
reply on the pipe) names exactly one job, which is resubmitted to a fresh worker: at most `max_attempts` runs.
"""
from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import os
import signal
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional, Protocol

from .jobs import Fault, JobSpec, record_failure, run_job

MAX_ATTEMPTS = 2  # a job whose worker dies is run once more, and no more


@dataclass(frozen=True)
class Event:
    kind: str  # "finished" (record set) | "retried" (the worker died; the job was resubmitted)
    job: JobSpec
    record: Optional[dict] = None
    message: str = ""


class Backend(Protocol):
    name: str
    slots: int  # jobs that run at once
    cpus_per_job: int  # ORT intra-op threads of each job's sessions

    def submit(self, job: JobSpec) -> None: ...

    def poll(self, timeout: float) -> list[Event]: ...

    def close(self, abort: bool = False) -> None: ...

    def describe(self) -> dict[str, Any]: ...


def _how(code: Optional[int]) -> str:
    return f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"


def died_message(attempts: int) -> str:
    """The same line on every backend (how the worker died is the record's `detail`)."""
    return (f"the worker running this job died on all {attempts} attempts; if it was killed (often the OOM killer), "
            f"give each worker more memory or run fewer workers, then re-run with --retry-failed")


def _worker_main(conn, cpus: int, fault: Fault) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it ends its workers
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        conn.send(run_job(job, cpus, fault))


class _Worker:
    def __init__(self, ctx, cpus: int, fault: Fault) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, cpus, fault), name="onnxcompress-sweep", daemon=True)
        self.proc.start()
        child.close()
        self.job: Optional[JobSpec] = None


def _context():
    """forkserver where there is one: a clean process (no ORT threads, no sessions) imports the pipeline once and
    forks each worker from it, so a worker that replaces a dead one starts in milliseconds, not seconds of
    imports. Elsewhere spawn. Never a plain fork of this process, whose ORT and data threads may be running."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["onnxcompress.sweep.jobs", "onnxcompress.pipeline"])
        return ctx
    return mp.get_context("spawn")


class LocalPool:
    """`workers` processes (see _context), `cpus_per_worker` ORT threads each."""

    name = "local"

    def __init__(self, workers: Optional[int] = None, cpus_per_worker: int = 1, fault: Fault = None,
                 max_attempts: int = MAX_ATTEMPTS) -> None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.slots = workers or max(1, cpus // cpus_per_worker)
        self.cpus_per_job = cpus_per_worker
        self.fault, self.max_attempts = fault, max_attempts
        self._ctx = _context()
        self._workers: list[_Worker] = []
        self.tries: Counter[str] = Counter()  # runs started per job id in this sweep

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "workers": self.slots, "cpus_per_job": self.cpus_per_job}

    def _send(self, job: JobSpec) -> None:
        w = next((w for w in self._workers if w.job is None), None)
        if w is None:
            w = _Worker(self._ctx, self.cpus_per_job, self.fault)
            self._workers.append(w)
        w.job = job
        self.tries[job.id] += 1
        w.conn.send(job)

    def submit(self, job: JobSpec) -> None:
        if sum(w.job is not None for w in self._workers) >= self.slots:
            raise RuntimeError("LocalPool.submit with every slot busy")  # the scheduler keeps to `slots`
        self._send(job)

    def poll(self, timeout: float) -> list[Event]:
        busy = [w for w in self._workers if w.job is not None]
        if not busy:
            raise RuntimeError("LocalPool.poll with no job running")  # the scheduler would wait forever
        ready = set(mp.connection.wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout))
        events: list[Event] = []
        for w in busy:
            if w.conn not in ready and w.proc.sentinel not in ready:
                continue
            job = w.job
            try:
                if w.conn.poll():
                    record = w.conn.recv()
                    w.job = None
                    events.append(Event("finished", job, record))
                    continue
            except (EOFError, OSError):
                pass  # the pipe closed with no reply: the worker died
            if w.proc.is_alive():
                continue
            w.proc.join()
            code = w.proc.exitcode
            w.conn.close()
            self._workers.remove(w)
            if self.tries[job.id] < self.max_attempts:
                self._send(job)  # a fresh worker takes the dead one's slot
                events.append(Event("retried", job, message=f"worker died ({_how(code)}); job resubmitted, "
                                                               f"attempt {self.tries[job.id]} of {self.max_attempts}"))
            else:
                events.append(Event("finished", job, record_failure(job, died_message(self.tries[job.id]), detail=_how(code))))
        return events

    def close(self, abort: bool = False) -> None:
        for w in self._workers:
            if abort or w.job is not None:
                w.proc.terminate()  # processes this pool started; nothing else is touched
            else:
                try:
                    w.conn.send(None)
                except OSError:
                    pass
        for w in self._workers:
            w.proc.join(timeout=10)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join()
            w.conn.close()
        self._workers = []
