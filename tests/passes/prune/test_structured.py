"""Structured pruning at a ratio on ONNX: widths aligned, floors kept, model valid and smaller."""
import numpy as np
import onnx
import pytest

from conftest import run_ort
from onnxcompress.config import PruneConfig
from onnxcompress.passes.prune import prune_model, structured_prune

from .test_remove import InvertedResidual, ResNetish, export, randomize_bn, weight_shapes

torch = pytest.importorskip("torch")


def out_widths(model):
    return [s[0] if len(s) == 4 else None for s in weight_shapes(model, ("Conv",))]


def test_ratio_aligned_and_floored(tmp_path):
    net = ResNetish()
    randomize_bn(net)
    m = export(net, (1, 3, 8, 8), tmp_path)
    out, rec = structured_prune(m, 0.5, align=8, min_channels=8)
    onnx.checker.check_model(out)
    widths = out_widths(out)
    assert all(w % 8 == 0 and w >= 8 for w in widths), widths
    assert widths != out_widths(m)  # something was pruned
    assert rec.stats["params_after"] < 0.75 * rec.stats["params_before"]
    # coupled residual convs keep equal widths (they write the same stream)
    assert widths[2] == widths[0] and widths[4] == widths[5]
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert run_ort(out, {"input": x})[0].shape == (2, 5)


def test_layer_scope_prunes_each_layer_by_ratio(tmp_path):
    net = InvertedResidual()
    randomize_bn(net)
    m = export(net, (1, 3, 6, 6), tmp_path)
    out, rec = structured_prune(m, 0.5, scope="layer", align=4, min_channels=4)
    assert weight_shapes(out, ("Conv",))[1][0] == 16  # expand 32 -> 16, depthwise follows
    dw = weight_shapes(out, ("Conv",))[2]
    assert dw == (16, 1, 3, 3)


def test_zeroed_only_leaves_live_channels(tmp_path):
    net = ResNetish()
    m = export(net, (1, 3, 8, 8), tmp_path)
    out, rec = prune_model(m, PruneConfig(enabled=True, ratio=0.5, zeroed_only=True))
    assert weight_shapes(out) == weight_shapes(m)  # nothing was zero
    assert rec.stats["groups_removed"] == 0


def test_prune_on_model_with_unknown_op_is_valid(tmp_path):
    from onnx import helper
    net = ResNetish()
    m = export(net, (1, 3, 8, 8), tmp_path)
    first_relu = next(n for n in m.graph.node if n.op_type == "Relu")
    first_relu.op_type, first_relu.domain = "Mystery", "com.example"
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    out, rec = structured_prune(m, 0.5)
    assert weight_shapes(out)[0][0] == 16  # stem feeds the unknown op: blocked
    assert any("Mystery" in s.reason for s in rec.skipped)
