"""A small ImageNet-layout dataset made offline from real photos that installed packages ship.

Each bundled photo (scikit-image's and scikit-learn's) is one class; samples are random square
crops of it. Train crops come from the left 70 % of the photo, val crops from the right 30 %, so
the two splits share no pixels.
"""
from __future__ import annotations

import importlib.util
import random
from pathlib import Path

from PIL import Image

from pipeline.errors import UserError
from pipeline.fs import building

# class name -> (package, file). camera is grayscale on purpose: the sharder must convert it.
SOURCES = {
    "astronaut": ("skimage", "data/astronaut.png"),
    "camera": ("skimage", "data/camera.png"),
    "cat": ("skimage", "data/chelsea.png"),
    "china": ("sklearn", "datasets/images/china.jpg"),
    "coffee": ("skimage", "data/coffee.png"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
    "hubble": ("skimage", "data/hubble_deep_field.jpg"),
    "ihc": ("skimage", "data/ihc.png"),
    "motorcycle": ("skimage", "data/motorcycle_left.png"),
    "rocket": ("skimage", "data/rocket.jpg"),
}
TRAIN_REGION = 0.7  # fraction of the width that train crops come from


def _package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"demo data needs the package '{package}' (pip install -e .)")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise UserError(f"bundled photo missing: {path}")
    return path


def _crops(photo: Image.Image, n: int, x0: int, x1: int, rng: random.Random, flip: bool):
    """n random square crops whose left/right edges lie within columns [x0, x1)."""
    w, h = photo.size
    for _ in range(n):
        side = min(int(min(w, h) * rng.uniform(0.25, 0.3)), x1 - x0)
        left = rng.randint(x0, x1 - side)
        top = rng.randint(0, h - side)
        crop = photo.crop((left, top, left + side, top + side))
        if flip and rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        yield crop


def make_demo_data(out: str | Path, train_per_class: int = 100, val_per_class: int = 20, seed: int = 0) -> dict:
    """Write `<out>/{train,val}/<class>/*.JPEG`; returns counts. Written to a temporary folder
    first and renamed, so a folder that exists is complete."""
    out = Path(out)
    if (out / "train").is_dir():
        return {"out": str(out), "created": False}
    rng = random.Random(seed)
    with building(out) as tmp:
        for name, (package, relative) in SOURCES.items():
            photo = Image.open(_package_file(package, relative))
            photo.load()
            w, _ = photo.size
            split_x = int(w * TRAIN_REGION)
            for split, n, (x0, x1), flip in (
                ("train", train_per_class, (0, split_x), True),
                ("val", val_per_class, (split_x, w), False),
            ):
                folder = tmp / split / name
                folder.mkdir(parents=True, exist_ok=True)
                for i, crop in enumerate(_crops(photo, n, x0, x1, rng, flip)):
                    # Grayscale photos stay grayscale JPEGs; RGBA/palette are flattened for JPEG.
                    crop = crop if crop.mode in ("L", "RGB") else crop.convert("RGB")
                    crop.save(folder / f"{name}_{i:05d}.JPEG", quality=92)
    return {"out": str(out), "created": True, "classes": len(SOURCES),
            "train": train_per_class * len(SOURCES), "val": val_per_class * len(SOURCES)}
