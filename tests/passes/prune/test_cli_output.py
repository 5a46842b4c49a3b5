"""`prune` output: a compact summary counted by reason (--verbose: every node), progress on stderr, and MACs
measured on the calibration data when spatial dims are dynamic."""
import numpy as np
import onnx
from click.testing import CliRunner

from onnxcompress.cli import main
from onnxcompress.stats import count_macs, model_shapes
from test_stats import fpn, fpn_macs


def test_prune_summary_progress_and_measured_macs(tmp_path):
    m = fpn()
    p = tmp_path / "fpn.onnx"
    onnx.save(m, str(p))
    np.savez(tmp_path / "c.npz", images=np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(np.float32))
    r = CliRunner()
    args = ["prune", str(p), "--ratio", "0.4", "--align", "1", "--min-channels", "2"]
    res = r.invoke(main, args + ["-o", str(tmp_path / "a.onnx"), "-c", str(tmp_path / "c.npz")])
    assert res.exit_code == 0, res.output
    pruned = onnx.load(str(tmp_path / "a.onnx"))
    after = count_macs(pruned, model_shapes(pruned, input_shapes={"images": (1, 3, 32, 32)}))[0]
    assert f"MACs   {fpn_macs(32, 32):,} -> {after:,}" in res.stdout and after < fpn_macs(32, 32)
    assert "kept 4 groups:\n  4 a channel that reaches a graph output is kept (1 node: 1 graph output)" in res.stdout
    assert "kept graph output 'out'" not in res.stdout  # per-node lines only with --verbose
    for step in ("analysing channel groups", "scoring", "removing", "reconstruct: refit Conv 'head'"):
        assert f"prune: {step}" in res.stderr
    verbose = r.invoke(main, args + ["-o", str(tmp_path / "b.onnx"), "--verbose"])
    assert verbose.exit_code == 0, verbose.output
    assert "kept graph output 'out'" in verbose.stdout and "MACs   unknown (MACs depend on dynamic input dims" in verbose.stdout
    quiet = r.invoke(main, args + ["-o", str(tmp_path / "c.onnx"), "--input-shape", "images:1x3x32x32", "--json"])
    assert quiet.exit_code == 0 and quiet.stderr == ""  # --json: no progress lines
