"""Images: how raw files are found and decoded, normalised, stored in a shard and read back.

The stored form is a PNG of `image_size` x `image_size` RGB pixels (lossless, so a shard holds
exactly the pixels training sees). Tensors are float in [-1, 1], channels first.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
SHARD_FIELD = "png"  # the webdataset extension of the sample's data
SPATIAL_DIMS = 2
CHANNELS = 3


class SkipSample(Exception):
    """A raw input that cannot become a sample; the message is the reason recorded in the manifest."""


def is_candidate(name: str) -> bool:
    return name.lower().endswith(EXTENSIONS)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: grayscale, CMYK, palette, alpha and 16-bit/float are converted."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # PIL's convert("L") clips 16-bit values at 255; rescale by the real range instead.
        a = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):
            a = a / 257.0
        else:
            lo, hi = float(a.min()), float(a.max())
            a = (a - lo) / (hi - lo or 1.0) * 255.0
        img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def preprocess(data: bytes, image_size: int, min_source_size: int) -> np.ndarray:
    """Raw file bytes -> (image_size, image_size, 3) uint8: shorter side resized, centre-cropped.

    Raises SkipSample with a reason for anything that is not a usable image."""
    if not data:
        raise SkipSample("empty file")
    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        if min(w, h) < min_source_size:
            raise SkipSample(f"too small: {w}x{h}, shorter side under {min_source_size}")
        # JPEG can decode at 1/2, 1/4, 1/8 scale: much faster for big photos. Keeping >= 4x the
        # target before the antialiased resize keeps the result within ~0.5 levels of a full decode.
        img.draft("RGB", (image_size * 4, image_size * 4))
        img.load()
        img = ImageOps.exif_transpose(img)
        img = _to_rgb(img)
    except SkipSample:
        raise
    except Image.DecompressionBombError as e:
        raise SkipSample(f"too large: {e}") from None
    except (OSError, SyntaxError, ValueError, Image.UnidentifiedImageError) as e:
        kind = "not an image" if isinstance(e, Image.UnidentifiedImageError) else "corrupt image"
        raise SkipSample(f"{kind}: {e}") from None
    w, h = img.size
    scale = image_size / min(w, h)
    new_w, new_h = max(image_size, round(w * scale)), max(image_size, round(h * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
    img = img.crop((left, top, left + image_size, top + image_size))
    return np.asarray(img, dtype=np.uint8)


def encode(pixels: np.ndarray) -> bytes:
    """uint8 HxWx3 -> PNG bytes (fast compression: shards are written once, read many times)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    """PNG bytes from a shard -> uint8 HxWx3."""
    with Image.open(io.BytesIO(data)) as img:
        return np.array(img.convert("RGB"), dtype=np.uint8)  # writable: torch.from_numpy shares it


# ---- tensors: what the model sees ---------------------------------------------------------------
# Pixels are scaled to [-0.5, 0.5]: an MSE there is the MSE of [0, 1] images.

def to_tensor(pixels: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float().div_(255.0).sub_(0.5)


def to_pixels(x) -> np.ndarray:
    """(C, H, W) or (B, C, H, W) model-space tensor -> uint8 HWC / BHWC."""
    x = x.detach().float().cpu().add(0.5).clamp_(0, 1).mul_(255).round_().byte()
    return (x.permute(0, 2, 3, 1) if x.dim() == 4 else x.permute(1, 2, 0)).numpy()


def grid(rows: list[np.ndarray], pad: int = 2) -> Image.Image:
    """Rows of uint8 BHWC images -> one PNG-ready picture (a row per list item)."""
    h, w = rows[0].shape[1:3]
    cols = max(len(r) for r in rows)
    canvas = Image.new("RGB", (cols * (w + pad) + pad, len(rows) * (h + pad) + pad), (255, 255, 255))
    for i, row in enumerate(rows):
        for j, px in enumerate(row):
            canvas.paste(Image.fromarray(px), (pad + j * (w + pad), pad + i * (h + pad)))
    return canvas
