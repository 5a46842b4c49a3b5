"""`inspect`: MACs from the data or --input-shape when spatial dims are dynamic, never a figure at 1 x 1."""
import json

import numpy as np
import onnx
from click.testing import CliRunner

from onnxcompress.cli import main
from test_stats import fpn, fpn_macs


def test_inspect_dynamic_spatial_dims(tmp_path):
    p = tmp_path / "fpn.onnx"
    onnx.save(fpn(), str(p))
    r = CliRunner()
    blind = r.invoke(main, ["inspect", str(p)])
    assert blind.exit_code == 0, blind.output
    assert "MACs not counted" in blind.stdout and "--input-shape images:1x3xHxW" in blind.stdout
    assert "MACs per sample" not in blind.stdout and "% of all MACs" not in blind.stdout
    shaped = r.invoke(main, ["inspect", str(p), "--input-shape", "images:1x3x64x96", "--json"])
    assert shaped.exit_code == 0, shaped.output
    st = json.loads(shaped.stdout)
    assert st["macs"] == fpn_macs(64, 96) and st["fusion"]["macs_total"] == fpn_macs(64, 96)
    np.savez(tmp_path / "d.npz", images=np.random.default_rng(0).standard_normal((3, 3, 32, 40)).astype(np.float32))
    seen = r.invoke(main, ["inspect", str(p), "--data", str(tmp_path / "d.npz")])
    assert seen.exit_code == 0, seen.output
    assert f"{fpn_macs(32, 40):,} MACs per sample (shapes from data)" in seen.stdout
    bad = r.invoke(main, ["inspect", str(p), "--input-shape", "images:1x3x64"])
    assert bad.exit_code == 2 and bad.stderr.count("\n") == 1 and "rank 4" in bad.stderr
