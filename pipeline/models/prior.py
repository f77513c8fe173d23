"""What every prior over codes shares: its output and its loss, the negative log-likelihood in
bits per code."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class PriorOutput:
    logits: torch.Tensor  # (B, codebook_size, *spatial)
    loss: torch.Tensor  # mean NLL in bits per (unmasked) code position

    def logs(self, model: nn.Module) -> dict[str, float]:
        return {"nll_bits_per_code": self.loss.item()}


def nll_bits(logits: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor | None = None,
             reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy in bits per code over the positions where mask is True."""
    nats = F.cross_entropy(logits.float(), codes, reduction="none")
    if mask is not None:
        nats = nats * mask
        count = mask.sum()
    else:
        count = torch.tensor(nats.numel(), device=nats.device)
    total = nats.sum() / math.log(2)
    return total if reduction == "sum" else total / count.clamp(min=1)
