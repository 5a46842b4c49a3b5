"""CLI exit codes and one-line errors of the torch commands (export, prune-distill)."""
import json
import pickle
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402
from conftest import run_ort  # noqa: E402
from train_nets import Res  # noqa: E402

from onnxcompress.cli import main  # noqa: E402

NETS = str(Path(__file__).with_name("train_nets.py"))
torch.set_num_threads(2)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.fixture
def files(tmp_path):
    torch.save(Res().state_dict(), tmp_path / "w.pt")
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"stem.0.weight": Evil()}, fh)
    np.savez(tmp_path / "d.npz", input=np.random.default_rng(2).standard_normal((48, 1, 6, 6)).astype(np.float32))
    return tmp_path


def _one_line_error(r, code=2):
    assert r.exit_code == code, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.output
    return lines[0]


@pytest.mark.parametrize("cmd", ["export", "prune-distill"])
@pytest.mark.parametrize("case, needle", [
    ("factory_no_colon", "has no ':'"),
    ("factory_missing_module", "cannot import module"),
    ("factory_missing_fn", "not a callable"),
    ("pickle_with_code", "weights_only"),
    ("bad_shape", "does not parse"),
    ("bad_dim", "dimension 'foo-3'"),
    ("bad_dtype", "unknown dtype"),
])
def test_bad_inputs_exit_2_with_one_line(files, cmd, case, needle):
    src, weights, spec = f"{NETS}:res", None, "input:Nx1x6x6"
    if case == "factory_no_colon":
        src = "train_nets_build"
    elif case == "factory_missing_module":
        src = "no_such_pkg_xyz.models:build"
    elif case == "factory_missing_fn":
        src = f"{NETS}:nothing"
    elif case == "pickle_with_code":
        weights = str(files / "evil.pt")
    elif case == "bad_shape":
        spec = "input"
    elif case == "bad_dim":
        spec = "input:1xfoo-3"
    elif case == "bad_dtype":
        spec = "input:1x1x6x6:complex64"
    args = [cmd, src, "--input", spec, "-o", str(files / "o.onnx")] + (["--weights", weights] if weights else [])
    if cmd == "prune-distill":
        args += ["--data", str(files / "d.npz")]
    r = CliRunner().invoke(main, args)
    assert needle in _one_line_error(r)
    assert "pwned" not in r.output and not (files / "o.onnx").exists()


def test_export_cli_checks_on_provided_data_and_reports_errors(files):
    r = CliRunner().invoke(main, ["export", f"{NETS}:res", "--weights", str(files / "w.pt"), "--input", "input:Nx1x6x6",
                                  "--check-data", str(files / "d.npz"), "--check-samples", "16", "--exporter",
                                  "torchscript", "-o", str(files / "m.onnx"), "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)["stats"]
    assert s["checked_provided"] == 2 and s["max_abs_error"] < 1e-4 and "max_rel_error" in s
    x = np.load(files / "d.npz")["input"][:5]
    with torch.no_grad():
        ref = Res().eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_ort(files / "m.onnx", {"input": x})[0], ref, rtol=1e-4, atol=1e-5)


def test_prune_distill_cli_end_to_end(files):
    r = CliRunner().invoke(main, ["prune-distill", f"{NETS}:res", "--input", "input:Nx1x6x6", "--data",
                                  str(files / "d.npz"), "--epochs", "1", "--batch-size", "16", "--align", "4",
                                  "--min-channels", "4", "--exporter", "torchscript", "-o", str(files / "o.onnx"),
                                  "--checkpoint-dir", str(files / "ck")])
    assert r.exit_code == 0, r.output
    assert "pruned without fine-tuning" in r.stdout and "pruned + distilled" in r.stdout
    m = onnx.load(str(files / "o.onnx"))
    assert max(i.dims[0] for i in m.graph.initializer if len(i.dims) == 4) < 16  # channels removed
    assert run_ort(files / "o.onnx", {"input": np.zeros((2, 1, 6, 6), np.float32)})[0].shape == (2, 4)
    assert (files / "ck" / "best.pt").exists()
    r = CliRunner().invoke(main, ["prune-distill", f"{NETS}:res", "--input", "input:Nx1x6x6", "--data",
                                  str(files / "d.npz"), "--ratio", "1.5", "-o", str(files / "p.onnx")])
    assert "ratio 1.5 is out of range" in _one_line_error(r)
