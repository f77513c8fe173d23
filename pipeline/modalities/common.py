"""What several modalities share, one copy each: the seeded val split, sample keys, the square
resize-and-crop, model-space pixels, the MSE metrics, the shared models' settings sections and
their builders, and the default sampling (`sample.per_class` per class)."""
from __future__ import annotations

import random
import re
from typing import TYPE_CHECKING, Annotated, Sequence, TypeVar

import numpy as np
from pydantic import AfterValidator, Field

from pipeline.errors import UserError
from pipeline.formats import cond_specs
from pipeline.sections import Section, Stage1Section, Stage2Section

if TYPE_CHECKING:
    import torch
    from PIL import Image

T = TypeVar("T")

# ---- listings ---------------------------------------------------------------------------------------


def hold_out(items: Sequence[T], fraction: float, rng: random.Random, at_least_one: bool = False) -> tuple[list[T], list[T]]:
    """(val, train) of one group of inputs (a class's, a speaker's): a seeded `fraction` of them
    held out, both in the order given. A group of one is all train; `at_least_one`: every group
    of two or more gives at least one (speech scores conversion on every speaker's val)."""
    order = list(range(len(items)))
    rng.shuffle(order)
    n_val = round(len(items) * fraction)
    if at_least_one:
        n_val = max(1, n_val)
    held = set(order[:n_val]) if len(items) > 1 else set()
    return [it for i, it in enumerate(items) if i in held], [it for i, it in enumerate(items) if i not in held]


def sample_key(text: str) -> str:
    """A sample key from a name: every character but letters, digits, _ and - becomes _ (keys
    hold no dots: webdataset splits a member's name at the first)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def stem(path: str) -> str:
    """A file's name without its folder and its last extension."""
    return path.rsplit("/", 1)[-1].rsplit(".", 1)[0]


# ---- pixels --------------------------------------------------------------------------------------------


def square(img: Image.Image, size: int) -> Image.Image:
    """The shorter side resized to `size` (bicubic, antialiased), then the centre square."""
    from PIL import Image

    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


