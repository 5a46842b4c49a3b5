"""The emulated arm64 target, end to end: set-up from nothing (into a fresh directory, ~5 minutes), a tiny
int8 model validated there, and a model built to fuse differently on x86 and arm64, asserted from the
graphs ORT writes on each side. Marked `arm64` (root, debootstrap, qemu-user-static): not in the README
test run; .ci/run runs them as their own step."""
from __future__ import annotations

import json
import platform as host_platform
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort, tiny_cnn
from onnxcompress.cli import main
from onnxcompress.platform import get_backend, output_scales
from onnxcompress.platform import qemu as qemu_mod

pytestmark = pytest.mark.arm64
ON_X86 = host_platform.machine().lower() in ("x86_64", "amd64")
CPU = "cortex-a72"


def branchy(seed: int = 0, ch: int = 8) -> onnx.ModelProto:
    """input -> conv0 -> Relu -> {conv_a 3x3, conv_b 1x1} -> Add -> Relu -> GAP -> Gemm(3). With int8 activations
    ORT on x86 runs its convs in float (DQ -> Conv -> Q islands), ORT on arm64 fuses them into QLinearConv."""
    rng = np.random.default_rng(seed)
    inits: list = []

    def w(*shape) -> str:
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), f"w{len(inits)}"))
        return inits[-1].name

    nodes = [helper.make_node("Conv", ["input", w(ch, 1, 3, 3), w(ch)], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             helper.make_node("Conv", ["r0", w(ch, ch, 3, 3), w(ch)], ["ca"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["r0", w(ch, ch, 1, 1), w(ch)], ["cb"], name="conv_b"),
             helper.make_node("Add", ["ca", "cb"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["r1"], name="relu1"),
             helper.make_node("GlobalAveragePool", ["r1"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", w(3, ch), w(3)], ["logits"], name="fc", transB=1)]
    g = helper.make_graph(nodes, "branchy", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


@pytest.fixture(scope="session")
def built(tmp_path_factory, request):
    """`target setup arm64` from nothing, into a fresh cache directory (what every other test here uses).
    A plugin may register --arm64-cache DIR to reuse a built target while working on these tests."""
    problem = get_backend("arm64").available()
    if problem:
        pytest.skip(problem)
    cache = request.config.getoption("arm64_cache", default=None)
    cache = Path(cache) if cache else tmp_path_factory.mktemp("targets") / "arm64"
    r = CliRunner().invoke(main, ["target", "setup", "arm64", "--cache", str(cache)])
    return cache, r


@pytest.fixture
def target(built, monkeypatch):
    cache, r = built
    assert r.exit_code == 0, r.output
    monkeypatch.setattr(qemu_mod, "DEFAULT_CACHE", cache.parent)  # the CLI's --platform finds this target
    return get_backend("arm64", cache)


def test_setup_from_nothing(built):
    cache, r = built
    assert r.exit_code == 0, r.output
    for step in ("1/4 debootstrap --foreign", "2/4 debootstrap --second-stage", "3/4 pip download onnxruntime==",
                 "4/4 smoke run", "done: arm64 target"):
        assert step in r.stderr, (step, r.stderr)
    st = json.loads(CliRunner().invoke(main, ["target", "status", "arm64", "--cache", str(cache), "--json"]).stdout)
    assert st["ready"] and st["onnxruntime"] == onnxruntime.__version__ and st["python"].startswith("3.")
    assert st["size_bytes"] > 100e6 and (cache / "rootfs" / "usr" / "bin" / "python3").exists()
    assert not (cache / "rootfs" / "proc" / "cpuinfo").exists()  # /proc stays unmounted (ORT's cpuinfo would read x86's)
    again = CliRunner().invoke(main, ["target", "setup", "arm64", "--cache", str(cache)])
    assert again.exit_code == 0 and "nothing to do" in again.stderr and "1/4" not in again.stderr


def test_fp32_numerics_on_target(target):
    m = tiny_cnn()
    x = np.random.default_rng(1).standard_normal((5, 1, 8, 8)).astype(np.float32)
    run = target.run_models({"m": m}, [{"input": x}], CPU, optimized=False)
    assert run.info["machine"] == "aarch64" and run.info["onnxruntime"] == onnxruntime.__version__
    assert "asimddp" not in run.info["cpu_features"]  # cortex-a72 has no dot product; QEMU_CPU reached ORT
    np.testing.assert_allclose(run.outputs["m"][0]["logits"], run_ort(m, {"input": x})[0], rtol=1e-5, atol=1e-5)
    assert "asimddp" in target.run_models({}, [], "cortex-a76", optimized=False).info["cpu_features"]


def _quantized(tmp_path: Path, model: onnx.ModelProto, *extra: str) -> tuple[Path, Path, Path]:
    src, out, data = tmp_path / "fp32.onnx", tmp_path / "int8.onnx", tmp_path / "d.npz"
    onnx.save(model, str(src))
    rng = np.random.default_rng(0)
    np.savez(data, input=rng.standard_normal((48, 1, 8, 8)).astype(np.float32))
    # the host's own target unless a test names one: conftest pins detection to VNNI (8-bit weights), which ORT's
    # AVX2 kernels saturate on a host without VNNI; 7-bit weights are exact on every x86 host
    host = () if "--target" in extra else ("--target", "avx2")
    r = CliRunner().invoke(main, ["quantize", str(src), "-c", str(data), "-o", str(out), "--speed-check", "0", *host, *extra])
    assert r.exit_code == 0, r.output
    return src, out, data


def test_tiny_int8_validated_on_arm64(target, tmp_path):
    src, q, data = _quantized(tmp_path, tiny_cnn())
    r = CliRunner().invoke(main, ["validate", str(src), str(q), "-d", str(data), "--platform", f"arm64:{CPU}",
                                  "--samples", "24", "--min-cosine", "0.9", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["platform"] == f"arm64:{CPU}" and res["samples"] == 24 and res["target_info"]["machine"] == "aarch64"
    assert res["verdict"] == "passed" and res["gates"][0]["name"] == "min_cosine"
    # the candidate on arm64 against the host, in output steps (the logits come out of a DequantizeLinear)
    scale = output_scales(onnx.load(str(q)))["logits"]
    steps = res["steps"]["candidate"]["logits"]
    assert steps["scale"] == pytest.approx(scale["scale"]) and steps["values"] == 24 * 3
    assert steps["max_steps"] <= 1.0 + 1e-6  # ARM's int8 kernels round differently, by one step at most
    assert steps["max_abs_diff"] == pytest.approx(steps["max_steps"] * scale["scale"], rel=1e-5, abs=1e-9)
    assert res["steps"]["reference"]["logits"]["max_steps"] is None  # FP32 output: n/a
    assert res["steps"]["reference"]["logits"]["max_abs_diff"] < 1e-4
    # the same candidate outputs, straight from the backend, against ORT on the host
    x = np.load(data)["input"][:24]
    on_arm = target.run(onnx.load(str(q)), [{"input": x}], CPU)[0]["logits"]
    host = run_ort(q, {"input": x}, optimize=True)[0]
    assert np.abs(on_arm - host).max() == pytest.approx(steps["max_abs_diff"], abs=1e-7)
    text = CliRunner().invoke(main, ["validate", str(src), str(q), "-d", str(data), "--platform", f"arm64:{CPU}",
                                     "--samples", "8"])
    assert text.exit_code == 0 and "output steps" in text.stdout and f"fusion on arm64:{CPU} (emulated)" in text.stdout


def test_fusion_audit_host_vs_target(target, tmp_path):
    m = branchy()
    src, q, _ = _quantized(tmp_path, m, "--target", "vnni", "--activation-type", "int8")
    qm = onnx.load(str(q))
    on_arm = target.optimized_model(qm, CPU)  # the graph ORT writes on arm64 (optimized_model_filepath)
    arm_ops = [n.op_type for n in on_arm.graph.node]
    assert arm_ops.count("QLinearConv") == 3 and "Conv" not in arm_ops
    from onnxcompress.runtime.session import make_session

    make_session(qm, optimized_path=str(tmp_path / "host_opt.onnx"))
    host_ops = [n.op_type for n in onnx.load(str(tmp_path / "host_opt.onnx")).graph.node]
    r = CliRunner().invoke(main, ["inspect", str(q), "--platform", f"arm64:{CPU}", "--json"])
    assert r.exit_code == 0, r.output
    st = json.loads(r.stdout)
    tgt = st["fusion_target"]
    assert tgt["platform"] == f"arm64:{CPU} (emulated)" and tgt["int8_nodes"] == 4 and tgt["fused_share"] == 1.0
    assert st["fusion"]["int8_nodes"] == 1 + host_ops.count("QLinearConv")  # fc (QGemm) + the convs ORT fused here
    if ON_X86:  # ORT on x86 does not fuse these int8-activation convs: the host's audit is wrong for arm64
        assert host_ops.count("QLinearConv") == 0 and st["fusion"]["fused_share"] < 0.5
        assert len(st["fusion"]["float_islands"]) == 3 and not tgt["float_islands"]


@pytest.mark.skipif(not ON_X86, reason="--target arm on an ARM host needs no emulation")
def test_quantize_target_arm_reports_the_target(target, tmp_path):
    src = tmp_path / "fp32.onnx"
    onnx.save(branchy(), str(src))
    data = tmp_path / "d.npz"
    np.savez(data, input=np.random.default_rng(0).standard_normal((48, 1, 8, 8)).astype(np.float32))
    r = CliRunner().invoke(main, ["quantize", str(src), "-c", str(data), "-o", str(tmp_path / "q.onnx"),
                                  "--target", "arm", "--require-fusion", "0.95", "--json"])
    assert r.exit_code == 0, r.output  # the gate reads the target's figure: on x86 these convs are islands
    st = json.loads(r.stdout)["stats"]
    assert st["fusion"]["platform"] == "arm64:cortex-a76 (emulated)" and st["fusion"]["fused_share"] == 1.0
    assert st["fusion_host"]["platform"].startswith("host (") and st["fusion_host"]["fused_share"] < 0.5
    assert st["target_audit"]["tried"][0]["activation_type"] == "int8"
    assert any("speed check skipped" in n for n in st["notes"]) and "speed" not in st


def test_bench_platform_prints_no_timings(target, tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(tiny_cnn(), str(p))
    r = CliRunner().invoke(main, ["bench", str(p), "--platform", "arm64"])
    assert r.exit_code == 0, r.output
    assert "emulated speed is not device speed" in r.stdout and " ms" not in r.stdout
