"""The same sweep on a local Ray cluster started here: merged results equal to the local pool's apart from
timings, including the job whose worker was SIGKILLed (Ray's task retry: ran twice) and the one killed twice.

Needs the `ray` extra; marked `ray`, so the default test run leaves it out (.ci/run runs it as its own step)."""
from __future__ import annotations

import json

import pytest

from sweep_case import KILLED_ONCE, make_inputs, run, without_timings

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_ray_sweep_equals_local_pool(cluster, tmp_path):
    inputs = make_inputs(tmp_path / "in")
    local, _ = run(inputs, tmp_path / "local", tmp_path / "m-local", workers=2)
    remote, events = run(inputs, tmp_path / "ray", tmp_path / "m-ray", backend="ray")
    assert remote["run"]["backend"] == {"backend": "ray", "workers": 2, "cpus_per_job": 1, "address": None}
    assert without_timings(remote) == without_timings(local)
    assert [j["status"] for j in remote["jobs"]] == ["done"] * 4 + ["failed"] * 2
    assert [j["attempts"] for j in remote["jobs"]] == [1, 2, 1, 1, 1, 2]  # Ray retried each killed task once
    killed = remote["jobs"][KILLED_ONCE]
    pids = [json.loads(x)["pid"] for x in (tmp_path / "ray" / "jobs" / f"{killed['id']}.attempts").read_text().splitlines()]
    assert len(pids) == 2 and pids[0] != pids[1]
    last = events[-1]
    assert (last.done, last.failed, last.running, last.remaining) == (6, 2, 0, 0)
    # a second run on Ray does nothing either
    again, events = run(inputs, tmp_path / "ray", tmp_path / "m-ray2", backend="ray")
    assert again["run"]["ran"] == 0 and [e.event for e in events] == ["all 6 jobs already done; nothing to run"]
