"""The bad-input matrix: every case is a one-line error naming the problem, exit code 2, no traceback,
no partial output, and the input file unchanged. The case ids below are the count that is printed."""
import json
import pickle
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from conftest import make_data, tiny_cnn
from onnxcompress.cli import main


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def _write_model(d: Path, name: str, model: onnx.ModelProto) -> Path:
    p = d / name
    p.write_bytes(model.SerializeToString())
    return p


def _bad_opset(d):
    m = tiny_cnn()
    m.opset_import[0].version = 99
    return _write_model(d, "opset99.onnx", m)


def _checker_fail(d):
    m = tiny_cnn()
    m.graph.node[1].input[0] = "nowhere"
    return _write_model(d, "broken.onnx", m)


def _missing_external(d):
    p = d / "ext.onnx"
    onnx.save_model(tiny_cnn(), str(p), save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    (d / "ext.onnx.data").unlink()
    return p


def _nan_weights(d):
    m = tiny_cnn()
    w = onnx.numpy_helper.to_array(m.graph.initializer[0]).copy()
    w.flat[0] = np.nan
    m.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(w, m.graph.initializer[0].name))
    return _write_model(d, "nanw.onnx", m)


def _not_a_model(d):
    p = d / "tensor.onnx"
    p.write_bytes(onnx.ModelProto(ir_version=8, producer_name="not a model").SerializeToString())
    return p


def _data(d, name, **arrays):
    p = d / name
    np.savez(p, **arrays)
    return p


X = np.zeros((4, 1, 8, 8), np.float32)

# (id, builder(dir, model, data) -> argv, expected words in the error)
CASES = [
    ("missing-model", lambda d, m, c: ["quantize", str(d / "nope.onnx"), "-o", str(d / "out.onnx"), "-c", str(c)], "not found"),
    ("empty-model", lambda d, m, c: ["quantize", str(_touch(d / "empty.onnx")), "-o", str(d / "out.onnx"), "-c", str(c)], "empty"),
    ("text-as-onnx", lambda d, m, c: ["quantize", str(_text(d / "notes.onnx")), "-o", str(d / "out.onnx"), "-c", str(c)], "not an ONNX model"),
    ("truncated-onnx", lambda d, m, c: ["quantize", str(_trunc(d, m)), "-o", str(d / "out.onnx"), "-c", str(c)], "not an ONNX model"),
    ("protobuf-not-model", lambda d, m, c: ["validate", str(m), str(_not_a_model(d)), "--data", str(c)], "holds no ONNX graph"),
    ("checker-fails", lambda d, m, c: ["simplify", str(_checker_fail(d)), "-o", str(d / "out.onnx")], "onnx.checker"),
    ("missing-external-data", lambda d, m, c: ["simplify", str(_missing_external(d)), "-o", str(d / "out.onnx")], "external data"),
    ("opset-out-of-range", lambda d, m, c: ["simplify", str(_bad_opset(d)), "-o", str(d / "out.onnx")], "opset 99"),
    ("nan-weights", lambda d, m, c: ["quantize", str(_nan_weights(d)), "-o", str(d / "out.onnx"), "-c", str(c)], "NaN/Inf"),
    ("model-is-folder", lambda d, m, c: ["simplify", str(d), "-o", str(d / "out.onnx")], "is a folder"),
    ("calib-missing", lambda d, m, c: ["quantize", str(m), "-o", str(d / "out.onnx"), "-c", str(d / "none.npz")], "not found"),
    ("calib-missing-name", lambda d, m, c: ["quantize", str(m), "-o", str(d / "out.onnx"), "-c", str(_data(d, "a.npz", x=X))], "no array for model input 'input'"),
    ("calib-extra-name", lambda d, m, c: ["quantize", str(m), "-o", str(d / "out.onnx"), "-c", str(_data(d, "b.npz", input=X, mask=X))], "'mask' that is not a model input"),
    ("calib-wrong-rank", lambda d, m, c: ["quantize", str(m), "-o", str(d / "out.onnx"), "-c", str(_data(d, "c.npz", input=X[:, 0]))], "expects rank 4"),
    ("calib-wrong-dtype", lambda d, m, c: ["quantize", str(m), "-o", str(d / "out.onnx"), "-c", str(_data(d, "e.npz", input=X.astype(np.int64)))], "expects dtype float32"),
    ("calib-wrong-static-dim", lambda d, m, c: ["quantize", str(m), "-o", str(d / "out.onnx"), "-c", str(_data(d, "f.npz", input=np.zeros((4, 3, 8, 8), np.float32)))], "axis 1: 1 != 3"),
    ("calib-zero-samples", lambda d, m, c: ["quantize", str(m), "-o", str(d / "out.onnx"), "-c", str(_data(d, "g.npz", input=X[:0]))], "zero samples"),
    ("calib-nan-inf", lambda d, m, c: ["quantize", str(m), "-o", str(d / "out.onnx"), "-c", str(_data(d, "h.npz", input=X + np.inf))], "NaN/Inf"),
    ("calib-not-npz", lambda d, m, c: ["quantize", str(m), "-o", str(d / "out.onnx"), "-c", str(_text(d / "calib.npz"))], "cannot read data file"),
    ("labels-wrong-length", lambda d, m, c: ["validate", str(m), str(m), "--data", str(_data(d, "i.npz", input=X, labels=np.zeros(5)))], "'labels' has 5 entries"),
    ("output-is-input", lambda d, m, c: ["quantize", str(m), "-o", str(m), "-c", str(c)], "is the input file"),
    ("output-folder-missing", lambda d, m, c: ["simplify", str(m), "-o", str(d / "no" / "out.onnx")], "does not exist"),
    ("output-folder-not-writable", lambda d, m, c: ["simplify", str(m), "-o", "/proc/out.onnx"], "cannot write"),
    ("output-under-a-file", lambda d, m, c: ["simplify", str(m), "-o", str(_text(d / "f.txt") / "out.onnx")], "is a file"),
    ("config-unknown-key", lambda d, m, c: ["convert", str(m), "-o", str(d / "out"), "-c", str(c), "--config", str(_json(d, {"quant": {"bogus": 1}}))], "unknown config key 'quant.bogus'"),
    ("config-wrong-type", lambda d, m, c: ["convert", str(m), "-o", str(d / "out"), "-c", str(c), "--config", str(_json(d, {"quant": {"batch_size": "big"}}))], "quant.batch_size"),
    ("config-not-json", lambda d, m, c: ["convert", str(m), "-o", str(d / "out"), "-c", str(c), "--config", str(_text(d / "cfg.json"))], "not valid JSON"),
    ("weights-pickle-with-code", lambda d, m, c: ["export", f"{_factory(d)}:build", "--weights", str(_evil(d)), "--input", "x:1x4", "-o", str(d / "out.onnx")], "weights_only"),
    ("factory-unresolved", lambda d, m, c: ["export", "no_such_pkg_xyz.models:build", "--input", "x:1x4", "-o", str(d / "out.onnx")], "cannot import module"),
    ("factory-no-colon", lambda d, m, c: ["export", "justaname", "--input", "x:1x4", "-o", str(d / "out.onnx")], "has no ':'"),
    ("shape-spec-unparsable", lambda d, m, c: ["export", f"{_factory(d)}:build", "--input", "x:4xabc-1", "-o", str(d / "out.onnx")], "input spec"),
    ("provider-missing", lambda d, m, c: ["bench", str(m), "--providers", "cuda", "--runs", "1"], "pip install onnxruntime-gpu"),
    ("static-quant-without-data", lambda d, m, c: ["quantize", str(m), "--mode", "static", "-o", str(d / "out.onnx")], "needs calibration data"),
    ("validate-different-inputs", lambda d, m, c: ["validate", str(m), str(_other_inputs(d)), "--data", str(c)], "different inputs"),
]


