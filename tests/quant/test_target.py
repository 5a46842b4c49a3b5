"""quant/target.py: the CPU flags that decide `--target auto`, and the target's choice as it lands in the
quantized model (activation zero-point type, 7-bit weights for reduce_range, per-channel scales), checked on the
model ORT runs. The per-CPU choice table itself is in test_target_host.py."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

from conftest import make_data, run_ort, tiny_cnn
from onnxcompress.config import QuantConfig
from onnxcompress.data import Dataset
from onnxcompress.quant import target
from onnxcompress.quant.qdq import quantize
from onnxcompress.quant.target import detect_target as real_detect  # bound before conftest's autouse pin

AVX2_HOST = "processor\t: 0\nflags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 fma avx avx2 bmi2\n"


class FakeCpuinfo:
    def __init__(self, text):
        self.text = text

    def __call__(self, path):
        assert str(path) == "/proc/cpuinfo"
        return self

    def read_text(self):
        if self.text is None:
            raise OSError("no /proc")
        return self.text


@pytest.mark.parametrize("machine, cpuinfo, expected", [
    ("x86_64", AVX2_HOST.replace("bmi2", "avx512f avx512_vnni"), "vnni"),
    ("x86_64", AVX2_HOST.replace("bmi2", "avx_vnni"), "vnni"),
    ("x86_64", AVX2_HOST.replace("bmi2", "avx_vnni_int8"), "vnni"),
    ("x86_64", AVX2_HOST, "avx2"),
    ("x86_64", AVX2_HOST.replace("avx2", "avx512f"), "generic"),  # AVX-512 without VNNI and no avx2 flag
    ("x86_64", AVX2_HOST.replace("bmi2", "xavx512_vnni"), "avx2"),  # whole words only
    ("x86_64", None, "generic"),  # /proc/cpuinfo unreadable
    ("aarch64", None, "arm"),
    ("arm64", None, "arm"),
    ("armv7l", None, "arm"),
    ("AMD64", "flags : sse2\n", "generic"),
])
def test_detection_reads_machine_and_cpu_flags(monkeypatch, machine, cpuinfo, expected):
    monkeypatch.setattr(target.platform, "machine", lambda: machine)
    monkeypatch.setattr(target, "Path", FakeCpuinfo(cpuinfo))
    assert real_detect() == expected


def data(n=64, seed=1):
    return Dataset([{"input": make_data(n, seed)["input"]}], None, "test")


def quantized(config: QuantConfig):
    m = tiny_cnn()
    q, rec = quantize(m, data(), config)
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    weights, act_zero_points = {}, set()
    for n in q.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim >= 2:
            weights[n.output[0]] = (inits[n.input[0]], inits[n.input[1]])
        if n.op_type == "QuantizeLinear":
            act_zero_points.add(inits[n.input[2]].dtype)
    x = make_data(32, seed=5)["input"]
    ref, got = run_ort(m, {"input": x})[0], run_ort(q, {"input": x})[0]
    return rec, weights, act_zero_points, float(np.abs(ref - got).max() / np.abs(ref).max())


@pytest.mark.parametrize("name, act, reduce_range", [("vnni", np.uint8, False), ("avx2", np.uint8, True),
                                                     ("arm", np.int8, False)])
def test_the_target_choice_is_what_the_model_gets(name, act, reduce_range):
    rec, weights, zps, err = quantized(QuantConfig(target=name))
    assert rec.stats["target"] == target.choose(name).to_dict()
    assert zps == {np.dtype(act)}  # every activation quantized with the target's type
    assert len(weights) == 3  # the two convs and the Gemm
    for w, scale in weights.values():
        assert w.dtype == np.int8
        if w.ndim == 4:  # conv weights: one scale per output channel, each channel reaching the top of the range
            assert scale.shape == (w.shape[0],)
            top = np.abs(w.reshape(w.shape[0], -1).astype(np.int32)).max(axis=1)
            assert (top == (64 if reduce_range else 127)).all(), top
    assert err < 0.05


def test_auto_uses_the_detected_cpu_and_forced_settings_win(monkeypatch):
    monkeypatch.setattr(target, "detect_target", lambda: "avx2")
    rec, weights, zps, _ = quantized(QuantConfig(target="auto"))
    assert rec.stats["target"]["target"] == "avx2" and rec.stats["target"]["reduce_range"] is True
    assert max(int(np.abs(w.astype(np.int32)).max()) for w, _ in weights.values()) <= 64
    rec, weights, zps, err = quantized(QuantConfig(target="auto", reduce_range=False, activation_type="int8"))
    assert rec.stats["target"]["reduce_range"] is False and "forced" in rec.stats["target"]["why"]
    assert zps == {np.dtype(np.int8)}
    assert max(int(np.abs(w.astype(np.int32)).max()) for w, _ in weights.values()) == 127
    assert err < 0.05