def to_pixels(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) or (B, C, H, W) model-space tensor ([-0.5, 0.5]) -> uint8 HWC / BHWC."""
    x = x.detach().float().cpu().add(0.5).clamp_(0, 1).mul_(255).round_().byte()
    return (x.permute(0, 2, 3, 1) if x.dim() == 4 else x.permute(1, 2, 0)).numpy()


def mse_metrics(sums: dict[str, float]) -> dict[str, float]:
    """val_mse, val_psnr and the paper's bits/dim bound of an MSE decoder on [0, 1] pixels, from
    summed `sq_err`, `dims` and `latent_bits`."""
    from pipeline.models.metrics import gaussian_bits_per_dim, psnr

    mse = sums["sq_err"] / sums["dims"]
    recon_bits = gaussian_bits_per_dim(mse)
    return {
        "val_mse": mse,
        "val_psnr": psnr(mse),
        "val_recon_bits_per_dim": recon_bits,
        # decoder NLL + log2 K per latent (uniform prior, KL = log K), per input dimension
        "val_bits_per_dim": recon_bits + sums["latent_bits"] / sums["dims"],
    }


# ---- the shared models' settings ------------------------------------------------------------------------


class QuantizerSettings(Section):
    """The vector quantizer of every VQ-VAE: K codes of `code_dim`, the commitment cost `beta`,
    the EMA codebook (the paper's appendix) and restarts of codes unused for `dead_code_steps`."""
    codebook_size: int = Field(512, ge=2)
    code_dim: int = Field(64, ge=1)
    beta: float = Field(0.25, ge=0)
    ema: bool = False
    decay: float = Field(0.99, gt=0, lt=1)
    dead_code_steps: int = Field(0, ge=0)


class VQVAESettings(QuantizerSettings):
    """The paper's VQ-VAE (pipeline.models.vqvae): strided 4x4 convs, residual blocks, `hidden` wide."""
    hidden: int = Field(256, ge=1)
    num_res_blocks: int = Field(2, ge=0)
    num_downsamples: int = Field(2, ge=1)


def _odd(value: int) -> int:
    if value % 2 == 0:
        raise ValueError(f"must be odd, got {value}")
    return value


OddKernel = Annotated[int, AfterValidator(_odd)]  # a kernel centred on its position


class PixelCNNSettings(Section):
    """The Gated PixelCNN prior (pipeline.models.pixelcnn)."""
    hidden: int = Field(64, ge=1)
    num_layers: int = Field(8, ge=1)
    kernel_size: OddKernel = Field(5, ge=3)


class VQVAEStage1(VQVAESettings, Stage1Section):
    """`stage1:` of a modality that trains the paper's VQ-VAE."""


class PixelCNNStage2(PixelCNNSettings, Stage2Section):
    """`stage2:` of a modality whose prior is the Gated PixelCNN."""


def build_vqvae(s: VQVAESettings, in_channels: int, spatial_dims: int, **extra) -> torch.nn.Module:
    """The paper's VQ-VAE from its settings; `extra`: constructor arguments beyond them."""
    from pipeline.models.vqvae import VQVAE

    return VQVAE(in_channels=in_channels, spatial_dims=spatial_dims, hidden=s.hidden,
                 num_res_blocks=s.num_res_blocks, num_downsamples=s.num_downsamples,
                 codebook_size=s.codebook_size, code_dim=s.code_dim, beta=s.beta, ema=s.ema, decay=s.decay,
                 dead_code_steps=s.dead_code_steps, **extra)


def build_pixelcnn(s: PixelCNNSettings, codebook_size: int, num_classes: int = 0,
                   cond_key: str = "labels") -> torch.nn.Module:
    from pipeline.models.pixelcnn import GatedPixelCNN

    return GatedPixelCNN(codebook_size=codebook_size, num_classes=num_classes, cond_key=cond_key, hidden=s.hidden,
                         num_layers=s.num_layers, kernel_size=s.kernel_size)


# ---- sampling ---------------------------------------------------------------------------------------------


def sampling_plan(cond: dict, per_class: int):
    """-> (cond tensors for one batch, number of samples, group sizes): `per_class` samples of
    every id of the first class-like conditioning, else `per_class` unconditional ones."""
    import torch

    classes = next(((k, spec) for k, spec in cond.items() if spec.kind == "class" and spec.size), None)
    if classes is None:
        return None, per_class, [per_class]
    key, spec = classes
    return {key: torch.arange(spec.size).repeat_interleave(per_class)}, spec.size * per_class, [per_class] * spec.size


def draw_per_class(modality, prior, vqvae, meta: dict, data, sample, device, stem: str) -> list[str]:
    """`sample.per_class` code arrays per class (or unconditional ones), drawn in one batch,
    decoded and written by the modality a group per class; -> the files, the main one first."""
    import torch

    from pipeline import progress

    shape = meta.get("latent_shape")
    if not shape:  # codes of varying shape (utterances): the modality says how long a sample is
        shape = modality.sample_latent_shape(data, sample, vqvae.input_dims_per_code)
    if not shape:
        raise UserError("the prior's codes vary in shape and its config.json gives no latent_shape to sample")
    cond, count, groups = sampling_plan(cond_specs(meta.get("cond")), sample.per_class)
    generator = torch.Generator().manual_seed(sample.seed)
    codes = prior.sample(cond, shape=tuple(shape), temperature=sample.temperature, generator=generator,
                         num_samples=count, track=progress.track)
    torch.manual_seed(sample.seed)  # decoders that sample (WaveNet) draw from the global generator
    with torch.no_grad():
        cond_dev = None if cond is None else {k: v.to(device) for k, v in cond.items()}
        x = vqvae.decode_indices(codes.to(device), cond_dev, **modality.decoder_options(sample)).float().cpu()
    bounds = [sum(groups[:i]) for i in range(len(groups) + 1)]
    rows = [list(x[bounds[i]:bounds[i + 1]]) for i in range(len(groups))]
    return modality.write(rows, stem, data)
