"""evaluate/memory.py: peak memory of running a model, measured in a fresh process.

The figure must see the model: a model holding 40 MB of weights costs at least that much (ORT keeps its weights
resident), and the process peak is never below the RSS measured before the session. A failure in the child
comes back as one line, not a traceback; without /proc's peak reset the figure falls back to ru_maxrss and says
so. One child process only (each imports onnxcompress.evaluate: ~2 s of CPU)."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort, tiny_cnn
from onnxcompress.evaluate import memory
from onnxcompress.evaluate.memory import peak_memory_mb

WEIGHT_MB = 40


def big_matmul(path) -> None:
    """x[1, 2500] @ W[2500, 4000]: 40 MB of float32 weights."""
    w = np.random.default_rng(0).standard_normal((2500, 4000)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "big",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2500])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4000])],
                          [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save_model(m, str(path))


def test_peak_memory_sees_the_model_weights(tmp_path):
    big = tmp_path / "big.onnx"
    big_matmul(big)
    r = peak_memory_mb(big, {"x": np.ones((1, 2500), np.float32)}, runs=2)
    assert set(r) == {"peak_rss_mb", "model_mb", "baseline_mb", "method"}, r
    assert r["method"] in ("VmHWM after clear_refs", "ru_maxrss")
    assert r["peak_rss_mb"] >= r["baseline_mb"] > 0
    assert 0.9 * WEIGHT_MB <= r["model_mb"] <= r["peak_rss_mb"], r
    if r["method"] == "VmHWM after clear_refs":  # model_mb is then exactly peak - baseline
        assert abs(r["model_mb"] - (r["peak_rss_mb"] - r["baseline_mb"])) <= 0.02


def test_a_failing_child_is_one_line(tmp_path, monkeypatch):
    """The child's command line, and its traceback read down to the last line."""
    seen = []

    def child(cmd, **kw):
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "Traceback (most recent call last):\n  File ...\n"
                                           "onnxruntime.InvalidProtobuf: [ONNXRuntimeError] : 7 : INVALID_PROTOBUF\n")

    monkeypatch.setattr(memory.subprocess, "run", child)
    r = peak_memory_mb(tmp_path / "m.onnx", {"x": np.zeros(1, np.float32)}, "cpu", threads=2, runs=3)
    assert r == {"error": "onnxruntime.InvalidProtobuf: [ONNXRuntimeError] : 7 : INVALID_PROTOBUF"}
    cmd = seen[0]
    assert cmd[1:3] == ["-m", "onnxcompress.evaluate.memory"] and cmd[3] == str(tmp_path / "m.onnx")
    assert cmd[5:] == ["cpu", "2", "3"]
    monkeypatch.setattr(memory.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, -9, "", ""))
    assert peak_memory_mb(tmp_path / "m.onnx", {"x": np.zeros(1, np.float32)}) == {"error": "failed"}


def test_without_a_peak_reset_it_falls_back_to_ru_maxrss(tmp_path, monkeypatch, capsys):
    """The child's code run here: the model runs (its output is what ORT computes) and the method is named."""
    p, feed = tmp_path / "tiny.onnx", tmp_path / "feed.npz"
    onnx.save_model(tiny_cnn(), str(p))
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    np.savez(feed, input=x)
    calls = []
    monkeypatch.setattr(memory, "_reset_peak", lambda: calls.append(1) or False)
    memory._main(str(p), str(feed), "cpu", 1, 2)
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert calls == [1] and r["method"] == "ru_maxrss"
    assert r["peak_rss_mb"] >= r["baseline_mb"] > 0
    assert np.isfinite(run_ort(p, {"input": x})[0]).all()
    assert memory._status_mb("VmRSS") > 0 and memory._status_mb("NoSuchField") is None
