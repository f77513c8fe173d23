"""Forward + backward time of the vector quantizer against a naive cdist + argmin one.

    python bench/vq.py            # cuda when available, else cpu

32768 vectors (a batch of 32 latent grids of 32x32, the paper's ImageNet latents), K=512, D=64.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.models.quantizer import VectorQuantizer  # noqa: E402

BATCH, GRID, K, D = 32, 32, 512, 64
WARMUP, RUNS = 5, 15


class NaiveQuantizer(nn.Module):
    """The textbook version: torch.cdist + argmin, one-hot matmuls for the EMA statistics."""

    def __init__(self, codebook_size: int, dim: int, beta: float = 0.25, ema: bool = False):
        super().__init__()
        self.beta, self.ema, self.decay, self.eps = beta, ema, 0.99, 1e-5
        codebook = torch.empty(codebook_size, dim).uniform_(-1 / codebook_size, 1 / codebook_size)
        if ema:
            self.register_buffer("codebook", codebook)
            self.register_buffer("ema_count", torch.ones(codebook_size))
            self.register_buffer("ema_sum", codebook.clone())
        else:
            self.codebook = nn.Parameter(codebook)

    def forward(self, z_e: Tensor) -> tuple[Tensor, Tensor]:
        flat = z_e.movedim(1, -1).reshape(-1, z_e.shape[1])
        indices = torch.cdist(flat, self.codebook).argmin(1)
        z_q = self.codebook[indices]
        loss = self.beta * F.mse_loss(flat, z_q.detach())
        if self.ema:
            with torch.no_grad():
                one_hot = F.one_hot(indices, self.codebook.shape[0]).float()
                self.ema_count.mul_(self.decay).add_(one_hot.sum(0), alpha=1 - self.decay)
                self.ema_sum.mul_(self.decay).add_(one_hot.t() @ flat, alpha=1 - self.decay)
                n = self.ema_count.sum()
                smoothed = (self.ema_count + self.eps) / (n + len(self.ema_count) * self.eps) * n
                self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(1))
        else:
            loss = loss + F.mse_loss(z_q, flat.detach())
        quantized = flat + (z_q - flat).detach()
        return quantized.view(z_e.shape[0], *z_e.shape[2:], -1).movedim(-1, 1), loss


def make_step(quantizer: nn.Module, z_e: Tensor):
    def step() -> None:
        out = quantizer(z_e)
        quantized, loss = (out.quantized, out.loss) if hasattr(out, "quantized") else out
        (quantized.square().mean() + loss).backward()
        z_e.grad = None
        for p in quantizer.parameters():
            p.grad = None

    return step


def main() -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    z_e = torch.randn(BATCH, D, GRID, GRID, device=device, requires_grad=True)
    steps = {
        (kind, ema): make_step(cls(K, D, ema=ema).to(device).train(), z_e)
        for kind, cls in (("this", VectorQuantizer), ("naive", NaiveQuantizer))
        for ema in (False, True)
    }
    for step in steps.values():
        for _ in range(WARMUP):
            step()
    # Round-robin, so that a slow spell of the machine hits every variant alike.
    times: dict[tuple[str, bool], list[float]] = {key: [] for key in steps}
    for _ in range(RUNS):
        for key, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[key].append(1000 * (time.perf_counter() - start))
    ms = {key: statistics.median(t) for key, t in times.items()}

    where = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"vector quantizer, forward+backward, {BATCH * GRID * GRID} vectors, K={K}, D={D}")
    print(f"device: {where}, {torch.get_num_threads()} cpu threads; torch {torch.__version__}; "
          f"median of {RUNS} runs after {WARMUP} warm-up\n")  # fmt: skip
    print(f"{'variant':<10}{'this (ms)':>12}{'naive (ms)':>12}{'speed-up':>10}")
    for ema in (False, True):
        ours, naive = ms[("this", ema)], ms[("naive", ema)]
        print(f"{'ema' if ema else 'gradient':<10}{ours:>12.2f}{naive:>12.2f}{naive / ours:>9.2f}x")


if __name__ == "__main__":
    main()
