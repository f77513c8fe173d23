"""Models: the vector quantizer, the N-d VQ-VAE and the Gated PixelCNN prior, shared by every
modality; a modality may add its own classes (pipeline.modalities.Modality.model_classes)."""
from __future__ import annotations


def _shared_classes() -> dict:
    from pipeline.models.pixelcnn import GatedPixelCNN
    from pipeline.models.vqvae import VQVAE

    return {"VQVAE": VQVAE, "GatedPixelCNN": GatedPixelCNN}


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
    # MODEL_CLASSES is built on first use: importing pipeline.models stays cheap.
    if name == "MODEL_CLASSES":
        return _shared_classes()
    raise AttributeError(name)
