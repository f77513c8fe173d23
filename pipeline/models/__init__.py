"""Models: the vector quantizer, the N-d VQ-VAE and the Gated PixelCNN prior, shared by every
modality; a modality may add its own classes (pipeline.modalities.Modality.model_classes)."""
from __future__ import annotations


def _shared_classes() -> dict:
    from pipeline.models.pixelcnn import GatedPixelCNN
    from pipeline.models.vqvae import VQVAE

    return {"VQVAE": VQVAE, "GatedPixelCNN": GatedPixelCNN}


def __getattr__(name: str):
    # MODEL_CLASSES is built on first use: importing pipeline.models stays cheap.
    if name == "MODEL_CLASSES":
        return _shared_classes()
    raise AttributeError(name)
