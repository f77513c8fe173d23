"""Gated PixelCNN prior over discrete VQ-VAE code grids.

van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders" (arXiv 1606.05328),
the prior of the VQ-VAE paper (arXiv 1711.00937, section 4.2):

    prior = GatedPixelCNN(codebook_size=512, num_classes=10)   # class ids come as cond["labels"]
    out = prior(codes, {"labels": labels})       # codes (B, H, W) int64
    out.logits                                   # (B, codebook_size, H, W)
    out.loss.backward()                          # NLL in bits per code (cross-entropy / ln 2)
    codes = prior.sample({"labels": labels}, shape=(32, 32))   # ancestral, raster order

Positions are ordered in raster order (row by row, left to right); the logits at a position depend
only on the codes strictly before it. The class embedding conditions every layer (paper, eq. 4).
The model owns its loss; `mask` (B, H, W) leaves padded positions out of it.

This is the 2-D prior (code grids of images). The embedding, conditioning, head, loss and sampling
loop do not depend on the number of dimensions, but the gated layers are 2-D only.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models import Track, untracked
from pipeline.models.prior import PriorOutput, nll_bits


def exists(x: Any) -> bool:
    return x is not None


def default(x: Any, d: Any) -> Any:
    return x if exists(x) else d


def gate(x: torch.Tensor) -> torch.Tensor:
    """tanh(W_f * x) * sigmoid(W_g * x) over the two halves of the channels (paper, eq. 2)."""
    f, g = x.chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


class GatedLayer2d(nn.Module):
    """One layer of the vertical and horizontal stacks (paper, figure 2).

    The vertical stack at row i sees rows <= i (a (k//2+1, k) conv over a top-padded input); it is
    shifted down one row before it feeds the horizontal stack, so that the horizontal stack at (i, j)
    sees every row above in full (no blind spot, paper section 2.2) and, through its own (1, k//2+1)
    conv, its row up to column j: strictly before j in the first layer (mask 'A'), up to and including
    j later (mask 'B', where position j already holds only information from before it).
    """

    def __init__(self, in_channels: int, hidden: int, kernel_size: int, mask_type: str):
        super().__init__()
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
        self.mask_type = mask_type
        self.half = kernel_size // 2
        self.vertical = nn.Conv2d(in_channels, 2 * hidden, (self.half + 1, kernel_size))
        self.horizontal = nn.Conv2d(in_channels, 2 * hidden, (1, self.half + 1))
        self.vertical_to_horizontal = nn.Conv2d(2 * hidden, 2 * hidden, 1)
        self.horizontal_residual = nn.Conv2d(hidden, hidden, 1)
        # A mask, not a smaller kernel, so that 'A' and 'B' layers share one shape; not persistent
        # because it follows from mask_type (state dicts hold only learnt weights).
        mask = torch.ones(1, 1, 1, self.half + 1)
        if mask_type == "A":
            mask[..., -1] = 0.0  # the first layer must not see the code it predicts
        self.register_buffer("horizontal_mask", mask, persistent=False)

    def forward(
        self, v: torch.Tensor, h: torch.Tensor, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.half
        v_pre = self.vertical(F.pad(v, (k, k, k, 0)))  # row i <- rows i-k..i
        h_pre = F.conv2d(
            F.pad(h, (k, 0, 0, 0)),  # column j <- columns j-k..j (j itself masked in 'A')
            self.horizontal.weight * self.horizontal_mask,
            self.horizontal.bias,
        )
        # Down-shift: row i of the horizontal stack gets the vertical stack of row i-1.
        v_shifted = F.pad(v_pre, (0, 0, 1, 0))[:, :, :-1]
        h_pre = h_pre + self.vertical_to_horizontal(v_shifted)
        if exists(cond):
            v_pre, h_pre = v_pre + cond, h_pre + cond
        h_out = self.horizontal_residual(gate(h_pre))
        # No residual in the 'A' layer: its input holds the very code being predicted.
        if self.mask_type == "B":
            h_out = h_out + h
        return gate(v_pre), h_out


class GatedPixelCNN(nn.Module):
    """Gated PixelCNN over code grids of shape (B, H, W), conditioned on one class id per sample
    (`cond[cond_key]`, when num_classes > 0)."""

    role = "prior"  # what tracking.load_prior accepts
    spatial_dims = 2
    layer_cls = GatedLayer2d
    pointwise_conv = nn.Conv2d

    def __init__(
        self,
        codebook_size: int = 512,
        num_classes: int = 10,
        hidden: int = 64,
        num_layers: int = 8,
        kernel_size: int = 5,
        embed_dim: int | None = None,
        cond_key: str = "labels",
    ):
        super().__init__()
        if codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2, got {codebook_size}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        if hidden < 1 or num_layers < 1:
            raise ValueError(f"hidden and num_layers must be >= 1, got {hidden}, {num_layers}")
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 3, got {kernel_size}")
        if exists(embed_dim) and embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1 or None, got {embed_dim}")
        self._config = dict(
            codebook_size=codebook_size,
            num_classes=num_classes,
            hidden=hidden,
            num_layers=num_layers,
            kernel_size=kernel_size,
            embed_dim=embed_dim,
            cond_key=cond_key,
        )
        self.codebook_size = codebook_size
        self.num_classes = num_classes
        self.cond_key = cond_key
        embed_dim = default(embed_dim, hidden)

        self.code_embedding = nn.Embedding(codebook_size, embed_dim)
        self.class_embedding = None
        self.class_projections = None
        if num_classes > 0:
            # h of eq. 4: one learnt vector per class, projected per layer (V_f h, V_g h).
            self.class_embedding = nn.Embedding(num_classes, 2 * hidden)
            self.class_projections = nn.ModuleList(
                nn.Linear(2 * hidden, 2 * hidden, bias=False) for _ in range(num_layers)
            )
        self.layers = nn.ModuleList(
            self.layer_cls(embed_dim if i == 0 else hidden, hidden, kernel_size, "A" if i == 0 else "B")
            for i in range(num_layers)
        )
        self.head = nn.Sequential(
            nn.ReLU(),
            self.pointwise_conv(hidden, hidden, 1),
            nn.ReLU(),
            self.pointwise_conv(hidden, codebook_size, 1),
        )

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments, JSON-serialisable: weights + this dict rebuild the model."""
        return dict(self._config)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "GatedPixelCNN":
        return cls(**config)

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, *spatial) int64 -> (B, embed_dim, *spatial), channels first."""
        if codes.dim() != self.spatial_dims + 1:
            raise ValueError(
                f"codes must have shape (B, {self.spatial_dims} spatial dims), got {tuple(codes.shape)}"
            )
        return self.code_embedding(codes).movedim(-1, 1).contiguous()  # channels-last grads upset DDP buckets

    def _labels(self, cond: dict[str, torch.Tensor] | None) -> torch.Tensor | None:
        if not self.conditional or not cond:
            return None
        return cond.get(self.cond_key)

    def forward_embedded(self, x: torch.Tensor, cond: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Logits from already embedded codes (B, embed_dim, *spatial); a leaf x lets tests read
        the receptive field from gradients."""
        class_vec = None
        labels = self._labels(cond)
        if exists(labels):
            class_vec = self.class_embedding(labels.to(x.device))
        v = h = x
        for i, layer in enumerate(self.layers):
            cond = None
            if exists(class_vec):
                cond = self.class_projections[i](class_vec).view(*class_vec.shape, *(1,) * self.spatial_dims)
            v, h = layer(v, h, cond)
        return self.head(h)

    def logits(self, codes: torch.Tensor, cond: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """codes (B, *spatial) int64 -> logits (B, codebook_size, *spatial). The class ids in
        cond are ignored by an unconditional model (num_classes=0)."""
        return self.forward_embedded(self.embed(codes), cond)

    def forward(self, codes: torch.Tensor, cond: dict[str, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None) -> PriorOutput:
        logits = self.logits(codes, cond)
        return PriorOutput(logits, nll_bits(logits, codes, mask))

    @torch.no_grad()
    def sample(
        self,
        cond: dict[str, torch.Tensor] | None = None,
        shape: tuple[int, ...] = (8, 8),
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        num_samples: int | None = None,
        track: Track = untracked,
    ) -> torch.Tensor:
        """Ancestral sampling in raster order, the whole batch at once: one forward per position.

        cond {cond_key: (B,) int64}, or None with num_samples for unconditional samples -> codes
        (B, *shape) int64. The draw uses the generator's device, so a seeded CPU generator gives the
        same codes whatever device the model is on. `track` wraps the positions (a progress bar).
        """
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        shape = tuple(shape)
        if len(shape) != self.spatial_dims:
            raise ValueError(f"shape must have {self.spatial_dims} dims, got {shape}")
        labels = self._labels(cond)
        if not exists(labels) and not exists(num_samples):
            raise ValueError("give class ids in cond or num_samples")
        device = self.code_embedding.weight.device
        batch = labels.shape[0] if exists(labels) else num_samples
        cond = {self.cond_key: labels.to(device)} if exists(labels) else None
        codes = torch.zeros(batch, *shape, dtype=torch.long, device=device)

        was_training = self.training
        self.eval()
        try:
            # One forward per position keeps one code path with forward(). The logits at a
            # position depend only on the codes before it in raster order, so the forward runs on
            # the grid up to the position's first coordinate (its row): the same logits for half
            # the work on average. Caching per-layer states would be the next speed-up.
            positions = itertools.product(*(range(n) for n in shape))
            for position in track(positions, "sampling", math.prod(shape), "positions"):
                seen = codes[:, : position[0] + 1]
                logits = self.logits(seen, cond)[(slice(None), slice(None), *position)]
                probs = F.softmax(logits.float() / temperature, dim=-1)
                if exists(generator):
                    probs = probs.to(generator.device)
                drawn = torch.multinomial(probs, 1, generator=generator).squeeze(1)
                codes[(slice(None), *position)] = drawn.to(device)
        finally:
            self.train(was_training)
        return codes
