"""Shared fixtures: tiny models built in-test with onnx.helper, and data files that match them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper


@pytest.fixture(autouse=True)
def _host_cpu_pinned(monkeypatch):
    """`--target auto` reads /proc/cpuinfo: on a CPU without VNNI it picks 7-bit weights (reduce_range), which moves
    every quantized number. Tests pin the detection to a VNNI CPU so their results do not depend on the host; the
    detection and the per-CPU choices are tested on their own (tests/quant/test_target.py, which unpins it)."""
    from onnxcompress.quant import target

    monkeypatch.setattr(target, "detect_target", lambda: "vnni")


def tiny_cnn(seed: int = 0, batch="N", channels: int = 8) -> onnx.ModelProto:
    """input[N,1,8,8] -> Conv(ch,3x3,pad1) -> Relu -> Conv(ch,3x3) -> Relu -> GAP -> Flatten -> Gemm(3)."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((channels, 1, 3, 3)).astype(np.float32) * 0.5
    b1 = rng.standard_normal(channels).astype(np.float32) * 0.1
    w2 = rng.standard_normal((channels, channels, 3, 3)).astype(np.float32) * 0.2
    b2 = rng.standard_normal(channels).astype(np.float32) * 0.1
    wf = rng.standard_normal((3, channels)).astype(np.float32)
    bf = rng.standard_normal(3).astype(np.float32) * 0.1
    inits = [numpy_helper.from_array(a, n) for a, n in
             ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"), (wf, "wf"), (bf, "bf"))]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def run_ort(model: onnx.ModelProto | str | Path, feeds: dict, optimize: bool = False) -> list[np.ndarray]:
    """Reference runner: ORT with graph optimizations disabled."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    src = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.fixture
def tiny_model_path(tmp_path: Path) -> Path:
    p = tmp_path / "tiny.onnx"
    onnx.save_model(tiny_cnn(), str(p))
    return p


def make_data(n: int = 64, seed: int = 1, labels_from: onnx.ModelProto | None = None) -> dict[str, np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((n, 1, 8, 8)).astype(np.float32)
    out = {"input": x}
    if labels_from is not None:  # labels = the model's own predictions, so FP32 top-1 is 100%
        out["labels"] = run_ort(labels_from, {"input": x})[0].argmax(1).astype(np.int64)
    return out


@pytest.fixture
def tiny_data_path(tmp_path: Path) -> Path:
    p = tmp_path / "data.npz"
    np.savez(p, **make_data(64, labels_from=tiny_cnn()))
    return p
