"""Images: ImageNet-layout folders of photos, stored as PNGs, modelled with the 2-D VQ-VAE and a
class-conditional Gated PixelCNN prior.

    data:
      modality: image
      image_size: 128          # shorter side resized, then centre-cropped to a square
      min_source_size: 32      # smaller files are skipped, with the reason
      storage: png             # or npy: raw pixels, 1.7x the bytes, ~7x less CPU to read back

A sample's tar members: `<key>.png` (image_size x image_size RGB, lossless, so a shard holds
exactly the pixels training sees; or `<key>.npy`, the same uint8 array in NumPy's format) and
`<key>.cls` (the class id as text). Readers take either, whatever the config says. The model sees float
tensors in [-0.5, 0.5], channels first, so an MSE there is the MSE of [0, 1] images.
"""
from __future__ import annotations

import io
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image, ImageOps
from pydantic import Field

from pipeline.media import decode_png, encode_png, grid, write_picture
from pipeline.modalities import (Batch, CondSpec, DataSection, Item, Listing, Modality, RawItem, SkipSample,
                                 pixels_to_model, register)
from pipeline.modalities.common import build_pixelcnn, build_vqvae, mse_metrics, square, to_pixels

if TYPE_CHECKING:  # torch only where tensors are made: sharding (Ray Data's workers) needs none
    import torch

EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
CHANNELS = 3
COND = "labels"  # the class id; the prior's and the codes' column name


class ImageData(DataSection):
    image_size: int = Field(128, ge=8)
    min_source_size: int = Field(32, ge=1)
    # How shards store the pixels. png: lossless and compact (photos: ~29 KB at 128x128), but a
    # core inflates only ~1,800 of them a second, and a GPU trains 7,500+. npy: the raw uint8
    # array (49 KB at 128x128), read back ~7x faster: for GPU nodes whose cores cannot keep up.
    storage: Literal["png", "npy"] = "png"


UPSAMPLED = "upsampled: smaller than data.image_size"


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


def preprocess_pixels(data: bytes, image_size: int, min_source_size: int) -> np.ndarray:
    """Raw file bytes -> (image_size, image_size, 3) uint8: shorter side resized, centre-cropped.

    Raises SkipSample with a reason for anything that is not a usable image."""
    return _preprocess(data, image_size, min_source_size)[0]


def _preprocess(data: bytes, image_size: int, min_source_size: int) -> tuple[np.ndarray, int]:
    """preprocess_pixels, and the source's shorter side (the file is opened once: a second open
    to read the size again was ~8 % of sharding's time per image in a profile)."""
    if not data:
        raise SkipSample("empty file")
    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        shorter = min(w, h)
        if shorter < min_source_size:
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
    except Image.UnidentifiedImageError:
        raise SkipSample("not an image: Pillow cannot identify it") from None  # its message holds an address
    except (OSError, SyntaxError, ValueError) as e:
        raise SkipSample(f"corrupt image: {e}") from None
    return np.asarray(square(img, image_size), dtype=np.uint8), shorter


def encode_npy(pixels: np.ndarray) -> bytes:
    """uint8 HxWx3 -> the bytes of a .npy file (no pickle)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(pixels, dtype=np.uint8), allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    """.npy bytes from a shard -> uint8 HxWx3; anything else raises ValueError."""
    pixels = np.load(io.BytesIO(data), allow_pickle=False)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"not an RGB uint8 image: {pixels.dtype} {pixels.shape}")
    return pixels


def decode_pixels(members: dict[str, bytes]) -> np.ndarray:
    """A sample's pixels, stored as PNG or as .npy."""
    return decode_png(members["png"]) if "png" in members else decode_npy(members["npy"])


def to_chw(pixels: np.ndarray) -> torch.Tensor:
    """uint8 HWC -> uint8 (C, H, W), contiguous (what the readers batch; `Batch.to` makes floats)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).contiguous()


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 HWC -> float (C, H, W) in [-0.5, 0.5]."""
    return pixels_to_model(to_chw(pixels))


def write_grid(groups: list[list[torch.Tensor]], path_stem: str) -> list[str]:
    """Groups of model-space images (C, H, W) -> `<path_stem>.png`, a row per group (written atomically)."""
    import torch

    return [write_picture(grid([to_pixels(torch.stack(list(g))) for g in groups]), f"{path_stem}.png")]


class ImageModality(Modality):
    name = "image"
    DataConfig = ImageData
    selection_metric = "val_mse"
    key_metrics = ("val_psnr", "perplexity", "codebook_usage")
    paper_references = {
        "val_bits_per_dim": "4.67 bits/dim on CIFAR-10 (8x8x10 latents, 250k steps; other data than this run's)",
        "codebook_usage": "ImageNet 128x128: 32x32 codes of K=512, 42.6x fewer bits than the pixels",
    }

    def find(self, data: ImageData) -> Listing:
        from pipeline.modalities.folders import list_class_layout

        classes, splits, skipped = list_class_layout(data.root, data.val_fraction, data.seed, is_candidate, COND)
        return Listing(splits, {COND: CondSpec("class", len(classes), tuple(classes))},
                       {"classes": classes, "image_size": data.image_size}, skipped)

    def preprocess(self, raw: bytes, item: RawItem, data: ImageData) -> tuple[np.ndarray, int, bool, str]:
        pixels, shorter = _preprocess(raw, data.image_size, data.min_source_size)
        return pixels, int(item.cond[COND]), shorter < data.image_size, data.storage

    def notes(self, example) -> list[str]:
        return [UPSAMPLED] if example[2] else []

    def to_members(self, example: tuple[np.ndarray, int, bool, str]) -> dict[str, bytes]:
        pixels, label, _, storage = example
        stored = {"png": encode_png, "npy": encode_npy}[storage](pixels)
        return {storage: stored, "cls": str(label).encode()}

    def from_members(self, members: dict[str, bytes]) -> Item:
        return Item(to_chw(decode_pixels(members)), {COND: int(members["cls"])})

    def sample_shape(self, data: ImageData) -> tuple[int, ...]:
        return (data.image_size, data.image_size)

    def build_autoencoder(self, stage1, data: ImageData, cond: dict[str, CondSpec]):
        return build_vqvae(stage1, in_channels=CHANNELS, spatial_dims=2)

    def build_prior(self, stage2, codebook_size: int, cond: dict[str, CondSpec], latent_shape=None, data=None):
        return build_pixelcnn(stage2, codebook_size, cond[COND].size if COND in cond else 0, COND)

    def val_sums(self, batch: Batch, out) -> dict[str, float]:
        return {"sq_err": (out.recon.float() - batch.x).square().sum().item(), "dims": float(batch.x.numel())}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return mse_metrics(sums)

    def write(self, groups: list[list[torch.Tensor]], path_stem: str, data: ImageData) -> list[str]:
        return write_grid(groups, path_stem)

    def make_demo(self, data: ImageData, small: bool = False) -> dict:
        from pipeline.modalities.image_demo import make_demo_data

        sizes = dict(train_per_class=12, val_per_class=4) if small else {}
        return make_demo_data(data.root, seed=data.seed, **sizes)


MODALITY = register(ImageModality())
