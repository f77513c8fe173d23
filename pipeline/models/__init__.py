"""Models: plain PyTorch modules that import nothing of the pipeline beyond this package.

The vector quantizer, the N-d VQ-VAE and the Gated PixelCNN prior; the speech VQ-VAEs (WaveNet
decoder; WORLD-frame decoder) and their code prior; the video prior. Each has a `config` dict of its constructor
arguments and `from_config`, so weights plus that dict rebuild it; an autoencoder says
`role = "autoencoder"`, a prior `role = "prior"`. Long loops (sampling, WaveNet generation) take
`track`, a function that wraps an iterable to show progress; by default they show none.
"""
from __future__ import annotations

from typing import Callable, Iterable

# (items, label, total, unit) -> the same items: how a long loop reports its progress
Track = Callable[..., Iterable]


def untracked(items: Iterable, label: str = "", total: int | None = None, unit: str = "items") -> Iterable:
    """A `Track` that shows nothing."""
    return items


def _classes() -> dict:
    from pipeline.models.pixelcnn import GatedPixelCNN
    from pipeline.models.speech import CodePrior, SpeechVQVAE
    from pipeline.models.speech_world import WorldVQVAE
    from pipeline.models.video_prior import VideoPrior
    from pipeline.models.vqvae import VQVAE

    return {cls.__name__: cls for cls in (VQVAE, GatedPixelCNN, SpeechVQVAE, WorldVQVAE, CodePrior, VideoPrior)}


def autocast_on(device):
    """The autocast the stages run models under on `device`: bf16 on a GPU (fp32 where the
    quantizer needs it: it turns autocast off around its distances), nothing on a CPU."""
    from contextlib import nullcontext

    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def runs_channels_last(model, device) -> bool:
    """Whether `model` runs channels-last on `device`: 2-D autoencoders on a GPU (1.3x the images/s
    of stage 1 and 1.2-1.3x of codes dumping on an H100 in eager mode, bench/gpu.py); nothing on
    a CPU, where it was not measured to pay."""
    return device.type == "cuda" and getattr(model, "role", "") == "autoencoder" \
        and getattr(model, "spatial_dims", 0) == 2


def __getattr__(name: str):
    # MODEL_CLASSES (class name -> class: what a logged model may be) is built on first use:
    # importing pipeline.models stays cheap.
    if name == "MODEL_CLASSES":
        return _classes()
    raise AttributeError(name)
