"""Images: a folder (flat, or one subfolder per class = ImageFolder labels) or a glob of JPEG/PNG/BMP/WebP,
decoded with Pillow and preprocessed by an ImageSpec."""
from __future__ import annotations

import csv
import glob
import re
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import InputError
from . import preprocess

EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in EXTS and not p.name.startswith(".")


def is_glob(path: str) -> bool:
    return any(ch in str(path) for ch in "*?[")


def glob_root(pattern: str) -> Path:
    """The folder a glob starts from: its leading parts without wildcards."""
    parts = []
    for part in Path(pattern).parts:
        if is_glob(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def list_images(path: str | Path) -> tuple[list[Path], Optional[np.ndarray], list[str]]:
    """Files, labels (ImageFolder: index of the sorted subfolder name) and class names."""
    text = str(path)
    if is_glob(text):
        files = sorted(Path(f) for f in glob.glob(text, recursive=True) if _is_image(Path(f)))
        if not files:
            raise InputError(f"no {'/'.join(EXTS)} files match {text}; check the pattern")
        return files, None, []
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"image folder {root} not found; pass a folder of images or a glob like 'dir/*.jpg'")
    top = sorted(f for f in root.iterdir() if f.is_file() and _is_image(f))
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if top or not subdirs:
        if not top:
            raise InputError(f"image folder {root} holds no {'/'.join(EXTS)} files; add images or point to the right folder")
        return top, None, []
    files, labels = [], []
    ids = class_ids([d.name for d in subdirs])
    for k, d in zip(ids, subdirs):
        found = sorted(f for f in d.rglob("*") if f.is_file() and _is_image(f))
        if not found:
            raise InputError(f"label folder {d} holds no images ({'/'.join(EXTS)}); add images to it or remove the folder")
        files += found
        labels += [k] * len(found)
    return files, np.asarray(labels, np.int64), [d.name for d in subdirs]


def class_ids(names: list[str]) -> list[int]:
    """Class folder -> label: the folder's number when every folder name starts with one ("3", "03_coat"), so a
    split missing a class keeps the model's class ids; else its index in sorted order (torchvision ImageFolder)."""
    nums = [re.match(r"^(\d+)(?:[_\- .].*)?$", n) for n in names]
    if all(nums) and len({int(m.group(1)) for m in nums}) == len(names):
        return [int(m.group(1)) for m in nums]
    return list(range(len(names)))


def csv_labels(csv_path: str | Path, root: Path, files: list[Path]) -> np.ndarray:
    """Labels from a CSV whose first two columns are the file (relative to the folder) and its label
    (an integer, or a class name: names are numbered in sorted order). A header row is skipped."""
    p = Path(csv_path)
    if not p.is_file():
        raise InputError(f"labels CSV {p} not found; pass a CSV with columns file,label")
    table: dict[str, str] = {}
    with open(p, newline="") as f:
        for i, row in enumerate(csv.reader(f)):
            if not row or (i == 0 and row[0].strip().lower() in ("file", "filename", "path", "image")):
                continue
            if len(row) < 2:
                raise InputError(f"{p} line {i + 1} has {len(row)} column(s); each row needs file,label")
            table[str(Path(row[0].strip()))] = row[1].strip()
    vals = []
    for fp in files:
        key = str(fp.relative_to(root)) if root in fp.parents else str(fp)
        if key not in table and fp.name not in table:
            raise InputError(f"image {fp} has no row in {p}; add '{key},LABEL' or remove the image")
        vals.append(table.get(key, table.get(fp.name)))
    try:
        return np.asarray([int(v) for v in vals], np.int64)
    except ValueError:
        names = sorted(set(vals))
        return np.asarray([names.index(v) for v in vals], np.int64)


def _hint(fix: str, skip: bool = True) -> str:
    return f"{fix}, or pass --skip-bad to leave unreadable files out" if skip else fix


def decode(path: Path, spec: preprocess.ImageSpec) -> np.ndarray:
    """One file -> one preprocessed sample; an unreadable file raises InputError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return preprocess.apply(im, spec, where=f"image {path}")
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        msg = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise InputError(f"cannot decode image {path} ({msg}); {_hint('replace or delete the file')}") from None


class ImageSource:
    def __init__(self, files: list[Path], labels: Optional[np.ndarray], spec: preprocess.ImageSpec, input_name: str,
                 description: str):
        self.files = files
        self.labels = labels
        self.spec = spec
        self.names = [input_name]
        self.description = description

    def __len__(self) -> int:
        return len(self.files)

    def read_one(self, i: int) -> np.ndarray:
        return decode(self.files[i], self.spec)

    def shape_error(self, i: int, shape, first: int, first_shape) -> None:
        raise InputError(f"image {self.files[i]} preprocesses to shape {tuple(shape)} but {self.files[first]} to "
                         f"{tuple(first_shape)}; set a fixed size (--preset, or image.size in --data-config)")

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        samples = [self.read_one(i) for i in indices]
        for i, s in zip(indices, samples):
            if s.shape != samples[0].shape:
                self.shape_error(i, s.shape, indices[0], samples[0].shape)
        return {self.names[0]: np.stack(samples)}


def open_images(path, specs, config, model=None) -> tuple[ImageSource, tuple[str, ...]]:
    """ImageSource for the model's single image input; bad files are an error, or left out with skip_bad."""
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise InputError("image data needs Pillow; pip install pillow") from None
    cands = [s for s in specs if len(s.shape) == 4]
    if len(cands) != 1 or len(specs) != 1:
        names = ", ".join(f"{s.name} {s.shape}" for s in specs)
        raise InputError(f"image data fills one rank-4 image input, but the model has inputs {names}; pass .npz arrays "
                         f"named after the inputs")
    spec_in = cands[0]
    spec = preprocess.resolve(config.image, spec_in.name, spec_in.shape, spec_in.dtype)
    files, labels, _classes = list_images(path)
    if config.image.labels_csv:
        root = Path(path) if not is_glob(str(path)) else glob_root(str(path))
        labels = csv_labels(config.image.labels_csv, root, files)
    return ImageSource(files, labels, spec, spec_in.name, f"images {path}"), ()


def check_headers(source: ImageSource, indices: np.ndarray, workers: int) -> None:
    """Before any work: every chosen file opens as an image (header only, no decoding: well under 1 ms a file), so a
    non-image or truncated header stops the command before anything runs; damage past the header is found
    when the file is decoded (--skip-bad decodes every file up front instead)."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image, UnidentifiedImageError

    def head(i: int) -> None:
        path = source.files[i]
        try:
            with Image.open(path) as im:
                im.size  # noqa: B018 - parsing the header is the check
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            msg = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise InputError(f"cannot decode image {path} ({msg}); {_hint('replace or delete the file')}") from None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(head, indices.tolist()))


def verify(source: ImageSource, indices: np.ndarray, workers: int) -> tuple[np.ndarray, tuple[str, ...]]:
    """--skip-bad: decode the chosen samples once up front; unreadable ones are left out and named."""
    from concurrent.futures import ThreadPoolExecutor

    def ok(i: int) -> bool:
        try:
            decode(source.files[i], source.spec)
            return True
        except InputError as exc:
            if "cannot decode" not in str(exc):
                raise
            return False

    with ThreadPoolExecutor(max_workers=workers) as pool:
        good = list(pool.map(ok, indices.tolist()))
    keep = indices[np.asarray(good, bool)] if len(indices) else indices
    bad = tuple(str(source.files[i]) for i, g in zip(indices.tolist(), good) if not g)
    return keep, bad
