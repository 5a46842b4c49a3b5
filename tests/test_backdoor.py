"""The back door: a pass that breaks a model makes the command exit 3 with one line naming the pass and the
node, and nothing is written; good models pass the checker, ORT (optimizations on and off) and one run."""
import os

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from conftest import make_data, run_ort, tiny_cnn
from onnxcompress import io as oio
from onnxcompress.backdoor import save_verified, verify
from onnxcompress.cli import main
from onnxcompress.errors import InternalError


def split_model(sizes=(3, 5)) -> onnx.ModelProto:
    """C2f-like: Conv -> Split(channels, sizes) -> Conv on one half -> Concat."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 2, 1, 1)).astype(np.float32), "w1"),
             numpy_helper.from_array(np.array(sizes, np.int64), "sizes"),
             numpy_helper.from_array(rng.standard_normal((5, 5, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1"),
             helper.make_node("Split", ["c", "sizes"], ["a", "b"], name="c2f_split", axis=1),
             helper.make_node("Conv", ["b", "w2"], ["b2"], name="conv2"),
             helper.make_node("Concat", ["a", "b2"], ["y"], name="concat", axis=1)]
    g = helper.make_graph(nodes, "c2f", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 4, 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _one_error_line(r, *needles):
    assert r.exit_code == 3, r.output
    lines = [ln for ln in r.output.strip().splitlines() if not ln.startswith("[")]  # convert's stage names
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_good_model_passes_every_check():
    m = tiny_cnn()
    rec = verify(m, pass_name="simplify", reference=tiny_cnn(), exact=True)
    assert rec.stats["checker"] == "full" and rec.stats["ort_load"] == ["optimizations off", "optimizations on"]
    assert rec.stats["inference"] == "synthetic input" and rec.stats["compared"] == "equal" and not rec.skipped


def test_wrong_split_size_from_prune_exits_3_naming_pass_and_node(tmp_path, monkeypatch):
    src = tmp_path / "c2f.onnx"
    onnx.save_model(split_model(), str(src))

    def broken_prune(model, config, calibration=None, **kw):
        from onnxcompress.passes.base import PassRecord

        m = onnx.ModelProto()
        m.CopyFrom(model)
        m.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.array([3, 4], np.int64), "sizes"))
        return m, PassRecord("prune", stats={})

    monkeypatch.setattr("onnxcompress.passes.prune.prune_model", broken_prune)
    out = tmp_path / "out.onnx"
    r = CliRunner().invoke(main, ["prune", str(src), "-o", str(out), "--ratio", "0.3"])
    _one_error_line(r, "pass 'prune'", "c2f_split", "nothing was written")
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["c2f.onnx"]


def test_float64_weight_into_float_conv_from_simplify_exits_3(tmp_path, tiny_model_path, monkeypatch):
    def broken_simplify(model):
        from onnxcompress.passes.base import PassRecord

        m = onnx.ModelProto()
        m.CopyFrom(model)
        w = numpy_helper.to_array(m.graph.initializer[2]).astype(np.float64)
        m.graph.initializer[2].CopyFrom(numpy_helper.from_array(w, "w2"))
        return m, PassRecord("simplify", stats={"nodes_before": 7, "nodes_after": 7})

    monkeypatch.setattr("onnxcompress.passes.simplify.simplify", broken_simplify)
    out = tmp_path / "out.onnx"
    r = CliRunner().invoke(main, ["simplify", str(tiny_model_path), "-o", str(out)])
    _one_error_line(r, "pass 'simplify'", "conv2")
    assert not out.exists()


def test_exact_pass_that_changes_the_outputs_is_caught_at_the_first_differing_node(tmp_path, tiny_model_path,
                                                                                   monkeypatch):
    def lossy(model, config, calibration=None, **kw):
        from onnxcompress.passes.base import PassRecord

        m = onnx.ModelProto()
        m.CopyFrom(model)
        w = numpy_helper.to_array(m.graph.initializer[2]) * 1.01
        m.graph.initializer[2].CopyFrom(numpy_helper.from_array(w, "w2"))
        return m, PassRecord("prune", stats={})

    monkeypatch.setattr("onnxcompress.passes.prune.prune_model", lossy)
    out = tmp_path / "out.onnx"
    data = tmp_path / "d.npz"
    np.savez(data, **make_data(4))
    r = CliRunner().invoke(main, ["prune", str(tiny_model_path), "-o", str(out), "--zeroed-only", "-c", str(data)])
    line = _one_error_line(r, "pass 'prune'", "at node 'conv2'", "outputs differ", "your data")
    assert "logits" in line and not out.exists()


def test_non_finite_output_names_the_node_that_made_it():
    ref = tiny_cnn()
    bad = tiny_cnn()
    bad.graph.initializer[4].CopyFrom(numpy_helper.from_array(np.full((3, 8), 3e38, np.float32), "wf"))
    with pytest.raises(InternalError, match="pass 'quantize'.*at node 'fc'.*NaN/inf"):
        verify(bad, pass_name="quantize", reference=ref)


def test_synthetic_input_grows_until_the_model_runs():
    # a 15x15 kernel without padding on dynamic H, W: 8 pixels are too few for the model and its reference
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((2, 1, 15, 15)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="big_kernel")], "k",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, "h", "w"])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    rec = verify(m, pass_name="simplify", reference=m, exact=True)
    assert rec.stats["inference"] == "synthetic input" and rec.stats["compared"] == "equal"


def test_failed_stage_in_convert_stops_the_pipeline(tmp_path, tiny_model_path, tiny_data_path, monkeypatch):
    def broken_prune(model, config, calibration=None, **kw):
        from onnxcompress.passes.base import PassRecord

        m = onnx.ModelProto()
        m.CopyFrom(model)
        m.graph.node[1].op_type = "Reluu"
        return m, PassRecord("prune", stats={})

    monkeypatch.setattr("onnxcompress.passes.prune.prune_model", broken_prune)
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["convert", str(tiny_model_path), "-o", str(out), "-c", str(tiny_data_path),
                                  "--prune-ratio", "0.3"])
    _one_error_line(r, "pass 'prune'")
    assert sorted(os.listdir(out)) == ["tiny.simplified.onnx"]  # nothing after the failed stage


def test_quantize_on_best_writes_are_checked(tmp_path, tiny_model_path, tiny_data_path, monkeypatch):
    def broken_quantize(model, calibration, validation, config, on_best=None, **kw):
        from onnxcompress.passes.base import PassRecord

        m = onnx.ModelProto()
        m.CopyFrom(model)
        m.graph.node[0].input[1] = "nowhere"
        rec = PassRecord("quantize", stats={})
        on_best(m, rec)
        return m, rec

    monkeypatch.setattr("onnxcompress.quant.search.quantize_model", broken_quantize)
    out = tmp_path / "q.onnx"
    r = CliRunner().invoke(main, ["quantize", str(tiny_model_path), "-o", str(out), "-c", str(tiny_data_path)])
    _one_error_line(r, "pass 'quantize'", "conv1")
    assert not out.exists()


def test_big_model_branch_checks_by_path_and_moves_into_place(tmp_path, monkeypatch):
    """The >2 GB branch, on a small model (is_big forced): staged in a hidden folder, checked by path,
    then the .data file and the model moved into place; a failing model leaves nothing behind."""
    monkeypatch.setattr(oio, "is_big", lambda model: True)
    m = tiny_cnn(channels=16)
    out = save_verified(m, tmp_path / "m.onnx", pass_name="prune")
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.data"]
    x = np.ones((1, 1, 8, 8), np.float32)
    np.testing.assert_array_equal(run_ort(out, {"input": x})[0], run_ort(tiny_cnn(channels=16), {"input": x})[0])
    bad = tiny_cnn(channels=16)
    bad.graph.node[0].input[1] = "nowhere"
    with pytest.raises(InternalError, match="pass 'prune'"):
        save_verified(bad, tmp_path / "bad.onnx", pass_name="prune")
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.data"]


def test_reference_over_2gb_is_not_serialized_outputs_are_checked_finite(monkeypatch):
    ref, cand = tiny_cnn(), tiny_cnn()
    monkeypatch.setattr(oio, "is_big", lambda model: model is ref)  # e.g. a quantized model of a 2.1 GB original
    rec = verify(cand, pass_name="quantize", reference=ref, exact=True)
    assert rec.stats["inference"] == "synthetic input" and rec.stats["compared"] == "finite"
    assert [s.target for s in rec.skipped] == ["reference"]
