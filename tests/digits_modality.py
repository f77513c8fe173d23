"""A modality defined only here, to prove that a new kind of data is one file: 16x16 grey digits
(scikit-learn's bundled 8x8 digits, each pixel repeated 2x2), in `<root>/{train,val}/*.npy`,
stored under another tar schema (`<key>.gray.npy`, no class member) and modelled with no
conditioning at all. Jobs name it `data.modality: digits_modality:MODALITY`, with this folder on
PYTHONPATH (Ray workers import it too).
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pydantic import Field

from pipeline.errors import UserError
from pipeline.models.metrics import gaussian_bits_per_dim, psnr
from pipeline.modalities import Batch, CondSpec, DataSection, Item, Listing, Modality, RawItem, SkipSample
from pipeline.modalities.common import build_pixelcnn, build_vqvae

MEMBER = "gray.npy"


class DigitsData(DataSection):
    size: int = Field(16, ge=8)  # 8x8 digits, each pixel repeated size/8 times per side


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


class Digits(Modality):
    name = "digits"
    DataConfig = DigitsData
    selection_metric = "val_mse"
    key_metrics = ("val_psnr", "perplexity")

    def find(self, data: DigitsData) -> Listing:
        root = Path(data.root)
        if not (root / "train").is_dir():
            raise UserError(f"data.root has no train/ folder of .npy digits: {root}")
        splits = {split: [RawItem(key=p.stem, path=str(p)) for p in sorted((root / split).glob("*.npy"))]
                  for split in ("train", "val")}
        return Listing(splits, cond={}, manifest={"size": data.size})

    def preprocess(self, raw: bytes, item: RawItem, data: DigitsData) -> np.ndarray:
        try:
            digit = np.load(io.BytesIO(raw), allow_pickle=False)
        except (ValueError, OSError) as e:
            raise SkipSample(f"not a .npy array: {e}") from None
        if digit.shape != (8, 8):
            raise SkipSample(f"expected an 8x8 digit, got {digit.shape}")
        scale = data.size // 8
        return (np.kron(digit, np.ones((scale, scale))) * (255 / 16)).round().astype(np.uint8)

    def to_members(self, example: np.ndarray) -> dict[str, bytes]:
        return {MEMBER: _npy(example)}

    def from_members(self, members: dict[str, bytes]) -> Item:
        pixels = np.load(io.BytesIO(members[MEMBER]), allow_pickle=False)
        return Item(torch.from_numpy(pixels).float().div(255).sub(0.5)[None])

    def sample_shape(self, data: DigitsData) -> tuple[int, ...]:
        return (data.size, data.size)

    # the paper's VQ-VAE and the Gated PixelCNN, with their settings (the default `stage1:` and
    # `stage2:` sections of a modality)
    def build_autoencoder(self, stage1, data: DigitsData, cond):
        return build_vqvae(stage1, in_channels=1, spatial_dims=2)

    def build_prior(self, stage2, codebook_size: int, cond: dict[str, CondSpec], latent_shape=None, data=None):
        return build_pixelcnn(stage2, codebook_size)

    def val_sums(self, batch: Batch, out) -> dict[str, float]:
        recon = out.recon
        return {"sq_err": (recon.float() - batch.x).square().sum().item(), "dims": float(batch.x.numel())}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        mse = sums["sq_err"] / sums["dims"]
        return {"val_mse": mse, "val_psnr": psnr(mse), "val_recon_bits_per_dim": gaussian_bits_per_dim(mse)}

    def write(self, groups: list[list[torch.Tensor]], path_stem: str, data) -> list[str]:
        rows = [torch.cat(list(g), dim=2)[0] for g in groups]  # each group side by side, groups stacked
        pixels = torch.cat(rows, dim=0).add(0.5).clamp(0, 1).mul(255).round().byte().numpy()
        path, tmp = f"{path_stem}.png", f"{path_stem}.tmp.png"
        Image.fromarray(pixels, mode="L").save(tmp)
        os.replace(tmp, path)
        return [path]

    def make_demo(self, data: DigitsData, small: bool = False) -> dict:
        from sklearn.datasets import load_digits

        root = Path(data.root)
        if (root / "train").is_dir():
            return {"out": str(root), "created": False}
        images = load_digits().images  # 1797 real handwritten digits, 0..16
        order = np.random.default_rng(data.seed).permutation(len(images))[:360]
        for i, index in enumerate(order):
            folder = root / ("val" if i % 6 == 0 else "train")
            folder.mkdir(parents=True, exist_ok=True)
            np.save(folder / f"digit_{index:04d}.npy", images[index])
        return {"out": str(root), "created": True, "train": 300, "val": 60}


MODALITY = Digits()
