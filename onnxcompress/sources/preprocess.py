"""Image preprocessing: a resolved spec (from a preset, the user's overrides and the model's input) and its
application to one Pillow image.

Order: colour conversion -> resize (Pillow bilinear, uint8) -> float32 -> pad (letterbox / right, in pixel units)
-> center crop -> x * scale -> (x - mean) / std -> layout -> dtype. Resizing uses Pillow's bilinear filter
(antialiased when shrinking, as torchvision does on PIL images); OpenCV-based pipelines (YOLO, PaddleOCR) use
cv2.INTER_LINEAR without antialiasing, so values differ slightly when those presets shrink an image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# name -> (help line, settings). "crop_pct": the resize side is crop / crop_pct (torchvision: 224 / 0.875 = 256).
PRESETS: dict[str, tuple[str, dict]] = {
    "unit": ("exact resize to the model's H x W, RGB (or L for 1 channel), x/255 in [0, 1]",
             dict(resize="exact", scale=1 / 255)),
    "imagenet": ("torchvision ImageNet: shorter side to crop/0.875 (256), center crop (224), RGB, /255, "
                 "mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225), NCHW",
                 dict(resize="shorter", crop_pct=0.875, scale=1 / 255, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                      color="RGB", default_hw=(224, 224))),
    "minus1_1": ("[-1, 1] (Inception/TF style): shorter side to crop/0.875, center crop, RGB, x/127.5 - 1",
                 dict(resize="shorter", crop_pct=0.875, scale=1 / 255, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                      color="RGB", default_hw=(224, 224))),
    "yolo": ("YOLO: letterbox to the model's H x W (640) with pad 114, RGB, x/255 in [0, 1], NCHW",
             dict(resize="letterbox", pad_value=114.0, scale=1 / 255, color="RGB", default_hw=(640, 640))),
    "paddleocr_det": ("PaddleOCR detection: exact resize to the model's H x W (640), BGR, /255, ImageNet mean/std",
                      dict(resize="exact", scale=1 / 255, mean=IMAGENET_MEAN, std=IMAGENET_STD, color="BGR",
                           default_hw=(640, 640))),
    "paddleocr_rec": ("PaddleOCR recognition: height 48 keeping aspect, width <= 320 padded right, BGR, (x/255 - 0.5)/0.5",
                      dict(resize="height", pad_value=127.5, scale=1 / 255, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                           color="BGR", default_hw=(48, 320))),
    "paddleocr_cls": ("PaddleOCR direction classifier: as paddleocr_rec at 48 x 192",
                      dict(resize="height", pad_value=127.5, scale=1 / 255, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                           color="BGR", default_hw=(48, 192))),
}


def presets_help() -> str:
    return "; ".join(f"{name}: {line}" for name, (line, _) in PRESETS.items())


@dataclass(frozen=True)
class ImageSpec:
    """Fully resolved preprocessing for one model input."""

    resize: str  # none | exact | shorter | letterbox | height
    size: tuple[int, ...]  # exact/letterbox/height: (H, W); shorter: (side,)
    crop: Optional[tuple[int, int]]
    pad_value: float
    color: str  # RGB | BGR | L
    gray_to_rgb: bool
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    layout: str  # NCHW | NHWC
    dtype: np.dtype

    @property
    def channels(self) -> int:
        return 1 if self.color == "L" else 3


def model_layout(shape: tuple) -> tuple[str, Optional[int], Optional[int], Optional[int]]:
    """(layout, C, H, W) of a rank-4 image input; a static 1/3 on axis 1 means NCHW, on axis 3 NHWC."""
    dims = [d if isinstance(d, int) and d > 0 else None for d in shape]
    if dims[3] in (1, 3) and dims[1] not in (1, 3):
        return "NHWC", dims[3], dims[1], dims[2]
    return "NCHW", dims[1], dims[2], dims[3]


def resolve(cfg, input_name: str, shape: tuple, dtype: np.dtype) -> ImageSpec:
    """ImageConfig + the model input (name, shape, dtype) -> ImageSpec; the preset fills what cfg leaves open."""
    if len(shape) != 4:
        raise InputError(f"image data needs a rank-4 image input, but model input '{input_name}' has shape "
                         f"{shape}; pass .npz arrays for this model")
    _, preset = PRESETS[cfg.preset]
    layout_m, c, h, w = model_layout(shape)
    layout = cfg.layout or layout_m
    if cfg.layout == "NHWC":
        c, h, w = (shape[3], shape[1], shape[2]) if all(isinstance(d, int) for d in shape[1:]) else (c, h, w)
    color = cfg.color or (("L" if c == 1 else preset.get("color", "RGB")))
    if c == 1 and color != "L":
        color = "L"  # a 1-channel model: luminance (ITU-R 601, Pillow's "L")
    if c is not None and c not in (1, 3):
        raise InputError(f"model input '{input_name}' has {c} channels (shape {shape}); image data gives 1 or 3; "
                         f"pass .npz arrays or a --data-config with layout NCHW/NHWC")
    model_hw = (h, w) if h and w else None
    hw = model_hw or preset.get("default_hw")
    resize = cfg.resize or preset.get("resize", "exact")
    crop: Optional[tuple[int, int]] = (cfg.crop[0], cfg.crop[-1]) if cfg.crop else None  # (S,) -> (S, S)
    if resize == "shorter":
        crop = crop or hw  # torchvision: Resize(shorter side) then CenterCrop(the model's H x W)
    if cfg.size:
        size = tuple(cfg.size)
    elif resize == "shorter":
        if crop is None:
            raise InputError(f"model input '{input_name}' has dynamic height/width; give the image size "
                             f"(--data-config image.size / image.crop)")
        size = (int(math.floor(min(crop) / preset.get("crop_pct", 1.0))),)
    elif resize == "none":
        size = ()
    else:
        if hw is None:
            raise InputError(f"model input '{input_name}' has dynamic height/width; give the image size "
                             f"(--data-config image.size, e.g. [224, 224])")
        size = hw
    if resize != "shorter" and len(size) == 1:
        size = (size[0], size[0])
    if resize == "shorter" and len(size) != 1:
        raise InputError("image resize 'shorter' takes one size (the shorter side), e.g. size [256]")
    mean = tuple(cfg.mean) or tuple(preset.get("mean", ()))
    std = tuple(cfg.std) or tuple(preset.get("std", ()))
    n = 1 if color == "L" else 3
    mean, std = mean or (0.0,), std or (1.0,)
    if color == "L" and (len(mean) == 3 or len(std) == 3):  # RGB statistics on a grayscale model: their average
        mean, std = (float(np.mean(mean)),), (float(np.mean(std)),)
    if len(mean) not in (1, n) or len(std) not in (1, n):
        raise InputError(f"image mean/std have {len(mean)}/{len(std)} values but the model input '{input_name}' has "
                         f"{n} channels; give 1 or {n} values")
    pad = cfg.pad_value if cfg.pad_value is not None else preset.get("pad_value", 0.0)
    scale = cfg.scale if cfg.scale is not None else preset.get("scale", 1 / 255)
    dt = np.dtype(cfg.dtype) if cfg.dtype else np.dtype(dtype)
    return ImageSpec(resize, size, crop, float(pad), color, cfg.gray_to_rgb, float(scale), mean, std, layout, dt)


def _shorter(hw: tuple[int, int], side: int) -> tuple[int, int]:
    """torchvision Resize(int): the shorter side becomes `side`, the other keeps the aspect ratio (truncated)."""
    h, w = hw
    if h <= w:
        return side, int(side * w / h)
    return int(side * h / w), side


def _letterbox_geometry(hw, target):
    h, w = hw
    th, tw = target
    r = min(th / h, tw / w)
    nh, nw = max(1, int(round(h * r))), max(1, int(round(w * r)))
    return (nh, nw), ((th - nh) // 2, (tw - nw) // 2)


def _height_geometry(hw, target):
    h, w = hw
    th, tw = target
    nw = min(tw, int(math.ceil(th * w / h)))
    return (th, max(1, nw)), (0, 0)


def apply(image, spec: ImageSpec, where: str = "image") -> np.ndarray:
    """One Pillow image -> one preprocessed sample (C,H,W or H,W,C), spec.dtype."""
    from PIL import Image

    im = _convert(image, spec, where)
    hw = (im.height, im.width)
    offset = (0, 0)
    canvas_hw = None
    if spec.resize == "exact":
        new = spec.size
    elif spec.resize == "shorter":
        new = _shorter(hw, spec.size[0])
    elif spec.resize == "letterbox":
        new, offset = _letterbox_geometry(hw, spec.size)
        canvas_hw = spec.size
    elif spec.resize == "height":
        new, offset = _height_geometry(hw, spec.size)
        canvas_hw = spec.size
    else:
        new = hw
    if tuple(new) != hw:
        im = im.resize((new[1], new[0]), Image.BILINEAR)
    x = np.asarray(im, dtype=np.float32)
    if x.ndim == 2:
        x = x[:, :, None]
    if spec.color == "BGR":
        x = x[:, :, ::-1]
    if canvas_hw is not None:
        x = _place(x, canvas_hw, offset, spec.pad_value)
    if spec.crop:
        x = center_crop(x, spec.crop, spec.pad_value)
    x = x * np.float32(spec.scale)
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    if spec.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    if np.issubdtype(spec.dtype, np.integer):
        info = np.iinfo(spec.dtype)
        x = np.clip(np.rint(x), info.min, info.max)
    return np.ascontiguousarray(x, dtype=spec.dtype)


def _place(x: np.ndarray, hw, offset, pad: float) -> np.ndarray:
    out = np.full((hw[0], hw[1], x.shape[2]), pad, np.float32)
    out[offset[0]:offset[0] + x.shape[0], offset[1]:offset[1] + x.shape[1]] = x
    return out


def center_crop(x: np.ndarray, crop: tuple[int, int], pad: float = 0.0) -> np.ndarray:
    """torchvision CenterCrop on an H,W,C array (padded with `pad` when the image is smaller)."""
    ch, cw = crop
    h, w = x.shape[:2]
    if h < ch or w < cw:
        ph, pw = max(0, ch - h), max(0, cw - w)
        x = np.pad(x, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), constant_values=pad)
        h, w = x.shape[:2]
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return x[top:top + ch, left:left + cw]


def _convert(image, spec: ImageSpec, where: str):
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v / 256).convert("L") if mode != "I" else image.convert("L")
        mode = "L"
    gray = mode in ("1", "L", "LA", "P") and not (mode == "P" and _palette_has_color(image))
    if spec.color == "L":
        return image.convert("L")
    if gray:
        if not spec.gray_to_rgb:
            raise InputError(f"{where} is grayscale but the model expects 3 channels; convert it to RGB or pass "
                             f"--gray-to-rgb to replicate the channel")
        return image.convert("L").convert("RGB")
    return image.convert("RGB")


def _palette_has_color(image) -> bool:
    pal = image.getpalette() or []
    rgb = np.asarray(pal[: len(pal) // 3 * 3]).reshape(-1, 3)
    return bool((rgb.max(axis=1) != rgb.min(axis=1)).any())
