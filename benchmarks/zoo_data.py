"""Realistic inputs for the zoo models, built locally, with each model's own preprocessing.

Photos are scikit-image's bundled samples; text is rendered with Pillow (DejaVu fonts); speech is synthesized with
espeak-ng; magika reads real files on this machine; MiniLM gets real WordPiece ids from the model's own vocabulary.
Calibration and validation come from disjoint sources (other photos, other words, other phrases/voices, other files).
Arrays are in the model's own layout: samples on the batch axis (axis 1 for `state`), `const` inputs as given to ORT.
"""
from __future__ import annotations

import glob
import shutil
import subprocess
import tempfile
import wave
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
FONTS = sorted(glob.glob("/usr/share/fonts/truetype/dejavu/DejaVu*.ttf"))
WORDS = ("invoice total amount date payment river mountain station window coffee garden number street market "
         "compress quantize model layer channel tensor python export detector recognizer classifier summary "
         "October Monday Berlin Paris London Tokyo report chapter figure table page section price order "
         "delivery customer account balance weather morning evening school library hospital airport").split()
SPLIT_WORDS = {"calib": WORDS[0::2], "val": WORDS[1::2]}
PHRASES = {
    "calib": ["hey my croft what time is it", "turn on the kitchen lights", "the quick brown fox jumps over the lazy dog",
              "please call my sister tomorrow", "hey my croft play some music", "set a timer for ten minutes",
              "it is going to rain this afternoon", "hey my croft"],
    "val": ["hey my croft how is the weather", "open the garage door", "she sells sea shells by the sea shore",
            "remind me to buy milk", "hey my croft stop", "what is the capital of france",
            "the train leaves at seven", "hey my croft tell me a joke"],
}
VOICES = {"calib": ["en-us", "en"], "val": ["en-gb-x-rp", "en-us+f3"]}
SENTENCES = {
    "calib": ["A man is eating food.", "A man is riding a horse.", "The new movie is awesome.", "The cat sits outside.",
              "A woman is playing violin.", "Two men pushed carts through the woods.", "The weather is lovely today.",
              "He drove to the stadium.", "How do I bake bread at home?", "Quantization makes models smaller.",
              "The stock market fell sharply.", "Children are playing in the park.", "She reads a book on the train.",
              "The server returned an error.", "Coffee helps me wake up.", "A monkey is playing drums."],
    "val": ["Someone is eating a meal.", "A person rides an animal.", "The new film is great.", "A dog runs in the yard.",
            "A girl plays the guitar.", "People walk through a forest.", "It is sunny and warm outside.",
            "He went to the football game.", "What is a good bread recipe?", "Smaller models run faster.",
            "Share prices dropped today.", "Kids play on the swings.", "A man reads the newspaper.",
            "The website is down.", "Tea is my morning drink.", "An ape bangs on a drum."],
}


def _rng(split: str, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng((0 if split == "calib" else 1) * 1000 + salt)


@lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    import skimage.data as d

    out = []
    for n in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
              "colorwheel", "camera", "coins", "horse", "clock", "moon", "brick", "grass", "cell"):
        a = getattr(d, n)()
        out.append(np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3])
    out.append(d.stereo_motorcycle()[0])
    return tuple(np.ascontiguousarray(a.astype(np.uint8)) for a in out)


def photos(split: str) -> list[np.ndarray]:
    p = _photos()
    return list(p[0::2] if split == "calib" else p[1::2])


