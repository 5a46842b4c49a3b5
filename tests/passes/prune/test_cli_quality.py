"""prune measures what it did to the model's task metric, against the input model, with the same gate
evaluator as validate: gated (exit 1) on -v, a warning on calibration data, never a bare success."""
from click.testing import CliRunner

from onnxcompress.cli import main


def _prune(tmp_path, model, *extra):
    out = tmp_path / "p.onnx"
    r = CliRunner().invoke(main, ["prune", str(model), "-o", str(out), "--ratio", "0.5", "--min-channels", "1",
                                  "--align", "1", *extra])
    return r, out


def test_validation_gates_the_pruned_model_and_a_failed_gate_exits_1(tmp_path, tiny_model_path, tiny_data_path):
    r, out = _prune(tmp_path, tiny_model_path, "-v", str(tiny_data_path), "--task", "classification")
    assert "quality on 64 validation samples (classification vs the input model): agreement" in r.output, r.output
    # half the channels of a 3-class toy net: its top-1 falls far beyond validate's default 1-point gate
    assert r.exit_code == 1 and "FAIL max_drop: top-1 drop" in r.output and out.exists(), r.output
    r, out = _prune(tmp_path, tiny_model_path, "--ratio", "0", "-v", str(tiny_data_path), "--gate", "agreement>=100.5")
    assert r.exit_code == 1 and "PASS max_drop" in r.output and "FAIL agreement:" in r.output and out.exists(), r.output
    assert "agreement: prediction agreement 100" in r.output.splitlines()[-1] and "written to" in r.output.splitlines()[-1]


def test_calibration_only_prints_the_damage_and_no_data_says_so(tmp_path, tiny_model_path, tiny_data_path):
    r, _ = _prune(tmp_path, tiny_model_path, "-c", str(tiny_data_path))
    assert r.exit_code == 0 and "quality on 64 calibration samples (classification vs the input model)" in r.output
    r, _ = _prune(tmp_path, tiny_model_path)
    assert r.exit_code == 0 and "warning: pruned quality not measured: no data" in r.output
    r, _ = _prune(tmp_path, tiny_model_path, "--gate", "agreement>=90")
    assert r.exit_code == 2 and "--gate needs validation data" in r.output