def _touch(p):
    p.write_bytes(b"")
    return p


def _text(p):
    p.write_text("just some notes\n")
    return p


def _trunc(d, m):
    data = m.read_bytes()
    p = d / "trunc.onnx"
    p.write_bytes(data[: len(data) // 3])
    return p


def _json(d, obj):
    p = d / "cfg.json"
    p.write_text(json.dumps(obj))
    return p


def _factory(d):
    p = d / "netdef.py"
    p.write_text("import torch\ndef build():\n    return torch.nn.Linear(4, 2)\n")
    return p


def _evil(d):
    p = d / "evil.pt"
    with open(p, "wb") as fh:
        pickle.dump({"weight": Evil()}, fh)
    return p


def _other_inputs(d):
    m = tiny_cnn()
    m.graph.input[0].name = "image"
    m.graph.node[0].input[0] = "image"
    return _write_model(d, "other.onnx", m)


@pytest.mark.parametrize("case, argv, needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, case, argv, needle):
    if case.startswith(("weights-", "factory-", "shape-")):
        pytest.importorskip("torch")
    d = tmp_path
    model = _write_model(d, "model.onnx", tiny_cnn())
    calib = _data(d, "calib.npz", **make_data(16))
    args = argv(d, model, calib)
    inputs = {p: p.read_bytes() for p in d.iterdir() if p.is_file()}
    before = set(d.rglob("*"))
    res = CliRunner().invoke(main, args)
    err = res.stderr.strip()
    assert res.exit_code == 2, f"{case}: exit {res.exit_code}\n{res.output}"
    assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit)
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and needle in err, err
    assert len(err) < 400
    new = {p for p in set(d.rglob("*")) - before if p.suffix in (".onnx", ".json", ".data")}
    assert not new, f"partial output left behind: {new}"
    for p, data in inputs.items():
        assert p.read_bytes() == data, f"input {p.name} was modified"


def test_matrix_size():
    assert len(CASES) >= 25


def test_unhandled_op_is_skipped_with_reason_not_an_error(tmp_path):
    """An op a stage cannot handle: the stage goes on, the skip is recorded, exit 0."""
    m = tiny_cnn()
    m.graph.node.insert(2, helper.make_node("Mystery", ["r1"], ["r1m"], domain="com.example", name="mystery"))
    m.graph.node[3].input[0] = "r1m"
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    p = _write_model(tmp_path, "custom.onnx", m)
    res = CliRunner().invoke(main, ["simplify", str(p), "-o", str(tmp_path / "s.onnx"), "--json"])
    assert res.exit_code == 0, res.output
    s = onnx.load(str(tmp_path / "s.onnx"))
    assert "Mystery" in [n.op_type for n in s.graph.node]
