import numpy as np
from click.testing import CliRunner

from conftest import make_data, tiny_cnn
from onnxcompress.cli import main
from onnxcompress.config import QuantConfig
from onnxcompress.data import Dataset
from onnxcompress.quant.audit import audit
from onnxcompress.quant.qdq import quantize
from onnxcompress.stats import node_macs


def _q(**kw):
    return quantize(tiny_cnn(), Dataset([{"input": make_data(32)["input"]}], None, "t"), QuantConfig(**kw))[0]


def test_all_compute_on_int8_kernels():
    a = audit(_q())
    assert a["available"] and a["compute_nodes"] == 3
    kernels = {r["node"]: r["kernel"] for r in a["nodes"]}
    assert kernels["conv1"] == "QLinearConv" and kernels["conv2"] == "QLinearConv"
    assert a["int8_mac_share"] == 1.0 and a["float_islands"] == []


def test_excluded_node_is_a_float_island_weighted_by_macs():
    q = _q(exclude=("conv2",))
    a = audit(q)
    islands = {r["node"]: r["kernel"] for r in a["float_islands"]}
    assert "conv2" in islands and islands["conv2"] not in ("QLinearConv",)
    macs, _ = node_macs(tiny_cnn())
    expected = 1 - macs["conv2"] / sum(macs.values())
    # fc may also stay float once its input is float: the share is at most the share without conv2
    assert a["int8_mac_share"] <= expected + 1e-12
    assert a["int8_mac_share"] > 0


def test_fp32_model_has_no_int8():
    a = audit(tiny_cnn())
    assert a["int8_mac_share"] == 0.0 and not a["quantized"]


def test_require_fusion_gate(tmp_path, tiny_model_path, tiny_data_path):
    r = CliRunner()
    ok = r.invoke(main, ["quantize", str(tiny_model_path), "-o", str(tmp_path / "a.onnx"), "-c", str(tiny_data_path),
                         "--require-fusion", "0.95"])
    assert ok.exit_code == 0, ok.output
    bad = r.invoke(main, ["quantize", str(tiny_model_path), "-o", str(tmp_path / "b.onnx"), "-c", str(tiny_data_path),
                          "--exclude", "conv2", "--require-fusion", "0.95"])
    assert bad.exit_code == 1 and "fusion gate failed" in bad.stderr
    ins = r.invoke(main, ["inspect", str(tmp_path / "a.onnx"), "--json"])
    assert ins.exit_code == 0 and '"int8_mac_share": 1.0' in ins.stdout
