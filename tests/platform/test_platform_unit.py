"""The emulated-target pieces that need no emulator: --platform parsing, output quantization steps, the
missing-tool message, the runner script's file protocol (run here with the host's python), and
quantize --target arm's record when the target is not set up. (With the emulator: test_arm64.py.)"""
from __future__ import annotations

import json
import platform as host_platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort, tiny_cnn
from onnxcompress.cli import main
from onnxcompress.errors import ConfigError
from onnxcompress.platform import PlatformSpec, StepCounter, output_scales, parse_platform
from onnxcompress.platform import qemu as qemu_mod
from onnxcompress.platform.qemu import QemuChroot

ON_ARM = host_platform.machine().lower() in ("aarch64", "arm64")


def test_parse_platform():
    assert parse_platform("arm64") == PlatformSpec("arm64", "cortex-a76")
    assert parse_platform("aarch64:max") == PlatformSpec("arm64", "max")
    assert str(parse_platform(" ARM64:cortex-a72 ")) == "arm64:cortex-a72"
    with pytest.raises(ConfigError, match="not a known target; use arm64"):
        parse_platform("riscv64")
    with pytest.raises(ConfigError, match="'cortex-a53' is not one of cortex-a76, cortex-a72, max"):
        parse_platform("arm64:cortex-a53")


def qdq_output_model(per_channel: bool = False) -> onnx.ModelProto:
    """x[N,4] -> QuantizeLinear -> DequantizeLinear -> y (scale 0.5, or per column 0.5/0.25/1/2), and a float z."""
    scale = np.array([0.5, 0.25, 1.0, 2.0], np.float32) if per_channel else np.array(0.5, np.float32)
    zp = np.zeros(scale.shape, np.int8)
    inits = [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zp, "zp")]
    axis = {"axis": 1} if per_channel else {}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q", **axis),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"], name="dq", **axis),
             helper.make_node("Flatten", ["dq"], ["y"], name="flat"),
             helper.make_node("Relu", ["x"], ["z"], name="relu")]
    g = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]),
                           helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(m)
    return m


def test_output_steps_per_tensor():
    m = qdq_output_model()
    scales = output_scales(m)
    assert scales["z"] is None and scales["y"]["scale"] == 0.5 and scales["y"]["node"] == "dq"
    x = np.array([[0.1, 1.0, -2.0, 3.0]], np.float32)
    y = run_ort(m, {"x": x})[0]
    c = StepCounter(scales["y"])
    c.update(y, y + np.array([[0.0, 0.5, -1.0, 0.0]], np.float32))  # 1 step, 2 steps
    r = c.result()
    assert r["max_steps"] == 2.0 and r["differing"] == 2 and r["values"] == 4 and r["scale"] == 0.5
    f = StepCounter(scales["z"])
    f.update(y, y + 0.25)
    assert f.result()["max_steps"] is None and f.result()["why"].startswith("n/a")
    assert f.result()["max_abs_diff"] == 0.25


def test_output_steps_per_channel():
    m = qdq_output_model(per_channel=True)
    s = output_scales(m)["y"]
    assert s is None  # the per-channel scale went through a Flatten: its axis is not known there
    m.graph.node[2].CopyFrom(helper.make_node("Identity", ["dq"], ["y"], name="flat"))
    s = output_scales(m)["y"]
    assert s["axis"] == 1 and s["scale"].tolist() == [0.5, 0.25, 1.0, 2.0]
    c = StepCounter(s)
    c.update(np.zeros((2, 4)), np.array([[0, 0.5, 0, 0], [0, 0, 0, 2.0]]))  # 0.5/0.25 = 2 steps; 2/2 = 1 step
    assert c.result()["max_steps"] == 2.0


def test_missing_tools_message(monkeypatch, tmp_path):
    monkeypatch.setattr(qemu_mod.shutil, "which", lambda _tool: None)
    b = QemuChroot("arm64", tmp_path / "t")
    msg = b.available()
    assert "debootstrap" in msg and "qemu-aarch64-static" in msg
    assert "apt-get install -y debootstrap qemu-user-static binfmt-support" in msg
    r = CliRunner().invoke(main, ["target", "setup", "arm64", "--cache", str(tmp_path / "t")])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "apt-get install -y debootstrap" in r.stderr
    assert not (tmp_path / "t").exists()  # nothing was started
    st = CliRunner().invoke(main, ["target", "status", "arm64", "--cache", str(tmp_path / "t"), "--json"])
    assert st.exit_code == 0 and json.loads(st.stdout)["ready"] is False
    assert "apt-get install" in json.loads(st.stdout)["missing"]


