"""Vector quantizer of the VQ-VAE (van den Oord et al. 2017, arXiv 1711.00937).

    vq = VectorQuantizer(codebook_size=512, dim=64, beta=0.25, ema=True)
    out = vq(z_e, mask)      # z_e: (B, dim, *spatial), 1, 2 or 3 spatial dims; mask (B, *spatial) or None
    out.quantized, out.indices, out.loss, out.perplexity

Gradient variant: the codebook is an nn.Parameter trained by the codebook loss (eq. 3, second
term). EMA variant (appendix A.1): the codebook is a buffer updated by exponential moving
averages, and only the commitment loss reaches the encoder. Under DDP the EMA statistics are
all-reduced and dead-code restarts broadcast from rank 0, so every rank keeps a bitwise
identical codebook. Positions where `mask` is False (the padding of shorter sequences in a batch)
take no part in the losses, the EMA statistics, usage, perplexity or restarts.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class VQOutput:
    quantized: Tensor  # z_q with the straight-through gradient, shape and dtype of z_e
    indices: Tensor  # (B, *spatial) int64
    loss: Tensor  # codebook_loss + beta * commitment_loss (the VQ terms of eq. 3)
    commitment_loss: Tensor  # ||z_e - sg[e]||^2, mean over (unmasked) elements
    codebook_loss: Tensor  # ||sg[z_e] - e||^2, mean over (unmasked) elements; 0 with ema
    perplexity: Tensor  # exp(entropy) of the batch code histogram
    usage: Tensor  # fraction of the K codes used in the batch


@contextlib.contextmanager
def _full_fp32_matmul(t: Tensor):
    """TF32 off for the distance matmul on cuda, even where a user turned it on for speed: with
    10-bit mantissas, codes a few hundredths apart (a trained codebook) swap places."""
    if not t.is_cuda or not torch.backends.cuda.matmul.allow_tf32:
        yield
        return
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = True


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class VectorQuantizer(nn.Module):
    def __init__(
        self,
        codebook_size: int = 512,
        dim: int = 64,
        beta: float = 0.25,
        ema: bool = False,
        decay: float = 0.99,
        eps: float = 1e-5,
        dead_code_steps: int = 0,
        usage_window: int = 100,
    ):
        super().__init__()
        self.codebook_size, self.dim, self.beta = codebook_size, dim, beta
        self.ema, self.decay, self.eps = ema, decay, eps
        self.dead_code_steps, self.usage_window = dead_code_steps, usage_window

        codebook = torch.empty(codebook_size, dim).uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
        if ema:
            self.register_buffer("embedding", codebook)
            # N_i starts at 1 and m_i at e_i, so that e_i = m_i / N_i holds from the first step.
            self.register_buffer("ema_count", torch.ones(codebook_size))
            self.register_buffer("ema_sum", codebook.clone())
        else:
            self.embedding = nn.Parameter(codebook)
        # Training steps seen, and the step at which each code was last chosen (0: never).
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("last_used", torch.zeros(codebook_size, dtype=torch.long))
        self.register_buffer("last_restart", torch.zeros(codebook_size, dtype=torch.long))

    @property
    def codebook(self) -> Tensor:
        return self.embedding

    def extra_repr(self) -> str:
        return (
            f"codebook_size={self.codebook_size}, dim={self.dim}, beta={self.beta}, ema={self.ema}, "
            f"dead_code_steps={self.dead_code_steps}"
        )

    # ---- lookups (no side effects) -------------------------------------------------------

    def _nearest_flat(self, flat: Tensor) -> Tensor:
        """argmin_j ||z - e_j||^2 for (N, dim) fp32 rows, with one matmul and no (N, K, D) tensor.

        ||z||^2 is the same for every code of a row, so it is left out of the argmin."""
        codebook = self.embedding.detach().float()
        with _full_fp32_matmul(flat):
            distances = torch.addmm((codebook * codebook).sum(1), flat, codebook.t(), alpha=-2.0)
        return distances.argmin(dim=1)

    @torch.no_grad()
    def nearest(self, z_e: Tensor) -> Tensor:
        """Indices (B, *spatial) of the nearest codes, without touching any statistics."""
        flat = z_e.movedim(1, -1).reshape(-1, self.dim)
        with torch.autocast(device_type=z_e.device.type, enabled=False):
            indices = self._nearest_flat(flat.float())
        return indices.view(z_e.shape[0], *z_e.shape[2:])

    def embed(self, indices: Tensor) -> Tensor:
        """Codebook vectors for (B, *spatial) indices, channels first: (B, dim, *spatial)."""
        return F.embedding(indices, self.embedding).movedim(-1, 1).contiguous()

    # ---- forward ---------------------------------------------------------------------------

    def forward(self, z_e: Tensor, mask: Tensor | None = None) -> VQOutput:
        # Channels last and flattened: the same code for 1-, 2- and 3-D latents.
        z = z_e.movedim(1, -1)
        # Distances, losses and EMA statistics in fp32 even under autocast: bf16 distances pick
        # wrong neighbours once codes are close together.
        with torch.autocast(device_type=z_e.device.type, enabled=False):
            flat = z.reshape(-1, self.dim).float()
            with torch.no_grad():
                indices = self._nearest_flat(flat)
            z_q = F.embedding(indices, self.embedding.float())
            valid = None if mask is None else mask.reshape(-1).to(torch.bool)

            # Eq. 3: the codebook term moves e towards sg[z_e], the commitment term moves z_e.
            # The commitment term is taken channels-first so z_e's gradient stays contiguous.
            z_q_first = z_q.detach().view(z.shape).movedim(-1, 1).contiguous()
            if valid is None:
                commitment_loss = F.mse_loss(z_e.float(), z_q_first)
            else:
                weight = mask.unsqueeze(1).to(torch.float32)  # (B, 1, *spatial)
                denominator = (weight.sum() * self.dim).clamp(min=1)
                commitment_loss = ((z_e.float() - z_q_first).square() * weight).sum() / denominator
            if self.ema:
                codebook_loss = torch.zeros((), device=z_e.device)
                loss = self.beta * commitment_loss
            else:
                if valid is None:
                    codebook_loss = F.mse_loss(z_q, flat.detach())
                else:
                    codebook_loss = (z_q - flat.detach())[valid].square().sum() / denominator
                loss = codebook_loss + self.beta * commitment_loss

            # Statistics from real positions only: padding would count as uses of its codes.
            used_flat, used_indices = (flat, indices) if valid is None else (flat[valid], indices[valid])
            counts = torch.bincount(used_indices, minlength=self.codebook_size)
            if self.training:
                counts = self._update(used_flat.detach(), used_indices, counts)

        # Straight-through estimator z_e + sg[z_q - z_e]: forward value z_q, gradient dL/dz_q
        # copied to z_e and none to the codebook. Written as sg[z_q] + (z_e - sg[z_e]) so that
        # the value is exactly z_q (x - x == 0 in floating point, z_e + (z_q - z_e) != z_q).
        # Contiguous, channels first: channels-last gradients would reach the conv weights, which
        # DDP warns about (grad strides != bucket view strides) and copies on every step.
        quantized = z_q_first.to(z_e.dtype) + (z_e - z_e.detach())

        probs = counts.float() / counts.sum().clamp(min=1)
        perplexity = torch.exp(-torch.special.xlogy(probs, probs).sum())
        usage = (counts > 0).float().mean()
        return VQOutput(
            quantized=quantized,
            indices=indices.view(z_e.shape[0], *z_e.shape[2:]),
            loss=loss,
            commitment_loss=commitment_loss,
            codebook_loss=codebook_loss,
            perplexity=perplexity,
            usage=usage,
        )

    # ---- training-time state ---------------------------------------------------------------

    @torch.no_grad()
    def _update(self, flat: Tensor, indices: Tensor, counts: Tensor) -> Tensor:
        """EMA update, usage bookkeeping and dead-code restarts; returns the global counts."""
        distributed = _distributed()
        if distributed:
            dist.all_reduce(counts)  # every rank sees the same usage, so takes the same decisions
        self.step += 1

        if self.ema:
            # Appendix A.1: n_i = #z assigned to e_i, sum_j z_ij their sum, over all ranks.
            sums = torch.zeros(self.codebook_size, self.dim, device=flat.device)
            sums.index_add_(0, indices, flat)
            if distributed:
                dist.all_reduce(sums)
            g = self.decay
            self.ema_count.mul_(g).add_(counts.float(), alpha=1 - g)  # N_i <- g N_i + (1-g) n_i
            self.ema_sum.mul_(g).add_(sums, alpha=1 - g)  # m_i <- g m_i + (1-g) sum_j z_ij
            # Laplace smoothing keeps N_i > 0 for unused codes; it is used for the division only,
            # the stored N_i stays the plain moving average (as in Sonnet's VectorQuantizerEMA).
            n = self.ema_count.sum()
            smoothed = (self.ema_count + self.eps) / (n + self.codebook_size * self.eps) * n
            self.embedding.copy_(self.ema_sum / smoothed.unsqueeze(1))  # e_i = m_i / N_i

        used = counts > 0
        self.last_used[used] = self.step

        if self.dead_code_steps > 0:
            self._restart_dead_codes(flat, distributed)
        return counts

    def _restart_dead_codes(self, flat: Tensor, distributed: bool) -> None:
        """Codes unused for dead_code_steps steps restart at random encoder outputs of the batch.

        The dead set is computed from all-reduced usage, hence the same on every rank; the new
        vectors are drawn from rank 0's batch and broadcast."""
        last_alive = torch.maximum(self.last_used, self.last_restart)
        dead = (self.step - last_alive) >= self.dead_code_steps
        num_dead = int(dead.sum())
        if num_dead == 0:
            return
        if flat.shape[0]:
            vectors = flat[torch.randint(flat.shape[0], (num_dead,), device=flat.device)].to(self.embedding.dtype)
        else:  # every position masked on this rank: keep the vectors (rank 0's still win below)
            vectors = self.embedding[dead].clone()
        if distributed:
            dist.broadcast(vectors, src=0)
        self.embedding[dead] = vectors
        if self.ema:
            self.ema_count[dead] = 1.0
            self.ema_sum[dead] = vectors
        self.last_restart[dead] = self.step  # a grace period before it can be declared dead again

    # ---- monitoring ------------------------------------------------------------------------

    def window_usage(self) -> float:
        """Fraction of codes chosen at least once in the last usage_window training steps."""
        since = int(self.step) - self.usage_window
        recent = (self.last_used > max(since, 0)) & (self.last_used > 0)
        return recent.float().mean().item()
