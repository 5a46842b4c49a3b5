import numpy as np
import onnx
from click.testing import CliRunner

from conftest import make_data, run_ort, tiny_cnn
from onnxcompress.cli import main
from onnxcompress.config import QuantConfig
from onnxcompress.data import Dataset
from onnxcompress.quant.audit import INT8_KERNELS, audit
from onnxcompress.quant.qdq import quantize
from onnxcompress.stats import node_macs


def _q(**kw):
    return quantize(tiny_cnn(), Dataset([{"input": make_data(32)["input"]}], None, "t"), QuantConfig(**kw))[0]


def test_all_compute_on_int8_kernels():
    a = audit(_q())
    assert a["available"] and a["compute_nodes"] == 3
    kernels = {r["node"]: r["kernel"] for r in a["nodes"]}
    assert kernels["conv1"] == "QLinearConv" and kernels["conv2"] == "QLinearConv"
    assert a["int8_mac_share"] == 1.0 and a["fused_share"] == 1.0 and a["float_islands"] == []


def test_unquantized_convs_are_kept_fp32_not_islands_weighted_by_macs():
    a = audit(_q(op_types=("Gemm",)))  # only the Gemm gets Q/DQ: the convs stay float on purpose
    kept = {r["node"]: r["kernel"] for r in a["kept_fp32"]}
    assert set(kept) == {"conv1", "conv2"} and all(k in ("Conv", "FusedConv", "NchwcConv") for k in kept.values())
    assert a["float_islands"] == []
    macs, _ = node_macs(tiny_cnn())
    assert a["int8_mac_share"] == macs["fc"] / sum(macs.values()) and a["fused_share"] == 1.0


def test_excluded_node_runs_in_fp32():
    """ORT's nodes_to_exclude keeps only the excluded Conv's weights float. Its input comes from an int8 Conv, which
    ORT fuses into QLinearConv only with its QuantizeLinear: the excluded Conv reads that DequantizeLinear (conv1
    stays int8, no float island) and runs in FP32 with its float weights."""
    q = _q(exclude=("conv2",))
    conv2 = next(n for n in q.graph.node if n.name == "conv2")
    prod = {o: n.op_type for n in q.graph.node for o in n.output}
    assert prod[conv2.input[0]] == "DequantizeLinear" and conv2.input[1] in {i.name for i in q.graph.initializer}
    a = audit(q)
    kernels = {r["node"]: r["kernel"] for r in a["nodes"]}
    assert kernels["conv2"] not in INT8_KERNELS and kernels["conv1"] == "QLinearConv" and kernels["fc"] == "QGemm"
    roles = {r["node"]: r["role"] for r in a["nodes"]}
    assert roles == {"conv1": "int8", "conv2": "fp32", "fc": "int8"} and a["float_islands"] == []
    macs, _ = node_macs(tiny_cnn())
    assert a["fused_share"] == 1.0 and a["int8_mac_share"] == (macs["fc"] + macs["conv1"]) / sum(macs.values())
    x = make_data(16, seed=3)["input"]
    ref, got = run_ort(tiny_cnn(), {"input": x})[0], run_ort(q, {"input": x})[0]
    assert np.abs(ref - got).max() < 0.05 * np.abs(ref).max()


def test_fp32_model_has_no_int8():
    a = audit(tiny_cnn())
    assert a["int8_mac_share"] == 0.0 and a["fused_share"] == 0.0 and not a["quantized"]


def test_dynamic_matmuls_count_as_int8():
    """Dynamic quantization replaces MatMul/Gemm by integer ops: the audit counts them as int8 MACs."""
    a = audit(_q(mode="dynamic"))
    roles = {r["node"]: (r["role"], r["op"]) for r in a["nodes"]}
    assert any(op in INT8_KERNELS and role == "int8" for role, op in roles.values()), roles
    assert 0.0 < a["int8_mac_share"] <= 1.0 and a["fused_share"] == 1.0


def test_require_fusion_gate(tmp_path, tiny_model_path, tiny_data_path):
    r = CliRunner()  # --speed-check 0: on a model this small the speed check would keep layers FP32 (test_speed.py)
    ok = r.invoke(main, ["quantize", str(tiny_model_path), "-o", str(tmp_path / "a.onnx"), "-c", str(tiny_data_path),
                         "--require-fusion", "0.95", "--speed-check", "0"])
    assert ok.exit_code == 0, ok.output
    from test_speed import _island_data, island_net  # conv1's output is also a graph output: a float island

    onnx.save(island_net(), tmp_path / "island.onnx")
    np.savez(tmp_path / "island.npz", x=_island_data(16).chunks[0]["x"])
    bad = r.invoke(main, ["quantize", str(tmp_path / "island.onnx"), "-o", str(tmp_path / "b.onnx"), "-c",
                          str(tmp_path / "island.npz"), "--require-fusion", "0.95", "--speed-check", "0"])
    assert bad.exit_code == 1 and "fusion gate failed" in bad.stderr
    ins = r.invoke(main, ["inspect", str(tmp_path / "a.onnx"), "--json"])
    assert ins.exit_code == 0 and '"int8_mac_share": 1.0' in ins.stdout
