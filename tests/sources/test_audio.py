"""Audio: PCM16 and float WAVs, resampling (checked against the analytic signal), windows, channels, bad files."""
from __future__ import annotations

import numpy as np
import pytest

from onnxcompress.config import AudioConfig, DataConfig
from onnxcompress.data import feeds, input_specs, load_data
from onnxcompress.errors import InputError
from onnxcompress.sources import open_source
from onnxcompress.sources.audio import resample

from conftest import run_ort
from .helpers import audio_model, write_wav


def sine(f, rate, seconds, amp=0.5):
    return amp * np.sin(2 * np.pi * f * np.arange(int(rate * seconds)) / rate)


@pytest.mark.parametrize("fmt", ["pcm16", "float"])
def test_wav_windows_without_resampling(tmp_path, fmt):
    x = np.random.default_rng(0).uniform(-0.9, 0.9, 1000)
    write_wav(tmp_path / "a.wav", x, 16000, fmt)
    m = audio_model(400)
    ds = load_data(tmp_path / "a.wav", input_specs(m), DataConfig(seed=None), m)
    assert len(ds) == 2  # 1000 samples -> two windows of 400, the partial one dropped
    b = next(ds.batches(4))["x"]
    ref = np.rint(x * 32767) / 32768 if fmt == "pcm16" else x  # PCM16 is read as int / 32768
    np.testing.assert_allclose(b, ref[:800].reshape(2, 400), atol=1e-7)
    out = run_ort(m, dict(next(feeds(ds, 4))))
    np.testing.assert_allclose(out[0], b.mean(axis=1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method,tol", [("sinc", 2e-3), ("linear", 5e-2)])
def test_resampling_matches_the_analytic_signal(method, tol):
    y = resample(sine(440, 44100, 0.25), 44100, 16000, method)
    ref = sine(440, 16000, 0.25)
    assert len(y) == len(ref)
    inner = slice(100, -100)  # away from the edges (zero-padded beyond the signal)
    assert np.abs(y[inner] - ref[inner]).max() < tol


def test_sinc_resampling_removes_what_the_new_rate_cannot_hold():
    y = resample(sine(7000, 16000, 0.5), 16000, 8000, "sinc")  # 7 kHz is above the 4 kHz Nyquist of 8 kHz
    assert np.abs(y[200:-200]).max() < 0.01
    z = resample(sine(7000, 16000, 0.5), 16000, 8000, "linear")  # linear aliases it
    assert np.abs(z[200:-200]).max() > 0.1


def test_folder_labels_short_files_and_resampling(tmp_path):
    write_wav(tmp_path / "yes" / "a.wav", sine(300, 8000, 0.1), 8000)  # 800 samples at 8k -> 1600 at 16k
    write_wav(tmp_path / "no" / "b.wav", sine(300, 16000, 0.01), 16000)  # 160 samples: one zero-padded window
    m = audio_model(400)
    ds = open_source(tmp_path, input_specs(m), DataConfig(seed=None), m)
    assert len(ds) == 5 and ds.labels.tolist() == [0, 1, 1, 1, 1]  # folders sorted: no, yes
    b = next(ds.batches(5))["x"]
    assert (b[0, 160:] == 0).all() and np.abs(b[0, :160]).max() > 0.4


def test_channels_rank3_and_mix_to_mono(tmp_path):
    st = np.stack([sine(300, 16000, 0.05), -sine(300, 16000, 0.05) * 0.5], axis=1)
    write_wav(tmp_path / "s.wav", st, 16000, "float")
    m = audio_model(400, rank=3)
    with pytest.raises(InputError, match=r"WAV .*s.wav has 2 channels but model input 'x' .* takes 1.*--mix-to-mono"):
        load_data(tmp_path / "s.wav", input_specs(m), DataConfig(), m)
    ds = load_data(tmp_path / "s.wav", input_specs(m), DataConfig(seed=None, audio=AudioConfig(mix_to_mono=True)), m)
    b = next(ds.batches(2))["x"]
    assert b.shape == (2, 1, 400)
    np.testing.assert_allclose(b[0, 0], st[:400].mean(axis=1), atol=1e-7)


def test_bad_wavs(tmp_path):
    m = audio_model(400)
    write_wav(tmp_path / "ok.wav", sine(300, 16000, 0.05), 16000)
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    write_wav(tmp_path / "cut" / "t.wav", sine(300, 16000, 0.05), 16000)
    (tmp_path / "cut" / "t.wav").write_bytes((tmp_path / "cut" / "t.wav").read_bytes()[:-100])
    with pytest.raises(InputError, match=r"cannot read WAV .*t.wav \(truncated"):
        load_data(tmp_path / "cut" / "t.wav", input_specs(m))
    with pytest.raises(InputError, match=r"cannot read WAV .*broken.wav.*--skip-bad"):
        load_data(tmp_path, input_specs(m))
    ds = load_data(tmp_path, input_specs(m), DataConfig(skip_bad=True), m)
    assert len(ds) == 2 and len(ds.skipped) == 1
    dyn = audio_model("T")
    with pytest.raises(InputError, match="dynamic length .*audio.window"):
        load_data(tmp_path / "ok.wav", input_specs(dyn))
    assert len(load_data(tmp_path / "ok.wav", input_specs(dyn), DataConfig(audio=AudioConfig(window=200)), dyn)) == 4


@pytest.mark.parametrize("method", ["sinc", "linear"])
def test_windows_read_alone_equal_the_whole_file_resampled(tmp_path, method):
    x = np.random.default_rng(1).uniform(-0.5, 0.5, (5000, 2))
    write_wav(tmp_path / "a.wav", x, 44100, "float")
    m = audio_model(300)
    cfg = DataConfig(seed=3, audio=AudioConfig(resample=method, mix_to_mono=True, hop=170))
    ds = load_data(tmp_path / "a.wav", input_specs(m), cfg, m)
    full = resample(x.astype(np.float32).mean(axis=1), 44100, 16000, method)  # 1815 samples
    assert len(ds) == 1 + (len(full) - 300) // 170
    got = np.concatenate([b["x"] for b in ds.batches(4)])
    ref = np.stack([full[w * 170:w * 170 + 300] for w in ds.order])
    np.testing.assert_allclose(got, ref, atol=1e-6)
