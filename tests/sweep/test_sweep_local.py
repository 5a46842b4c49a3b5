"""A sweep on the local process pool: 4 real jobs over 2 tiny models plus 2 failing ones, one worker SIGKILLed
mid-job (that job runs twice and no more), one killed on every attempt; then a re-run that does nothing."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from conftest import run_ort
from onnxcompress.cli import main
from sweep_case import KILLED_ONCE, KILLED_TWICE, make_inputs, run, without_timings


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    inputs = make_inputs(root / "in")
    report, events = run(inputs, root / "out", root / "markers", workers=2)
    return {"root": root, "inputs": inputs, "out": root / "out", "report": report, "events": events}


def _int8(job_dir: Path) -> Path:
    (path,) = job_dir.glob("*.int8.onnx")
    return path


def _weight_scales(model: onnx.ModelProto) -> list[np.ndarray]:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [inits[n.input[1]] for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dtype == np.int8]


def test_jobs_convert_with_their_own_config(local):
    jobs = local["report"]["jobs"]
    assert [j["status"] for j in jobs] == ["done"] * 4 + ["failed"] * 2
    x = np.load(local["inputs"]["validation"])["input"]
    for j in jobs[:4]:
        folder = local["out"] / j["folder"]
        model = onnx.load(str(_int8(folder)))
        scales = _weight_scales(model)
        assert scales, "no int8 weights"
        per_channel = j["overrides"]["quant.per_channel"]
        # per-channel: one scale per output channel of each weight; per-tensor: one scale each
        assert any(s.size > 1 for s in scales) == per_channel and all(s.size >= 1 for s in scales)
        # the delivered model runs in ORT (optimizations off) and agrees with the FP32 model as the job measured
        ref = run_ort(j["model"], {"input": x})[0].argmax(1)
        got = run_ort(_int8(folder), {"input": x})[0].argmax(1)
        s = j["summary"]
        assert s["metric"] == "agreement"
        assert s["metric_value"] == pytest.approx(100.0 * float(np.mean(ref == got)), abs=1e-9)
        assert s["size_bytes"] == _int8(folder).stat().st_size
        assert json.loads((folder / "done.json").read_text())["status"] == "done"


def test_failed_jobs_are_recorded_one_line(local):
    broken, twice = local["report"]["jobs"][4], local["report"]["jobs"][KILLED_TWICE]
    assert broken["exit_code"] == 2 and "\n" not in broken["error"] and "broken.onnx" in broken["error"]
    assert broken["attempts"] == 1
    assert twice["exit_code"] == 3 and "died on all 2 attempts;" in twice["error"]
    assert twice["attempts"] == 2
    assert json.loads((local["out"] / twice["folder"] / "done.json").read_text())["detail"] == "killed by signal 9"
    # a failed job keeps its record, and no model files
    assert sorted(p.name for p in (local["out"] / broken["folder"]).iterdir()) == ["done.json", "job.json"]


def test_killed_worker_job_ran_twice_and_no_more(local):
    out, jobs = local["out"], local["report"]["jobs"]
    killed = jobs[KILLED_ONCE]
    assert killed["status"] == "done" and killed["attempts"] == 2
    lines = [json.loads(x) for x in (out / "jobs" / f"{killed['id']}.attempts").read_text().splitlines()]
    assert len(lines) == 2 and lines[0]["pid"] != lines[1]["pid"]  # a fresh worker took the second attempt
    assert int((local["root"] / "markers" / "once.1").read_text()) == lines[0]["pid"]  # the first one was killed
    assert [j["attempts"] for j in jobs] == [1, 2, 1, 1, 1, 2]
    assert local["report"]["run"]["retried"] == 2
    assert not list((out / "jobs").glob(".*"))  # no staging folder left behind, the killed attempt's included


def test_merged_report(local):
    rep, out = local["report"], local["out"]
    assert rep["totals"] == {"jobs": 6, "done": 4, "failed": 2, "not_run": 0}
    for name, ids in (("a.onnx", (0, 1)), ("b.onnx", (2, 3))):
        info = rep["models"][next(m for m in rep["models"] if m.endswith(name))]
        done = [rep["jobs"][i] for i in ids]
        sizes = {j["id"]: _int8(out / j["folder"]).stat().st_size for j in done}
        passed = [j["id"] for j in done if j["summary"]["verdict"] == "passed"]
        assert passed, "the tiny models pass their default gates"
        metric = {j["id"]: j["summary"]["metric_value"] for j in done}
        assert info["best"] == min(passed, key=lambda i: (sizes[i], -metric[i]))
        # the front by size: no job is both smaller-or-equal and better-or-equal than a job on it
        front = set(info["pareto_size"])
        for j in done:
            s = j["summary"]
            beaten = any(k is not j and k["summary"]["size_bytes"] <= s["size_bytes"]
                         and k["summary"]["metric_value"] >= s["metric_value"]
                         and (k["summary"]["size_bytes"], k["summary"]["metric_value"]) != (s["size_bytes"], s["metric_value"])
                         for k in done)
            assert (j["id"] in front) == (not beaten)
    assert json.loads((out / "sweep.json").read_text())["jobs"] == json.loads(json.dumps(rep["jobs"]))
    page = (out / "sweep.html").read_text()
    assert page.count("<tr>") >= 6 + 1 and page.count("<svg") == 4 and "died on all 2 attempts" in page


def test_progress(local):
    events = local["events"]
    assert [e.done for e in events] == sorted(e.done for e in events)
    last = events[-1]
    assert (last.total, last.done, last.failed, last.running, last.remaining) == (6, 6, 2, 0, 0)
    assert any("resubmitted" in e.event for e in events)
    assert any(e.eta_seconds is not None for e in events)


def test_second_run_does_nothing(local):
    out = local["out"]
    before = {p: p.stat().st_mtime_ns for p in (out / "jobs").rglob("*")}
    report, events = run(local["inputs"], out, local["root"] / "markers2", workers=2)
    assert report["run"]["ran"] == 0 and report["run"]["skipped"] == 6 and report["run"]["backend"] is None
    assert [e.event for e in events] == ["all 6 jobs already done; nothing to run"]
    assert {p: p.stat().st_mtime_ns for p in (out / "jobs").rglob("*")} == before  # attempts logs included
    assert without_timings(report) == without_timings(local["report"])
    assert not (local["root"] / "markers2" / "once.1").exists()


def test_cli_rerun_reports_all_done(local):
    inp = local["inputs"]
    res = CliRunner().invoke(main, ["sweep", *inp["models"], "--grid", inp["grid"], "--config", inp["base"],
                                    "-c", inp["calibration"], "-v", inp["validation"], "-o", str(local["out"])])
    assert res.exit_code == 1, res.output  # failed jobs stay failed (--retry-failed runs them again)
    assert "all 6 jobs already done; nothing to run" in res.stderr
    assert "6 jobs: 4 converted, 2 failed (6 already done, 0 run now)" in res.stdout
    assert os.path.isfile(local["out"] / "sweep.html")


def test_retry_failed_runs_only_the_failed_jobs(local, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(local["out"], out)
    done_before = {j["id"]: (out / j["folder"] / "done.json").read_text() for j in local["report"]["jobs"][:4]}
    report, _ = run(local["inputs"], out, None, workers=2, retry_failed=True)
    assert report["run"]["ran"] == 2 and report["run"]["skipped"] == 4
    assert {j["id"]: (out / j["folder"] / "done.json").read_text() for j in report["jobs"][:4]} == done_before
    broken = report["jobs"][4:]
    assert [j["status"] for j in broken] == ["failed", "failed"]
    assert all("broken.onnx" in j["error"] for j in broken)  # the worker is not killed this time: the model is bad
    assert [j["attempts"] for j in broken] == [2, 3]  # the attempts log spans runs
