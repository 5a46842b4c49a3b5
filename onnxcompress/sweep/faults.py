"""Fault injection for resilience tests, passed explicitly as `run_sweep(..., fault=...)`; never used otherwise.

It lives in the package (not in the tests) so that pool workers and Ray workers can unpickle it by reference.
"""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KillWorkerOnce:
    """The first time job `job_id` reaches `stage`, its worker process SIGKILLs itself (no cleanup, no reply),
    as an OOM killer or a lost node would. `marker` (a file) records that it did, so the retry runs normally."""

    job_id: str
    marker: str
    stage: str = "quantize"

    def __call__(self, job_id: str, stage: str) -> None:
        if job_id != self.job_id or stage != self.stage:
            return
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # exactly one attempt wins
        except FileExistsError:
            return
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)
