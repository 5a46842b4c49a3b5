"""Audio: WAV files (PCM 8/16/24/32-bit or IEEE float 32/64), resampled to a rate and cut into windows of the
model's input length.

Our own RIFF reader because the stdlib `wave` module rejects float WAVs (format 3). Only headers are read up
front (to count windows); each window reads just the frames it (and the resampling kernel) needs, so a long
recording is never loaded whole. Resampling (stated method): "sinc" is band-limited
interpolation with a Kaiser-windowed sinc (16 zero crossings, beta 8.6, cutoff 0.95 x the lower Nyquist), done
directly with numpy per output block (no scipy dependency); "linear" is np.interp (aliases when downsampling).
A file shorter than a window gives one zero-padded window; a trailing partial window is dropped.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class WavInfo:
    path: Path
    fmt: int  # 1 PCM, 3 float
    channels: int
    rate: int
    bits: int
    offset: int
    frames: int


def read_header(path: Path) -> WavInfo:
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                raise ValueError("not a RIFF/WAVE file")
            fmt = None
            while True:
                ch = f.read(8)
                if len(ch) < 8:
                    raise ValueError("no data chunk")
                cid, size = ch[:4], struct.unpack("<I", ch[4:])[0]
                if cid == b"fmt ":
                    body = f.read(size)
                    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
                    if tag == 0xFFFE and len(body) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the real tag starts the subformat GUID
                        tag = struct.unpack("<H", body[24:26])[0]
                    fmt = (tag, channels, rate, bits)
                elif cid == b"data":
                    if fmt is None:
                        raise ValueError("data chunk before fmt chunk")
                    tag, channels, rate, bits = fmt
                    if tag not in (1, 3) or (tag == 1 and bits not in (8, 16, 24, 32)) or (tag == 3 and bits not in (32, 64)):
                        raise ValueError(f"unsupported encoding (format {tag}, {bits} bits); use 16-bit PCM or float")
                    if channels < 1 or rate < 1:
                        raise ValueError("zero channels or sample rate")
                    held = os.path.getsize(path) - f.tell()
                    if size in (0, 0xFFFFFFFF):  # a streamed WAV whose writer never filled in the length
                        size = held
                    elif size > held:
                        raise ValueError(f"truncated: the header gives {size} data bytes, the file holds {held}")
                    return WavInfo(path, tag, channels, rate, bits, f.tell(), size // (channels * bits // 8))
                else:
                    f.seek(size + (size & 1), 1)
    except (OSError, ValueError, struct.error) as exc:
        raise InputError(f"cannot read WAV {path} ({exc}); replace or delete the file, or pass --skip-bad to leave "
                         f"unreadable files out") from None


def read_samples(info: WavInfo, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
    """Frames [start, stop) as (frames, channels) float32 in [-1, 1] (PCM: int / 2^(bits-1)); only those are read."""
    width = info.bits // 8
    stop = info.frames if stop is None else min(stop, info.frames)
    start = max(0, min(start, stop))
    with open(info.path, "rb") as f:
        f.seek(info.offset + start * info.channels * width)
        raw = f.read((stop - start) * info.channels * width)
    n = len(raw) // (width * info.channels) * info.channels
    if info.fmt == 3:
        x = np.frombuffer(raw, "<f4" if width == 4 else "<f8", count=n).astype(np.float32)
    elif width == 1:
        x = (np.frombuffer(raw, np.uint8, count=n).astype(np.float32) - 128.0) / 128.0
    elif width == 3:
        b = np.frombuffer(raw, np.uint8, count=n * 3).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 1 << 23, v - (1 << 24), v) / float(1 << 23)).astype(np.float32)
    else:
        x = np.frombuffer(raw, f"<i{width}", count=n).astype(np.float32) / float(1 << (info.bits - 1))
    return x.reshape(-1, info.channels)


def resampled_length(frames: int, rate_in: int, rate_out: int) -> int:
    return int(np.ceil(frames * rate_out / rate_in))


ZEROS, BETA, ROLLOFF = 16, 8.6, 0.95


def _half_width(rate_in: int, rate_out: int) -> tuple[float, int]:
    """(cutoff, half width in input samples) of the sinc kernel."""
    cutoff = ROLLOFF * min(1.0, rate_out / rate_in)  # 1.0 = the input's Nyquist frequency
    return cutoff, int(np.ceil(ZEROS / cutoff))


def values_at(x: np.ndarray, t: np.ndarray, rate_in: int, rate_out: int, method: str) -> np.ndarray:
    """The 1-D signal x (zero outside it; linear: held at its ends) at instants t, in input samples."""
    if method == "linear":
        return np.interp(t, np.arange(len(x)), x).astype(np.float32) if len(x) else np.zeros(len(t), np.float32)
    cutoff, half = _half_width(rate_in, rate_out)
    offs = np.arange(-half + 1, half + 1)
    out = np.empty(len(t), np.float32)
    xp = np.concatenate([np.zeros(half, np.float32), x.astype(np.float32), np.zeros(half + 1, np.float32)])
    for s in range(0, len(t), 4096):
        tb = t[s:s + 4096]
        k = np.floor(tb).astype(np.int64)[:, None] + offs[None, :]  # input samples around each output instant
        k = np.clip(k, -half, len(x) + half)  # beyond the padding every weight meets a zero sample anyway
        d = tb[:, None] - k
        w = cutoff * np.sinc(cutoff * d) * np.i0(BETA * np.sqrt(np.clip(1 - (d / half) ** 2, 0, 1))) / np.i0(BETA)
        out[s:s + len(tb)] = (xp[k + half] * w).sum(axis=1)
    return out


def resample(x: np.ndarray, rate_in: int, rate_out: int, method: str = "sinc") -> np.ndarray:
    """Resample a whole 1-D signal; see the module docstring for the methods."""
    if rate_in == rate_out or len(x) == 0:
        return x.astype(np.float32)
    return values_at(x, np.arange(resampled_length(len(x), rate_in, rate_out)) * (rate_in / rate_out),
                     rate_in, rate_out, method)


def read_window(info: WavInfo, start: int, length: int, rate: int, method: str, mono: bool) -> np.ndarray:
    """Output samples [start, start + length) of the file resampled to `rate` (zero past its end), as
    (channels, length): only the input frames the window (and the resampling kernel) reach are read."""
    n_out = resampled_length(info.frames, info.rate, rate)
    n = np.arange(start, min(start + length, n_out))
    chans = 1 if mono else info.channels
    out = np.zeros((chans, length), np.float32)
    if len(n) == 0:
        return out
    if info.rate == rate:
        x = read_samples(info, int(n[0]), int(n[-1]) + 1)
        seg, t = x, None
    else:
        t = n * (info.rate / rate)
        margin = 1 if method == "linear" else _half_width(info.rate, rate)[1]
        a = max(0, int(np.floor(t[0])) - margin)
        seg = read_samples(info, a, int(np.floor(t[-1])) + margin + 2)
        t = t - a
    if mono and seg.shape[1] > 1:
        seg = seg.mean(axis=1, keepdims=True)  # mix_to_mono (checked at open)
    for c in range(chans):
        out[c, :len(n)] = seg[:, c] if t is None else values_at(seg[:, c], t, info.rate, rate, method)
    return out


class AudioSource:
    def __init__(self, infos: list[WavInfo], file_labels: Optional[np.ndarray], spec, cfg, window: int, hop: int,
                 channels: int, description: str):
        self.infos, self.spec, self.cfg = infos, spec, cfg
        self.window, self.hop, self.channels = window, hop, channels
        counts = []
        for info in infos:
            n = resampled_length(info.frames, info.rate, cfg.sample_rate)
            counts.append(1 if n <= window else 1 + (n - window) // hop)
        self.file_of = np.repeat(np.arange(len(infos)), counts).astype(np.int64)
        self.window_of = np.concatenate([np.arange(c) for c in counts]).astype(np.int64) if counts else np.zeros(0, np.int64)
        self.labels = None if file_labels is None else file_labels[self.file_of]
        self.names = [spec.name]
        self.description = description

    def __len__(self) -> int:
        return len(self.file_of)

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        out = [read_window(self.infos[int(self.file_of[i])], int(self.window_of[i]) * self.hop, self.window,
                           self.cfg.sample_rate, self.cfg.resample, self.channels == 1) for i in indices]
        batch = np.stack(out)  # (N, C, T)
        if len(self.spec.shape) == 2:
            batch = batch[:, 0]
        return {self.spec.name: np.ascontiguousarray(batch.astype(self.spec.dtype))}


def list_wavs(path) -> tuple[list[Path], Optional[np.ndarray]]:
    from .images import is_glob
    import glob as _glob

    text = str(path)
    if is_glob(text):
        files = sorted(Path(f) for f in _glob.glob(text, recursive=True) if f.lower().endswith(".wav"))
        if not files:
            raise InputError(f"no .wav files match {text}; check the pattern")
        return files, None
    root = Path(path)
    if root.is_file():
        return [root], None
    if not root.is_dir():
        raise InputError(f"audio folder {root} not found; pass a folder of .wav files, a glob or one .wav")
    top = sorted(f for f in root.iterdir() if f.is_file() and f.suffix.lower() == ".wav")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if top or not subdirs:
        if not top:
            raise InputError(f"audio folder {root} holds no .wav files; add WAV files or point to the right folder")
        return top, None
    from .images import class_ids

    files, labels = [], []
    for k, d in zip(class_ids([d.name for d in subdirs]), subdirs):
        found = sorted(f for f in d.rglob("*.wav") if f.is_file())
        if not found:
            raise InputError(f"label folder {d} holds no .wav files; add files to it or remove the folder")
        files += found
        labels += [k] * len(found)
    return files, np.asarray(labels, np.int64)


def open_audio(path, specs, config, model=None) -> tuple[AudioSource, tuple[str, ...]]:
    cfg = config.audio
    if len(specs) != 1 or len(specs[0].shape) not in (2, 3) or not np.issubdtype(specs[0].dtype, np.floating):
        names = ", ".join(f"{s.name} {s.shape}" for s in specs)
        raise InputError(f"audio data fills one float input of shape (batch, samples) or (batch, channels, samples), "
                         f"but the model has inputs {names}; pass .npz arrays")
    spec = specs[0]
    static = [d if isinstance(d, int) and d > 0 else None for d in spec.shape]
    channels = static[1] if len(static) == 3 and static[1] else 1
    window = cfg.window or static[-1]
    if window is None:
        raise InputError(f"model input '{spec.name}' has a dynamic length {spec.shape}; set audio.window (samples) in "
                         f"--data-config")
    if static[-1] and window != static[-1]:
        raise InputError(f"audio window {window} differs from the model's input length {static[-1]}; drop the window "
                         f"setting or set it to {static[-1]}")
    files, labels = list_wavs(path)
    infos, bad, keep = [], [], []
    for k, f in enumerate(files):
        try:
            info = read_header(f)
        except InputError:
            if not config.skip_bad:
                raise
            bad.append(str(f))
            continue
        if info.channels != channels and not (channels == 1 and cfg.mix_to_mono):
            fix = "convert it to mono or pass --mix-to-mono (averages the channels)" if channels == 1 else \
                f"convert it to {channels} channels"
            raise InputError(f"WAV {f} has {info.channels} channels but model input '{spec.name}' {spec.shape} takes "
                             f"{channels}; {fix}")
        infos.append(info)
        keep.append(k)
    if not infos:
        raise InputError(f"audio source {path} holds no readable WAV files; add 16-bit PCM or float WAV files")
    file_labels = None if labels is None else labels[keep]
    src = AudioSource(infos, file_labels, spec, cfg, window, cfg.hop or window, channels, f"audio {path}")
    return src, tuple(bad)
