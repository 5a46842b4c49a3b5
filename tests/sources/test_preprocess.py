"""Every preset against a reference written here with numpy (Pillow's bilinear resize is the one shared step)."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from PIL import Image

from onnxcompress.config import DataConfig, ImageConfig, from_dict, to_dict
from onnxcompress.data import input_specs
from onnxcompress.errors import InputError
from onnxcompress.sources import open_source
from onnxcompress.sources.preprocess import PRESETS

from .helpers import image_model

IMNET_MEAN, IMNET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def _resize(a: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize((w, h), Image.BILINEAR), np.float64)


def _center(x: np.ndarray, ch: int, cw: int) -> np.ndarray:
    top, left = int(round((x.shape[0] - ch) / 2)), int(round((x.shape[1] - cw) / 2))
    return x[top:top + ch, left:left + cw]


def reference(a: np.ndarray, preset: str, th: int, tw: int) -> np.ndarray:
    """uint8 RGB HxWx3 -> the preset's CHW float, as each convention's own code does it."""
    h, w = a.shape[:2]
    if preset == "unit":
        x = _resize(a, th, tw) / 255.0
    elif preset in ("imagenet", "minus1_1"):
        side = int(th / 0.875)
        nh, nw = (side, int(side * w / h)) if h <= w else (int(side * h / w), side)
        x = _center(_resize(a, nh, nw), th, tw)
        x = (x / 255.0 - IMNET_MEAN) / IMNET_STD if preset == "imagenet" else x / 127.5 - 1.0
    elif preset == "yolo":
        r = min(th / h, tw / w)
        nh, nw = int(round(h * r)), int(round(w * r))
        x = np.full((th, tw, 3), 114.0)
        top, left = (th - nh) // 2, (tw - nw) // 2
        x[top:top + nh, left:left + nw] = _resize(a, nh, nw)
        x = x / 255.0
    elif preset == "paddleocr_det":
        x = (_resize(a, th, tw)[:, :, ::-1] / 255.0 - IMNET_MEAN) / IMNET_STD  # BGR, ImageNet statistics as PaddleOCR
    else:  # paddleocr_rec / cls: resize_norm_img: normalize, then zero-pad on the right
        rw = min(tw, int(math.ceil(th * w / h)))
        img = (_resize(a, th, rw)[:, :, ::-1] / 255.0 - 0.5) / 0.5
        x = np.zeros((th, tw, 3))
        x[:, :rw] = img
    return x.transpose(2, 0, 1)


SIZES = {"unit": (8, 8), "imagenet": (24, 24), "minus1_1": (16, 16), "yolo": (32, 32), "paddleocr_det": (32, 32),
         "paddleocr_rec": (48, 320), "paddleocr_cls": (48, 192)}


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("hw", [(37, 53), (61, 29)])
def test_preset_matches_reference(tmp_path, preset, hw):
    assert set(SIZES) == set(PRESETS)
    rng = np.random.default_rng(hash(preset) % 1000)
    a = rng.integers(0, 256, hw + (3,), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    th, tw = SIZES[preset]
    m = image_model(("N", 3, th, tw))
    ds = open_source(tmp_path, input_specs(m), DataConfig(image=ImageConfig(preset=preset)), m)
    got = next(ds.batches(1))["x"][0]
    np.testing.assert_allclose(got, reference(a, preset, th, tw), rtol=0, atol=2e-6)


def test_nhwc_bgr_uint8_and_explicit_mean_std(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    m = image_model(("N", 10, 12, 3), layout="NHWC")
    cfg = DataConfig(image=ImageConfig(color="BGR", mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 8.0), scale=1.0))
    got = next(open_source(tmp_path, input_specs(m), cfg, m).batches(1))["x"][0]
    np.testing.assert_allclose(got, (a[:, :, ::-1] - np.array([10, 20, 30])) / np.array([2, 4, 8]), atol=1e-5)


def test_grayscale_model_and_letterbox_pad_geometry(tmp_path):
    Image.fromarray(np.full((10, 20), 200, np.uint8)).save(tmp_path / "g.png")  # wide: pads top and bottom
    m = image_model(("N", 1, 8, 8))
    cfg = DataConfig(image=ImageConfig(resize="letterbox", pad_value=0.0))
    x = next(open_source(tmp_path, input_specs(m), cfg, m).batches(1))["x"][0, 0]
    np.testing.assert_allclose(x[2:6], 200 / 255, atol=1e-6)  # 10x20 -> 4x8 centred in 8x8
    assert (x[:2] == 0).all() and (x[6:] == 0).all()


def test_dynamic_size_needs_a_size(tmp_path):
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(tmp_path / "a.png")
    m = image_model(("N", 3, "H", "W"))
    with pytest.raises(InputError, match="dynamic height/width"):
        open_source(tmp_path, input_specs(m), DataConfig(), m)
    ds = open_source(tmp_path, input_specs(m), DataConfig(image=ImageConfig(size=(5, 7))), m)
    assert next(ds.batches(1))["x"].shape == (1, 3, 5, 7)


def test_image_spec_round_trips_in_the_config():
    cfg = DataConfig(samples=7, seed=3, image=ImageConfig(preset="yolo", size=(320, 320), pad_value=0.0,
                                                          mean=(0.1, 0.2, 0.3), std=(1.0, 1.0, 1.0), layout="NHWC"))
    import json

    assert from_dict(DataConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg
    with pytest.raises(Exception, match="preset"):
        from_dict(DataConfig, {"image": {"preset": "nope"}})


def test_imagenet_with_an_explicit_resize_side_still_crops_to_the_model(tmp_path):
    a = np.random.default_rng(5).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    m = image_model(("N", 3, 16, 16))
    cfg = DataConfig(image=ImageConfig(preset="imagenet", size=(20,)))
    got = next(open_source(tmp_path, input_specs(m), cfg, m).batches(1))["x"][0]
    x = _center(_resize(a, 20, 26), 16, 16)  # shorter side 20 (40 * 20 / 30 = 26.7 -> 26), then crop 16
    np.testing.assert_allclose(got, ((x / 255.0 - IMNET_MEAN) / IMNET_STD).transpose(2, 0, 1), atol=2e-6)
