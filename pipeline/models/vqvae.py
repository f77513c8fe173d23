"""The VQ-VAE of van den Oord et al. 2017 (arXiv 1711.00937), for 1-, 2- or 3-D data.

    model = VQVAE(in_channels=3, spatial_dims=2)       # ImageNet: 128x128 -> 32x32 codes
    out = model(x)                                      # x: (B, C, *spatial); optional cond, mask
    out.loss.backward()                                 # eq. 3: MSE + codebook + beta * commitment
    codes = model.encode(x)                             # (B, *latent_shape) int64
    x_recon = model.decode_indices(codes)

Section 4.2: the encoder is strided 4x4 convs (stride 2) and two residual blocks (ReLU, 3x3 conv,
ReLU, 1x1 conv) of 256 hidden units; the decoder mirrors it with transposed convs. The same
module works on 1-, 2- and 3-D inputs (`spatial_dims`). For video (3-D: time, height, width),
`temporal_downsamples` says how many of the strided layers also halve time; the others stride
(1, 2, 2) with a window of 3 frames. 0 is the paper's per-frame model (section 4.4: 84x84 ->
21x21 per frame): every window is one frame long, so each frame is encoded and decoded alone;
1 or 2 halve time as VideoGPT does. The model owns its loss, so training
loops and benchmarks never rebuild eq. 3. Where lengths vary, `mask` (B, *spatial) marks the real
positions: the reconstruction loss and the quantizer's statistics ignore the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.models.quantizer import VectorQuantizer, VQOutput

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_TRANSPOSE = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


@dataclass
class VQVAEOutput:
    recon: Tensor  # the reconstruction, in the input's normalised space
    loss: Tensor  # recon_loss + vq.loss: what training minimises (eq. 3)
    recon_loss: Tensor  # MSE over real positions
    vq: VQOutput

    def logs(self, model: "VQVAE") -> dict[str, float]:
        """Scalars for the training log (each a device sync: call it on log steps only)."""
        return {"loss": self.loss.item(), "recon_mse": self.recon_loss.item(), "vq_loss": self.vq.loss.item(),
                "commitment_loss": self.vq.commitment_loss.item(), "train_perplexity": self.vq.perplexity.item(),
                "train_usage": self.vq.usage.item(), "window_usage": model.vq.window_usage()}


def masked_mse(a: Tensor, b: Tensor, mask: Tensor | None) -> Tensor:
    """Mean squared error over the positions where mask (B, *spatial) is True, every channel."""
    if mask is None:
        return torch.nn.functional.mse_loss(a, b)
    weight = mask.unsqueeze(1).to(a.dtype)
    return ((a - b).square() * weight).sum() / (weight.sum() * a.shape[1]).clamp(min=1)


class ResidualBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x))))."""

    def __init__(self, conv: type[nn.Module], channels: int, res_channels: int, kernel_size=3, padding=1):
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(),
            conv(channels, res_channels, kernel_size=kernel_size, padding=padding),
            nn.ReLU(),
            conv(res_channels, channels, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class VQVAE(nn.Module):
    role = "autoencoder"  # what tracking.load_vqvae accepts

    def __init__(
        self,
        in_channels: int = 3,
        hidden: int = 256,
        res_hidden: int | None = None,
        num_res_blocks: int = 2,
        num_downsamples: int = 2,
        codebook_size: int = 512,
        code_dim: int = 64,
        beta: float = 0.25,
        ema: bool = False,
        decay: float = 0.99,
        dead_code_steps: int = 0,
        spatial_dims: int = 2,
        temporal_downsamples: int | None = None,
    ):
        super().__init__()
        if spatial_dims not in _CONV:
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
        if num_downsamples < 1:
            raise ValueError(f"num_downsamples must be >= 1, got {num_downsamples}")
        if temporal_downsamples is not None and (spatial_dims != 3 or not 0 <= temporal_downsamples <= num_downsamples):
            raise ValueError(f"temporal_downsamples is for 3-D inputs, 0 .. num_downsamples={num_downsamples}; "
                             f"got {temporal_downsamples} with spatial_dims={spatial_dims}")
        self.config: dict[str, Any] = dict(
            in_channels=in_channels, hidden=hidden, res_hidden=res_hidden,
            num_res_blocks=num_res_blocks, num_downsamples=num_downsamples,
            codebook_size=codebook_size, code_dim=code_dim, beta=beta, ema=ema, decay=decay,
            dead_code_steps=dead_code_steps, spatial_dims=spatial_dims,
        )  # fmt: skip
        if temporal_downsamples is not None:  # absent from the configs of 1-/2-D models
            self.config["temporal_downsamples"] = temporal_downsamples
        self.spatial_dims, self.num_downsamples = spatial_dims, num_downsamples
        # Per strided layer, the factor of each spatial dim: 2 everywhere, except time (the
        # first of 3) after its `temporal_downsamples` layers.
        temporal = num_downsamples if temporal_downsamples is None else temporal_downsamples
        self.strides = [tuple(1 if (d == 0 and spatial_dims == 3 and i >= temporal) else 2 for d in range(spatial_dims))
                        for i in range(num_downsamples)]

        # temporal_downsamples=0 is the paper's per-frame model: every conv has a window of one
        # frame, so a frame's codes depend on that frame alone (and decode to it alone); otherwise
        # the time-keeping layers see 3 frames.
        frame_window = 1 if spatial_dims == 3 and temporal_downsamples == 0 else 3
        k3 = (frame_window, 3, 3) if spatial_dims == 3 else 3
        p1 = (frame_window // 2, 1, 1) if spatial_dims == 3 else 1

        def strided(layer, c_in: int, c_out: int, stride: tuple[int, ...]) -> nn.Module:
            # stride 2: window 4, padding 1 (halves); stride 1: window 3 (or 1), padding 1 (or 0): keeps
            window = tuple(4 if s == 2 else (frame_window if d == 0 else 3) for d, s in enumerate(stride))
            return layer(c_in, c_out, window, stride=stride, padding=tuple((w - 1) // 2 if w != 4 else 1 for w in window))

        conv, conv_t = _CONV[spatial_dims], _CONV_TRANSPOSE[spatial_dims]
        res_hidden = hidden if res_hidden is None else res_hidden  # the paper: all 256

        encoder: list[nn.Module] = []
        for i in range(num_downsamples):
            if i > 0:
                encoder.append(nn.ReLU())
            encoder.append(strided(conv, in_channels if i == 0 else hidden, hidden, self.strides[i]))
        encoder += [ResidualBlock(conv, hidden, res_hidden, k3, p1) for _ in range(num_res_blocks)]
        encoder += [nn.ReLU(), conv(hidden, code_dim, kernel_size=1)]
        self.encoder = nn.Sequential(*encoder)

        self.vq = VectorQuantizer(
            codebook_size, code_dim, beta=beta, ema=ema, decay=decay,
            dead_code_steps=dead_code_steps,
        )  # fmt: skip

        decoder: list[nn.Module] = [conv(code_dim, hidden, kernel_size=k3, padding=p1)]
        decoder += [ResidualBlock(conv, hidden, res_hidden, k3, p1) for _ in range(num_res_blocks)]
        decoder.append(nn.ReLU())
        for i in range(num_downsamples):
            last = i == num_downsamples - 1
            decoder.append(strided(conv_t, hidden, in_channels if last else hidden, self.strides[-1 - i]))
            if not last:
                decoder.append(nn.ReLU())
        # No output activation: the reconstruction lives in the input's normalised space.
        self.decoder = nn.Sequential(*decoder)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> VQVAE:
        return cls(**config)

    def latent_shape(self, input_shape: tuple[int, ...] | list[int]) -> tuple[int, ...]:
        """Latent grid for an input of spatial shape `input_shape` (no batch or channel dim)."""
        if len(input_shape) != self.spatial_dims:
            raise ValueError(f"expected {self.spatial_dims} spatial sizes, got {input_shape}")
        shape = tuple(input_shape)
        for stride in self.strides:  # k=4, s=2, p=1 halves; k=3, s=1, p=1 keeps
            shape = tuple((size + 2 * 1 - 4) // 2 + 1 if s == 2 else size for size, s in zip(shape, stride))
        if min(shape) < 1:
            raise ValueError(
                f"input {tuple(input_shape)} is too small for {self.num_downsamples} downsamplings"
            )
        return shape

    @property
    def input_dims_per_code(self) -> int:
        """Input dimensions (channels x positions) that one latent code stands for."""
        return self.config["in_channels"] * 2 ** sum(s == 2 for stride in self.strides for s in stride)

    def latent_mask(self, mask: Tensor | None, latent: tuple[int, ...]) -> Tensor | None:
        """The input mask at the latents' resolution: a code is real when its first input is."""
        if mask is None:
            return None
        steps = [2 ** sum(stride[d] == 2 for stride in self.strides) for d in range(self.spatial_dims)]
        return mask[(slice(None), *(slice(0, n * step, step) for n, step in zip(latent, steps)))]

    def forward(self, x: Tensor, cond: dict[str, Tensor] | None = None, mask: Tensor | None = None) -> VQVAEOutput:
        """`cond` is accepted for a common signature with conditional decoders and not used."""
        z_e = self.encoder(x)
        vq_out = self.vq(z_e, self.latent_mask(mask, tuple(z_e.shape[2:])))
        recon = self.decoder(vq_out.quantized)
        recon_loss = masked_mse(recon.float(), x.float(), mask)
        return VQVAEOutput(recon, recon_loss + vq_out.loss, recon_loss, vq_out)

    @torch.no_grad()
    def encode(self, x: Tensor, cond: dict[str, Tensor] | None = None) -> Tensor:
        """Code indices (B, *latent_shape); never updates the codebook, even in training mode."""
        return self.vq.nearest(self.encoder(x))

    @torch.no_grad()
    def decode_indices(self, indices: Tensor, cond: dict[str, Tensor] | None = None) -> Tensor:
        return self.decoder(self.vq.embed(indices))

    @torch.no_grad()
    def reconstruct(self, x: Tensor, cond: dict[str, Tensor] | None = None, mask: Tensor | None = None,
                    generator: torch.Generator | None = None) -> Tensor:
        """x through the codes and back, never touching the codebook (`generator` is for
        decoders that sample)."""
        return self.decode_indices(self.encode(x, cond), cond)
