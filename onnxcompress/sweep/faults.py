"""Fault injection for resilience tests, passed explicitly as `run_sweep(..., fault=...)`; never used otherwise.

It lives in the package (not in the tests) so that pool workers and Ray workers can unpickle it by reference.
"""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass


@dataclass(frozen=True)
class KillWorker:
    """The first `times` attempts of job `job_id` SIGKILL their own worker process when they reach `stage` (no
    cleanup, no reply), as the OOM killer or a lost node would. Marker files `<marker>.1`, `<marker>.2`, ...
    record each kill, so the attempt after the last one runs normally."""

    job_id: str
    marker: str
    stage: str = "quantize"  # a stage name convert reports ("simplify", "quantize", ...) or "start"
    times: int = 1

    def __call__(self, job_id: str, stage: str) -> None:
        if job_id != self.job_id or stage != self.stage:
            return
        for k in range(1, self.times + 1):
            try:
                fd = os.open(f"{self.marker}.{k}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # one attempt wins each
            except FileExistsError:
                continue
            os.write(fd, f"{os.getpid()}\n".encode())
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class Faults:
    """Several faults at once."""

    faults: tuple

    def __call__(self, job_id: str, stage: str) -> None:
        for f in self.faults:
            f(job_id, stage)
