"""Image folders: ImageFolder / CSV labels, globs, formats, every bad-data case, --skip-bad, and model outputs."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from onnxcompress.config import DataConfig, ImageConfig
from onnxcompress.data import feeds, input_specs, load_data
from onnxcompress.errors import InputError
from onnxcompress.sources import detect_kind, open_source
from onnxcompress.sources.base import StreamDataset

from conftest import run_ort
from .helpers import image_model


def make_folder(root, n_per_class=(3, 2), size=(8, 8), mode="RGB", fmt="png", seed=0):
    """class folders 'cat', 'dog', ... of random images; returns {path: pixels}."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, n in enumerate(n_per_class):
        d = root / ["cat", "dog", "eel"][k]
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = size + ((3,) if mode == "RGB" else ())
            a = rng.integers(0, 256, shape, dtype=np.uint8)
            p = d / f"{i}.{fmt}"
            Image.fromarray(a).save(p)
            out[p] = a
    return out


def test_image_folder_labels_values_and_model_outputs(tmp_path):
    pix = make_folder(tmp_path / "data")
    m = image_model()
    ds = load_data(tmp_path / "data", input_specs(m), DataConfig(seed=None), m)
    assert isinstance(ds, StreamDataset) and len(ds) == 5
    assert ds.labels.tolist() == [0, 0, 0, 1, 1]
    x = np.concatenate([b["x"] for b in ds.batches(2)])
    ref = np.stack([a.transpose(2, 0, 1) / 255.0 for a in pix.values()]).astype(np.float32)  # unit preset
    np.testing.assert_allclose(x, ref, atol=1e-7)
    outs = np.concatenate([run_ort(m, dict(f))[0] for f in feeds(ds, 2)])
    np.testing.assert_allclose(outs, run_ort(m, {"x": ref})[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fmt", ["jpg", "bmp", "webp", "png"])
def test_formats_decode(tmp_path, fmt):
    make_folder(tmp_path, (2,), fmt=fmt)
    m = image_model()
    b = next(open_source(tmp_path, input_specs(m), DataConfig(), m).batches(8))
    assert b["x"].shape == (2, 3, 8, 8) and b["x"].dtype == np.float32 and 0 <= b["x"].min() and b["x"].max() <= 1


def test_glob_and_csv_labels(tmp_path):
    make_folder(tmp_path / "d", (2, 2))
    (tmp_path / "labels.csv").write_text("file,label\ncat/0.png,7\ncat/1.png,5\ndog/0.png,3\ndog/1.png,1\n")
    m = image_model()
    ds = open_source(str(tmp_path / "d" / "*" / "*.png"), input_specs(m), DataConfig(seed=None), m)
    assert len(ds) == 4 and ds.labels is None
    cfg = DataConfig(seed=None, image=ImageConfig(labels_csv=str(tmp_path / "labels.csv")))
    assert open_source(tmp_path / "d", input_specs(m), cfg, m).labels.tolist() == [7, 5, 3, 1]
    assert open_source(str(tmp_path / "d" / "*" / "*.png"), input_specs(m), cfg, m).labels.tolist() == [7, 5, 3, 1]
    (tmp_path / "labels.csv").write_text("file,label\ncat/0.png,7\n")
    with pytest.raises(InputError, match=r"cat/1.png has no row in .*labels.csv"):
        open_source(tmp_path / "d", input_specs(m), cfg, m)


def test_seed_picks_a_reproducible_subset(tmp_path):
    make_folder(tmp_path, (6, 6))
    m = image_model()
    specs = input_specs(m)
    a = open_source(tmp_path, specs, DataConfig(samples=5, seed=1), m)
    b = open_source(tmp_path, specs, DataConfig(samples=5, seed=1), m)
    c = open_source(tmp_path, specs, DataConfig(samples=5, seed=2), m)
    assert len(a) == 5 and a.order.tolist() == b.order.tolist() != c.order.tolist()
    np.testing.assert_array_equal(next(a.batches(5))["x"], next(b.batches(5))["x"])
    assert open_source(tmp_path, specs, DataConfig(seed=None), m).order.tolist() == list(range(12))


def test_corrupt_image_names_the_file_and_skip_bad_counts(tmp_path):
    make_folder(tmp_path, (3,))
    bad = tmp_path / "cat" / "9.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    trunc = tmp_path / "cat" / "8.jpg"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(trunc)
    trunc.write_bytes(trunc.read_bytes()[:200])
    m = image_model()
    with pytest.raises(InputError, match=r"cannot decode image .*(8.jpg|9.png) .*--skip-bad"):
        ds = open_source(tmp_path, input_specs(m), DataConfig(seed=None), m)
        list(ds.batches(8))
    ds = open_source(tmp_path, input_specs(m), DataConfig(skip_bad=True), m)
    assert len(ds) == 3 and sorted(p.rsplit("/", 1)[1] for p in ds.skipped) == ["8.jpg", "9.png"]
    assert sum(len(b["x"]) for b in ds.batches(2)) == 3


def test_grayscale_where_rgb_expected(tmp_path):
    make_folder(tmp_path, (1,), mode="L")
    m = image_model()
    with pytest.raises(InputError, match=r"image .*0.png is grayscale but the model expects 3 channels.*--gray-to-rgb"):
        open_source(tmp_path, input_specs(m), DataConfig(), m)
    x = next(open_source(tmp_path, input_specs(m), DataConfig(image=ImageConfig(gray_to_rgb=True)), m).batches(1))["x"]
    np.testing.assert_array_equal(x[0, 0], x[0, 2])


def test_empty_folder_and_label_folder_without_images(tmp_path):
    m = image_model()
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no data files"):
        load_data(tmp_path / "empty", input_specs(m))
    with pytest.raises(InputError, match="image folder .*empty holds no"):
        open_source(tmp_path / "empty", input_specs(m), DataConfig(kind="images"), m)
    make_folder(tmp_path / "d", (2,))
    (tmp_path / "d" / "zebra").mkdir()
    with pytest.raises(InputError, match=r"label folder .*zebra holds no images"):
        open_source(tmp_path / "d", input_specs(m), DataConfig(), m)


def test_model_without_an_image_input_is_refused(tmp_path):
    make_folder(tmp_path, (1,))
    from .helpers import text_model

    m = text_model(10)
    with pytest.raises(InputError, match="rank-4 image input"):
        load_data(tmp_path, input_specs(m))


def test_kind_detection(tmp_path):
    make_folder(tmp_path / "imgs", (1,))
    (tmp_path / "a.txt").write_text("hi\n")
    assert detect_kind(tmp_path / "imgs") == "images"
    assert detect_kind(tmp_path / "a.txt") == "text"
    assert detect_kind(str(tmp_path / "imgs" / "*" / "*.png")) == "images"
    assert detect_kind(tmp_path / "x.npz") == "arrays"


def test_a_non_image_anywhere_stops_before_any_work(tmp_path):
    make_folder(tmp_path, (40,))
    (tmp_path / "cat" / "z.png").write_bytes(b"GIF89a not really")  # sorted last: found at open, not mid-stream
    m = image_model()
    with pytest.raises(InputError, match=r"cannot decode image .*z.png"):
        open_source(tmp_path, input_specs(m), DataConfig(seed=None), m)


def test_numbered_class_folders_keep_their_numbers(tmp_path):
    for name in ("02_coat", "07_sneaker"):  # a split without classes 0, 1, 3-6, 8, 9
        make_folder(tmp_path / name, (1,))
    m = image_model()
    ds = open_source(tmp_path, input_specs(m), DataConfig(seed=None), m)
    assert ds.labels.tolist() == [2, 7]
    (tmp_path / "cat").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "cat" / "x.png")
    assert open_source(tmp_path, input_specs(m), DataConfig(seed=None), m).labels.tolist() == [0, 1, 2]  # sorted index
