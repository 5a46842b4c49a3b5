"""The Ray backend (optional extra `onnxcompress[ray]`): each job is one Ray task with `num_cpus` = the job's ORT
threads, and `max_retries=1`, so a task whose worker dies is run once more by Ray itself, and no more.

Every node must see the models, the data and OUT/ at the same paths (a shared filesystem): jobs write their
folders there, as in the local pool.
"""
from __future__ import annotations

from typing import Any, Optional

from ..errors import InputError, MissingDependency
from .backends import MAX_ATTEMPTS, Event, died_message
from .jobs import Fault, JobSpec, record_failure, run_job


def _ray():
    try:
        import ray
    except ImportError:
        raise MissingDependency("--backend ray needs Ray; pip install 'onnxcompress[ray]'") from None
    return ray


def _ray_job(job: JobSpec, cpus: int, fault: Fault) -> dict:
    return run_job(job, cpus, fault)


class RayBackend:
    """Connects to `address` (auto, ray://HOST:PORT), or uses the Ray already initialised in this process, or
    starts a local Ray with `local_cpus` CPUs (stopped again on close)."""

    name = "ray"

    def __init__(self, address: Optional[str] = None, cpus_per_job: int = 1, fault: Fault = None,
                 local_cpus: Optional[int] = None) -> None:
        ray = self._ray = _ray()
        self._owned = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"address": address, "log_to_driver": False, "logging_level": "ERROR"}
            if address is None:
                kwargs.update(num_cpus=local_cpus, include_dashboard=False)
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                raise InputError(f"cannot connect to the Ray cluster at {address!r} ({first}); start one with "
                                 "'ray start --head' or check --address") from None
            self._owned = True
        self.address = address
        self.cpus_per_job = cpus_per_job
        total = int(ray.cluster_resources().get("CPU", 0))
        if total < cpus_per_job:
            self.close()
            raise InputError(f"the Ray cluster has {total} CPUs, fewer than the {cpus_per_job} each job asks for; "
                             "lower --cpus-per-worker or add nodes")
        self.slots = total // cpus_per_job
        self._task = ray.remote(_ray_job).options(num_cpus=cpus_per_job, max_retries=MAX_ATTEMPTS - 1,
                                                  retry_exceptions=False)
        self.fault = fault
        self._refs: dict[Any, JobSpec] = {}

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "workers": self.slots, "cpus_per_job": self.cpus_per_job,
                "address": self.address}

    def submit(self, job: JobSpec) -> None:
        self._refs[self._task.remote(job, self.cpus_per_job, self.fault)] = job

    def poll(self, timeout: float) -> list[Event]:
        if not self._refs:
            return []
        ray = self._ray
        ready, _ = ray.wait(list(self._refs), num_returns=len(self._refs), timeout=timeout)
        events = []
        for ref in ready:
            job = self._refs.pop(ref)
            try:
                record = ray.get(ref)
            except ray.exceptions.WorkerCrashedError:  # Ray's retries are spent too
                record = record_failure(job, died_message(MAX_ATTEMPTS), detail="Ray: WorkerCrashedError")
            except ray.exceptions.RayError as exc:  # node lost, task cancelled: recorded like any failed job
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                record = record_failure(job, f"Ray could not run the job: {type(exc).__name__}: {first}",
                                        error_type=type(exc).__name__)
            events.append(Event("finished", job, record))
        return events

    def close(self, abort: bool = False) -> None:
        if abort:
            for ref in self._refs:
                self._ray.cancel(ref, force=True)
        self._refs = {}
        if self._owned:
            self._ray.shutdown()
            self._owned = False
