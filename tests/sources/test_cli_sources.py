"""Every command that takes data accepts image folders, text and WAV files; bad data is one line, exit 2."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import run_ort, tiny_cnn
from onnxcompress.cli import main

from .helpers import audio_model, text_model, word_tokenizer, write_wav


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def setup(tmp_path):
    """tiny_cnn (input [N,1,8,8]) and an ImageFolder of 8x8 grayscale PNGs in folders named by the model's argmax."""
    m = tiny_cnn()
    mp = tmp_path / "tiny.onnx"
    onnx.save_model(m, str(mp))
    rng = np.random.default_rng(0)
    px = rng.integers(0, 256, (24, 8, 8), dtype=np.uint8)
    pred = run_ort(m, {"input": (px[:, None] / 255.0).astype(np.float32)})[0].argmax(1)
    for i, (a, y) in enumerate(zip(px, pred)):
        (tmp_path / "imgs" / f"c{y}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(tmp_path / "imgs" / f"c{y}" / f"{i}.png")
    return mp, tmp_path / "imgs"


def test_quantize_validate_bench_take_an_image_folder(runner, tmp_path, setup):
    mp, imgs = setup
    q = tmp_path / "q.onnx"
    res = runner.invoke(main, ["quantize", str(mp), "-c", str(imgs), "-o", str(q), "--mode", "static", "--seed", "3"])
    assert res.exit_code == 0, res.output
    x = (np.random.default_rng(1).integers(0, 256, (4, 1, 8, 8)) / 255.0).astype(np.float32)
    assert run_ort(q, {"input": x})[0].shape == (4, 3)
    res = runner.invoke(main, ["validate", str(mp), str(q), "--data", str(imgs), "--json"])
    assert res.exit_code in (0, 1), res.output
    out = json.loads(res.stdout)
    assert out["samples"] == 24 and "images" in out["data"]
    res = runner.invoke(main, ["bench", str(mp), "-d", str(imgs), "--runs", "3", "--warmup", "1", "--no-memory", "--json"])
    assert res.exit_code == 0, res.output


@pytest.mark.slow  # ~10 s: prune's reconstruction and convert's benchmark stage
def test_prune_and_convert_take_an_image_folder(runner, tmp_path, setup):
    mp, imgs = setup
    res = runner.invoke(main, ["prune", str(mp), "-o", str(tmp_path / "p.onnx"), "--ratio", "0.25", "--align", "1",
                               "--min-channels", "1", "-c", str(imgs), "--json"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["convert", str(mp), "-o", str(tmp_path / "out"), "-c", str(imgs), "-v", str(imgs),
                               "--runs", "3", "--json"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "tiny.int8.onnx").is_file()


def test_bad_image_is_one_line_exit_2_and_skip_bad_reports(runner, tmp_path, setup):
    mp, imgs = setup
    (next(imgs.iterdir()) / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "q.onnx"
    res = runner.invoke(main, ["quantize", str(mp), "-c", str(imgs), "-o", str(out), "--mode", "static"])
    assert res.exit_code == 2 and not out.exists()
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "cannot decode image" in lines[0] and "broken.png" in lines[0] and "--skip-bad" in lines[0]
    res = runner.invoke(main, ["quantize", str(mp), "-c", str(imgs), "-o", str(out), "--mode", "static", "--skip-bad"])
    assert res.exit_code == 0, res.output
    assert "skipped 1 unreadable file(s)" in res.output and out.is_file()
    res = runner.invoke(main, ["quantize", str(mp), "-c", str(imgs), "-o", str(out), "--mean", "a,b"])
    assert res.exit_code == 2 and res.output.strip().count("\n") == 0 and "--mean" in res.output


def test_text_through_the_cli(runner, tmp_path):
    words = "the cat sat on a mat".split()
    tok = word_tokenizer(words, tmp_path / "tokenizer.json")
    mp = tmp_path / "enc.onnx"
    onnx.save_model(text_model(len(words) + 4), str(mp))
    (tmp_path / "s.txt").write_text("the cat sat\na mat\non the mat\ncat\n")
    res = runner.invoke(main, ["quantize", str(mp), "-c", str(tmp_path / "s.txt"), "--tokenizer", str(tok),
                               "-o", str(tmp_path / "q.onnx"), "--mode", "static"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["quantize", str(mp), "-c", str(tmp_path / "s.txt"), "-o", str(tmp_path / "q2.onnx")])
    assert res.exit_code == 2 and "--tokenizer" in res.output and not (tmp_path / "q2.onnx").exists()


def test_audio_through_the_cli(runner, tmp_path):
    am = tmp_path / "aud.onnx"
    onnx.save_model(audio_model(400), str(am))
    write_wav(tmp_path / "wav" / "a.wav", np.sin(np.arange(2000) / 10) * 0.5, 16000)
    res = runner.invoke(main, ["validate", str(am), str(am), "--data", str(tmp_path / "wav"), "--json"])
    assert res.exit_code in (0, 1), res.output
    assert json.loads(res.stdout)["samples"] == 5
    write_wav(tmp_path / "wav2" / "s.wav", np.zeros((800, 2)), 16000)
    res = runner.invoke(main, ["validate", str(am), str(am), "--data", str(tmp_path / "wav2")])
    assert res.exit_code == 2 and "2 channels" in res.output and "--mix-to-mono" in res.output


def test_data_config_file_sets_the_preprocessing(runner, tmp_path, setup):
    mp, imgs = setup
    cfg = tmp_path / "data.json"
    cfg.write_text(json.dumps({"seed": None, "image": {"mean": [0.5], "std": [0.25]}}))
    from onnxcompress.cli.dataopts import build_data_config

    d = build_data_config(data_config_file=str(cfg), std="0.5")  # a flag overrides the file
    assert d.seed is None and d.image.mean == (0.5,) and d.image.std == (0.5,)
    res = runner.invoke(main, ["validate", str(mp), str(mp), "--data", str(imgs), "--data-config", str(cfg), "--json"])
    assert res.exit_code in (0, 1), res.output
    cfg.write_text(json.dumps({"image": {"preset": "nope"}}))
    res = runner.invoke(main, ["validate", str(mp), str(mp), "--data", str(imgs), "--data-config", str(cfg)])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and "preset" in res.output
