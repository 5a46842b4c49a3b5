import json

import numpy as np
import onnx
from click.testing import CliRunner

from test_fallback import ds, outlier_mlp
from onnxcompress.cli import main
from onnxcompress.config import QuantConfig
from onnxcompress.quant.search import decide, quantize_model


def _files(tmp_path):
    m = tmp_path / "mlp.onnx"
    onnx.save_model(outlier_mlp(), str(m))
    np.savez(tmp_path / "cal.npz", x=ds(256, 0).chunks[0]["x"])
    np.savez(tmp_path / "val.npz", x=ds(300, 1).chunks[0]["x"])
    return m, tmp_path / "cal.npz", tmp_path / "val.npz"


def test_cli_max_drop_gate_and_record(tmp_path):
    m, cal, val = _files(tmp_path)
    before = m.read_bytes()
    r = CliRunner().invoke(main, ["quantize", str(m), "-o", str(tmp_path / "q.onnx"), "-c", str(cal), "-v", str(val),
                                  "--per-tensor", "--no-equalize", "--max-drop", "3", "--metric", "agreement", "--json",
                                  "--speed-check", "0"])
    assert r.exit_code == 0, r.output
    fb = json.loads(r.stdout)["stats"]["fallback"]
    assert fb["fits"] and "fc2" in fb["excluded"] and (tmp_path / "q.onnx").exists()
    assert m.read_bytes() == before
    # an impossible budget: exit 1, the best model found is still written
    r = CliRunner().invoke(main, ["quantize", str(m), "-o", str(tmp_path / "q2.onnx"), "-c", str(cal), "-v", str(val),
                                  "--per-tensor", "--no-equalize", "--max-drop", "0", "--metric", "cosine", "--fallback-layers", "1",
                                  "--speed-check", "0"])
    assert r.exit_code == 1 and "accuracy gate failed" in r.stderr and (tmp_path / "q2.onnx").exists()


def test_cli_bad_max_drop(tmp_path):
    m, cal, val = _files(tmp_path)
    for args, msg in ((["--max-drop", "abc", "-v", str(val)], "--max-drop 'abc' is not a number"),
                      (["--max-drop", "1"], "needs validation data")):
        r = CliRunner().invoke(main, ["quantize", str(m), "-o", str(tmp_path / "q.onnx"), "-c", str(cal), *args])
        assert r.exit_code == 2 and msg in r.stderr and "Traceback" not in r.output
        assert not (tmp_path / "q.onnx").exists()


def test_auto_mode_measures_both_and_says_why():
    q, rec = quantize_model(outlier_mlp(), ds(256, 0), ds(300, 1),
                            QuantConfig(mode="auto", per_channel=False, equalize=False, max_drop=1.0, metric="agreement",
                                        speed_check_seconds=0))
    auto = rec.stats["auto"]
    modes = {c["mode"]: c for c in auto["candidates"]}
    assert set(modes) == {"static", "dynamic"} and auto["chosen"] in modes
    # the choice is decide()'s on the measured rows, whichever way this machine's timings fell (test_speed tests
    # decide() itself on fixed rows); static per-tensor int8 of this MLP is within the 1-point budget, dynamic is not
    assert modes["static"]["within_budget"] and not modes["dynamic"]["within_budget"]
    assert decide([dict(c) for c in auto["candidates"]], auto["budget"], auto["metric"])[0]["mode"] == auto["chosen"]
    assert auto["chosen"] in auto["why"] and rec.stats["mode"] == auto["chosen"]
    ops = {n.op_type for n in q.graph.node}
    assert ("DynamicQuantizeLinear" in ops) == (auto["chosen"] == "dynamic")


def test_auto_without_validation_is_static_with_reason():
    q, rec = quantize_model(outlier_mlp(), ds(64, 0), None, QuantConfig(mode="auto"))
    assert rec.stats["mode"] == "static" and "no validation data" in rec.stats["auto"]["why"]