def _font(rng, lo: int, hi: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(FONTS[rng.integers(len(FONTS))], int(rng.integers(lo, hi)))


def _crop(img: np.ndarray, rng, h: int, w: int) -> Image.Image:
    H, W = img.shape[:2]
    s = rng.uniform(0.4, 1.0)
    ch, cw = max(8, int(H * s)), max(8, int(W * s))
    y, x = rng.integers(0, H - ch + 1), rng.integers(0, W - cw + 1)
    return Image.fromarray(img[y:y + ch, x:x + cw]).resize((w, h), Image.BILINEAR)


def _background(split, rng, h, w) -> Image.Image:
    if rng.random() < 0.5:
        base = rng.integers(215, 256)
        arr = np.clip(base + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr)
    ph = photos(split)
    bg = np.asarray(_crop(ph[rng.integers(len(ph))], rng, h, w)).astype(np.float32)
    return Image.fromarray((bg * 0.35 + 165).astype(np.uint8))  # washed out, text stays readable


def _text(split, rng, k_lo=1, k_hi=4) -> str:
    words = SPLIT_WORDS[split]
    s = " ".join(words[i] for i in rng.integers(0, len(words), rng.integers(k_lo, k_hi + 1)))
    return s + (f" {rng.integers(1, 9999)}" if rng.random() < 0.3 else "")


def text_line(split, rng, height=48) -> Image.Image:
    font = _font(rng, 28, 44)
    s = _text(split, rng)
    x0, y0, x1, y1 = font.getbbox(s)
    pad = int(rng.integers(4, 12))
    img = _background(split, rng, y1 - y0 + 2 * pad, x1 - x0 + 2 * pad)
    ImageDraw.Draw(img).text((pad - x0, pad - y0), s, font=font, fill=tuple(int(c) for c in rng.integers(0, 90, 3)))
    return img


def page(split, rng, h, w, figure=False) -> Image.Image:
    img = _background(split, rng, h, w)
    dr = ImageDraw.Draw(img)
    y = int(rng.integers(8, 40))
    if figure and rng.random() < 0.7:
        ph = photos(split)
        fh, fw = int(h * rng.uniform(0.2, 0.35)), int(w * rng.uniform(0.4, 0.8))
        img.paste(_crop(ph[rng.integers(len(ph))], rng, fh, fw), (int(rng.integers(10, max(11, w - fw - 10))), h // 2))
    while y < h - 30:
        font = _font(rng, 14, 40)
        s = _text(split, rng, 2, 7)
        x = int(rng.integers(5, max(6, w // 4)))
        if not (figure and h // 2 - 40 < y < h // 2 + h * 0.35):
            dr.text((x, y), s, font=font, fill=tuple(int(c) for c in rng.integers(0, 80, 3)))
        y += int(font.size * rng.uniform(1.3, 2.5))
    return img


def _norm(img: Image.Image, mean, std, bgr=True) -> np.ndarray:
    a = np.asarray(img.convert("RGB"), np.float32) / 255.0
    a = (a[..., ::-1] if bgr else a)
    return ((a - mean) / std).transpose(2, 0, 1).astype(np.float32)


def _rec_tensor(img: Image.Image, h: int, w: int) -> np.ndarray:
    rw = min(w, int(np.ceil(h * img.width / img.height)))
    a = _norm(img.resize((rw, h), Image.BILINEAR), 0.5, 0.5)
    out = np.zeros((3, h, w), np.float32)
    out[:, :, :rw] = a
    return out


def _letterbox(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    r = size / max(h, w)
    nh, nw = max(1, int(h * r)), max(1, int(w * r))
    out = np.full((size, size, 3), 114, np.uint8)
    out[:nh, :nw] = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
    return out


def _photo_views(split, rng, n) -> list[np.ndarray]:
    ph, out = photos(split), []
    for i in range(n):
        a = ph[i % len(ph)]
        if i >= len(ph):
            a = np.asarray(_crop(a, rng, *(int(v * rng.uniform(0.5, 1)) for v in a.shape[:2])))
            a = a[:, ::-1] if rng.random() < 0.5 else a
        out.append(np.ascontiguousarray(a))
    return out


def _captcha(split, rng, h, w, charset, gray=False) -> Image.Image:
    s = "".join(charset[i] for i in rng.integers(0, len(charset), rng.integers(4, 7)))
    img = Image.fromarray(rng.integers(170, 256, (h, w, 3), dtype=np.uint8)).filter(ImageFilter.GaussianBlur(2))
    dr = ImageDraw.Draw(img)
    x = int(rng.integers(2, 12))
    for ch in s:
        f = ImageFont.truetype(FONTS[rng.integers(len(FONTS))], int(h * rng.uniform(0.55, 0.8)))
        dr.text((x, int(rng.integers(0, max(1, h // 6)))), ch, font=f, fill=tuple(int(c) for c in rng.integers(0, 110, 3)))
        x += int(f.getlength(ch) * rng.uniform(0.85, 1.05))
        if x > w - h // 3:
            break
    for _ in range(int(rng.integers(1, 4))):
        dr.line([tuple(int(v) for v in rng.integers(0, (w, h))) for _ in range(2)], fill=tuple(int(c) for c in rng.integers(0, 160, 3)), width=1)
    return img.convert("L") if gray else img


# --- builders: (model, split, n, ctx) -> {input_name: array} ---------------------------------------------------

def b_ppocr_det(m, split, n, ctx):
    rng = _rng(split, 1)
    return {"x": np.stack([_norm(page(split, rng, 480, 640), IMAGENET_MEAN, IMAGENET_STD) for _ in range(n)])}


def b_ppocr_rec(m, split, n, ctx):
    rng = _rng(split, 2)
    return {"x": np.stack([_rec_tensor(text_line(split, rng), 48, 320) for _ in range(n)])}


def b_ppocr_cls(m, split, n, ctx):
    rng = _rng(split, 3)
    out = []
    for i in range(n):
        t = text_line(split, rng)
        out.append(_rec_tensor(t.rotate(180) if i % 2 else t, 48, 192))
    return {"x": np.stack(out)}


def b_orientation(m, split, n, ctx):
    rng = _rng(split, 4)
    out = []
    for i in range(n):
        p = page(split, rng, 256, 256).rotate(90 * (i % 4))
        out.append(_norm(p.crop((16, 16, 240, 240)), IMAGENET_MEAN, IMAGENET_STD))
    return {"x": np.stack(out)}


def b_layout(m, split, n, ctx):
    rng = _rng(split, 5)
    return {"image": np.stack([_norm(page(split, rng, 800, 608, figure=True), IMAGENET_MEAN, IMAGENET_STD, bgr=False)
                               for _ in range(n)])}


def b_yolo320(m, split, n, ctx):
    rng = _rng(split, 6)
    return {"images": np.stack([_letterbox(a, 320).transpose(2, 0, 1).astype(np.float32) / 255.0 for a in _photo_views(split, rng, n)])}


def b_yolox416(m, split, n, ctx):
    rng = _rng(split, 7)
    out = []
    for a in _photo_views(split, rng, n):
        img = Image.fromarray(a)
        dr = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(3, 7))):  # click-captcha style: big glyphs on a photo
            f = ImageFont.truetype(FONTS[rng.integers(len(FONTS))], int(min(img.size) * rng.uniform(0.08, 0.18)))
            ch = "ABCDEFGHKMNPRSTUVWXYZ23456789"[rng.integers(29)]
            dr.text((int(rng.integers(0, img.width * 0.85)), int(rng.integers(0, img.height * 0.85))), ch, font=f,
                    fill=tuple(int(c) for c in rng.integers(0, 256, 3)), stroke_width=2, stroke_fill=(0, 0, 0))
        out.append(_letterbox(np.asarray(img)[..., ::-1], 416).transpose(2, 0, 1).astype(np.float32))
    return {"images": np.stack(out)}


def b_dddd_ocr(m, split, n, ctx):
    rng = _rng(split, 8)
    cs = "abcdefghjkmnpqrstuvwxyz23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
    return {"input1": np.stack([np.asarray(_captcha(split, rng, 64, 160, cs, gray=True), np.float32)[None] / 255.0 for _ in range(n)])}


def b_captcha(m, split, n, ctx):
    rng = _rng(split, 9)
    cs = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return {"image": np.stack([np.asarray(_captcha(split, rng, 60, 160, cs), np.float32)[..., ::-1].transpose(2, 0, 1) for _ in range(n)])}


def _magika_features(data: bytes) -> np.ndarray:
    beg = data[:4096].lstrip()[:1024]
    end = data[-4096:].rstrip()[-1024:]
    a = np.full(2048, 256, np.int32)
    a[:len(beg)] = np.frombuffer(beg, np.uint8)
    if end:
        a[2048 - len(end):] = np.frombuffer(end, np.uint8)
    return a


def b_magika(m, split, n, ctx):
    pats = ["/usr/lib/python3*/*.py", "/usr/lib/python3*/json/*.py", "/usr/share/doc/*/copyright", "/etc/*.conf",
            "/usr/bin/*", "/usr/share/fonts/truetype/dejavu/*.ttf", "/usr/share/doc/*/changelog*.gz",
            str(Path(np.__file__).parent / "**/*.pyi"), "/usr/share/X11/locale/*/Compose", "/usr/share/zoneinfo/Europe/*",
            str(Path(np.__file__).parents[1] / "skimage/data/*.*"), "/usr/share/mime/packages/*.xml", "/etc/ssl/certs/*.pem",
            str(Path(np.__file__).parents[1] / "*/*.json"), str(Path(np.__file__).parents[1] / "*/*.html"),
            str(Path(np.__file__).parents[1] / "*/*.so*"), "/usr/include/*.h", "/usr/share/perl/*/*.pm"]
    files = []
    for p in pats:
        hits = sorted(f for f in glob.glob(p, recursive=True) if Path(f).is_file() and Path(f).stat().st_size > 64)
        files.append(hits)
    rng = _rng(split, 10)
    out = []
    while len(out) < n and any(files):
        for hits in files:
            if not hits or len(out) >= n:
                continue
            half = hits[0::2] if split == "calib" else hits[1::2]
            if half:
                out.append(_magika_features(Path(half[rng.integers(len(half))]).read_bytes()))
    return {"bytes": np.stack(out)}


def espeak_missing() -> bool:
    return shutil.which("espeak-ng") is None


@lru_cache(maxsize=64)
def speech(phrase: str, voice: str, speed: int) -> np.ndarray:
    """16 kHz float32 speech in [-1, 1] from espeak-ng."""
    if espeak_missing():
        raise RuntimeError("espeak-ng is missing: apt-get install -y espeak-ng")
    with tempfile.TemporaryDirectory() as td:
        wav = Path(td) / "s.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(wav), phrase], check=True, capture_output=True)
        with wave.open(str(wav)) as w:
            sr, x = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
    from scipy.signal import resample_poly

    g = np.gcd(16000, sr)
    return resample_poly(x, 16000 // g, sr // g).astype(np.float32)


def stream(split: str, seconds: float = 0.0) -> np.ndarray:
    """Phrases with pauses and a little room noise, 16 kHz."""
    rng = _rng(split, 11)
    parts = []
    for i, ph in enumerate(PHRASES[split]):
        parts.append(np.zeros(int(16000 * rng.uniform(0.2, 0.8)), np.float32))
        parts.append(np.clip(speech(ph, VOICES[split][i % 2], int(rng.integers(130, 180))) * rng.uniform(1.0, 3.0), -1, 1))
    x = np.concatenate(parts)
    return (x + rng.normal(0, 0.003, x.shape)).astype(np.float32)


def _ort(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.log_severity_level = 1, 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def b_silero(m, split, n, ctx):
    """(64 context + 512) chunks at 16 kHz with the LSTM state the FP32 model had there, sr a constant."""
    x = stream(split)
    sess = _ort(ctx["model_path"])
    state = np.zeros((2, 1, 128), np.float32)
    chunks, states, ctxt = [], [], np.zeros(64, np.float32)
    for s in range(0, len(x) - 512, 512):
        inp = np.concatenate([ctxt, x[s:s + 512]])[None]
        chunks.append(inp[0])
        states.append(state[:, 0])
        _, state = sess.run(None, {"input": inp, "state": state, "sr": np.array(16000, np.int64)})
        ctxt = x[s + 448:s + 512]
    idx = np.linspace(0, len(chunks) - 1, n).astype(int)
    return {"input": np.stack([chunks[i] for i in idx]), "state": np.stack([states[i] for i in idx], 1),
            "sr": np.array(16000, np.int64)}


def b_silero_seq(m, split, n, ctx):
    x = stream(split)
    start = 0 if split == "calib" else 16000  # n consecutive chunks: the model reads them as one sequence
    ch = [np.concatenate([x[max(0, s - 64):s] if s else np.zeros(64, np.float32), x[s:s + 512]])
          for s in range(start, start + 512 * n, 512)]
    z = np.zeros((1, 1, 128), np.float32)
    return {"input": np.stack(ch).astype(np.float32), "h": z, "c": z.copy()}


def _clips(split, n, seconds):
    x, rng, L = stream(split) * 32767, _rng(split, 12), int(16000 * seconds)
    return np.stack([x[s:s + L] for s in rng.integers(0, len(x) - L, n)]).astype(np.float32)


def _mel(ctx, clips):
    sess = _ort(ctx["dep"]("oww_melspec"))
    return [sess.run(None, {"input": c[None]})[0][0, 0] / 10 + 2 for c in clips]  # openwakeword's transform


def b_oww_audio(m, split, n, ctx):
    return {"input": _clips(split, n, 1.0)}


def b_oww_mel(m, split, n, ctx):
    rng = _rng(split, 13)
    wins = []
    for mel in _mel(ctx, _clips(split, n, 1.2)):
        s = int(rng.integers(0, mel.shape[0] - 76 + 1))
        wins.append(mel[s:s + 76, :, None])
    return {"input_1": np.stack(wins).astype(np.float32)}


def b_oww_emb(m, split, n, ctx):
    """16-embedding windows (openwakeword's input) sliding over spoken phrases; some hold the wake word."""
    emb = _ort(ctx["dep"]("oww_embedding"))
    seqs = []
    for i, p in enumerate(PHRASES[split]):
        c = np.concatenate([np.zeros(8000, np.float32), speech(p, VOICES[split][i % 2], 120) * 20000, np.zeros(8000, np.float32)])
        mel = _mel(ctx, c[None])[0]
        seqs.append(np.stack([emb.run(None, {"input_1": mel[s:s + 76, :, None][None].astype(np.float32)})[0].reshape(96)
                              for s in range(0, mel.shape[0] - 75, 8)]))
    out = []
    for i in range(n):
        e = seqs[i % len(seqs)]
        end = min(len(e), 16 + 2 * (i // len(seqs)))
        out.append(e[end - 16:end])
    return {"input_1": np.stack(out).astype(np.float32)}


def _wordpiece(text: str, vocab: dict) -> list[int]:
    import re

    ids = [101]
    for w in re.findall(r"\w+|[^\w\s]", text.lower()):
        start = 0
        while start < len(w):
            end, cur = len(w), None
            while end > start:
                piece = ("##" if start else "") + w[start:end]
                if piece in vocab:
                    cur = vocab[piece]
                    break
                end -= 1
            if cur is None:
                ids.append(vocab["[UNK]"])
                break
            ids.append(cur)
            start = end
    return ids + [102]


def b_tokens(m, split, n, ctx):
    vocab = {t: i for i, t in enumerate(Path(ctx["vocab"]()).read_text().splitlines())}
    sents = SENTENCES[split]
    L = 32
    ids = np.zeros((n, L), np.int64)
    mask = np.zeros((n, L), np.int64)
    for i in range(n):
        t = _wordpiece(sents[i % len(sents)] + ("" if i < len(sents) else " " + sents[(i * 7 + 3) % len(sents)]), vocab)[:L]
        ids[i, :len(t)], mask[i, :len(t)] = t, 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


BUILDERS = {
    "ppocr_det": b_ppocr_det, "ppocr_rec": b_ppocr_rec, "ppocr_cls": b_ppocr_cls, "orientation": b_orientation,
    "layout": b_layout, "yolo320": b_yolo320, "yolox416": b_yolox416, "dddd_ocr": b_dddd_ocr, "captcha": b_captcha,
    "magika": b_magika, "silero": b_silero, "silero_seq": b_silero_seq, "oww_audio": b_oww_audio, "oww_mel": b_oww_mel,
    "oww_emb": b_oww_emb, "tokens": b_tokens,
}
SPEECH = {"silero", "silero_seq", "oww_audio", "oww_mel", "oww_emb"}