def test_not_set_up_is_one_line(tmp_path):
    b = QemuChroot("arm64", tmp_path / "none")
    st = b.status()
    assert st["ready"] is False and "onnxcompress target setup arm64" in st["why"]
    from onnxcompress.errors import InputError

    expect = "apt-get install" if b.available() else "not ready: not set up; run: onnxcompress target setup arm64"
    with pytest.raises(InputError, match=expect):
        b.run(tiny_cnn(), [{"input": np.zeros((1, 1, 8, 8), np.float32)}], "cortex-a72")
    r = CliRunner().invoke(main, ["target", "clean", "arm64", "--cache", str(tmp_path / "none")])
    assert r.exit_code == 0 and "nothing to remove" in r.stdout


def test_bad_platform_is_one_line(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(tiny_cnn(), str(p))
    for cmd in (["validate", str(p), str(p), "--platform", "arm64:cortex-a53"],
                ["inspect", str(p), "--platform", "x86"], ["bench", str(p), "--platform", "arm64:nope"]):
        r = CliRunner().invoke(main, cmd)
        assert r.exit_code == 2 and r.stderr.count("\n") == 1, (cmd, r.output)


def test_runner_script_protocol(tmp_path):
    """target_runner.py (what the target's python runs) on the host's python: the same file protocol."""
    m = tiny_cnn()
    onnx.save(m, str(tmp_path / "m.onnx"))
    rng = np.random.default_rng(0)
    runs = [rng.standard_normal((n, 1, 8, 8)).astype(np.float32) for n in (3, 1)]
    np.savez(tmp_path / "feeds.npz", **{f"{i}/input": x for i, x in enumerate(runs)})
    job = {"models": {"a": str(tmp_path / "m.onnx")}, "feeds": str(tmp_path / "feeds.npz"),
           "outputs": str(tmp_path / "out.npz"), "optimized": {"a": str(tmp_path / "opt.onnx")},
           "info": str(tmp_path / "info.json")}
    (tmp_path / "job.json").write_text(json.dumps(job))
    script = Path(qemu_mod.__file__).with_name("target_runner.py")
    subprocess.run([sys.executable, str(script), str(tmp_path / "job.json")], check=True)
    with np.load(tmp_path / "out.npz") as z:
        for i, x in enumerate(runs):
            np.testing.assert_allclose(z[f"a/{i}/0"], run_ort(m, {"input": x})[0], rtol=1e-5, atol=1e-6)
    opt = onnx.load(str(tmp_path / "opt.onnx"))
    assert any(n.domain.startswith("com.microsoft") for n in opt.graph.node)  # ORT's fused kernels: its optimized graph
    import onnxruntime

    assert json.loads((tmp_path / "info.json").read_text())["onnxruntime"] == onnxruntime.__version__


@pytest.mark.skipif(ON_ARM, reason="on an ARM host --target arm needs no emulation")
def test_target_arm_without_target_says_so(tmp_path):
    from onnxcompress.config import QuantConfig
    from onnxcompress.passes.base import PassRecord
    from onnxcompress.platform.tune import cross_target_config, fuse_on_target

    cfg, note = cross_target_config(QuantConfig(target="arm"))
    assert cfg.speed_check_seconds == 0 and "host timings say nothing about the target" in note
    assert cross_target_config(QuantConfig(target="vnni")) == (QuantConfig(target="vnni"), None)
    rec = PassRecord("quantize", stats={"fusion": {"fused_share": 0.5}})
    called = []
    q, rec2, changed = fuse_on_target(tiny_cnn(), rec, lambda c: called.append(c), cfg,
                                      backend=QemuChroot("arm64", tmp_path / "none"))
    assert not changed and not called and rec2 is rec
    assert rec.stats["fusion"]["platform"].startswith("host (")
    assert rec.stats["target_audit"]["available"] is False and "not ready" in rec.stats["target_audit"]["why"]


def test_setup_command_failure_is_one_line(tmp_path):
    """A failing set-up step (debootstrap, pip) is one InputError naming the step and its last output line;
    debootstrap's "I: ..." lines reach the progress callback as they come."""
    from onnxcompress.errors import InputError

    seen: list[str] = []
    b = QemuChroot("arm64", tmp_path / "t")
    b._cmd(["sh", "-c", "echo 'I: Retrieving Packages'; echo noise"], "first stage", seen.append)
    assert seen == ["  Retrieving Packages"]
    with pytest.raises(InputError, match=r"failed in debootstrap \(second stage\): E: no space left; .* again"):
        b._cmd(["sh", "-c", "echo 'I: Unpacking'; echo 'E: no space left' >&2; exit 1"], "debootstrap (second stage)")
