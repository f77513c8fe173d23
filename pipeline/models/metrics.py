"""The paper's scores, as plain formulas (each pinned by a test)."""
from __future__ import annotations

import math


def gaussian_bits_per_dim(mse01: float, levels: int = 256) -> float:
    """-log2 p(x|z) per dim of a decoder that is a Gaussian with the MSE as variance, discretised
    to `levels` bins on [0, 1]: 0.5 log2(2 pi e sigma^2) + log2(levels). Valid while sigma >> 1/levels."""
    return 0.5 * math.log2(2 * math.pi * math.e * max(mse01, 1e-12)) + math.log2(levels)


def psnr(mse01: float) -> float:
    """Peak signal-to-noise ratio in dB of signals in [0, 1] (peak 1): 10 log10(1 / MSE)."""
    return 10 * math.log10(1.0 / max(mse01, 1e-12))


def perplexity(counts) -> float:
    """exp(entropy) of a code histogram: K when every code is used equally, 1 for one code."""
    import torch

    counts = torch.as_tensor(counts, dtype=torch.float64)
    p = counts[counts > 0] / counts.sum()
    return math.exp(-(p * p.log()).sum().item()) if len(p) else 0.0
