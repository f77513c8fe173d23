"""The speech VQ-VAE of van den Oord et al. 2017, section 4.3, and its 1-D code prior.

    model = SpeechVQVAE(num_speakers=109)                 # the paper: K=512, 64x fewer latents
    out = model(x, {"speaker": ids}, mask)                # x (B, 1, T) float in [-1, 1]
    out.loss.backward()                                   # cross-entropy (bits/sample) + VQ terms
    codes = model.encode(x)                               # (B, T // 64) int64
    wav = model.decode_indices(codes, {"speaker": ids})   # (B, 1, T // 64 * 64), autoregressive

Encoder: six strided 1-D convs (window 4, stride 2: 64x downsampling) with ReLUs, then a 1x1 conv
to the code dimension. Decoder: a WaveNet over 8-bit mu-law samples, conditioned on z_q (through
a small conv at the codes' rate, then repeated to the sample rate) and on a learnt speaker
embedding, trained with teacher forcing. Decoding one speaker's codes with another speaker's id
converts the voice.

The prior (`CodePrior`) is a WaveNet over code ids conditioned on the speaker.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.models.pixelcnn import PriorOutput, nll_bits
from pipeline.models.quantizer import VectorQuantizer, VQOutput
from pipeline.models.wavenet import WaveNet, mu_law_decode, mu_law_encode

SPEAKER = "speaker"  # the conditioning's name, in batches, codes and the prior


def _downsample(length: int, times: int) -> int:
    for _ in range(times):
        length = (length + 2 - 4) // 2 + 1  # window 4, stride 2, padding 1: floor(length / 2)
    return length


def _speaker(cond: dict[str, Tensor] | None, batch: int, device) -> Tensor:
    if not cond or SPEAKER not in cond:
        raise ValueError(f"the speech models need cond[{SPEAKER!r}], the speaker id of each sample")
    ids = cond[SPEAKER].to(device).long().view(-1)
    if ids.shape[0] != batch:
        raise ValueError(f"cond[{SPEAKER!r}] has {ids.shape[0]} ids for a batch of {batch}")
    return ids


def emphasize(x: Tensor, a: float) -> Tensor:
    """Pre-emphasis x[t] - a * x[t-1] along the last dim (x[-1] = 0): the decoder models this
    flatter-spectrum signal, so the noise of sampling 256 mu-law levels, white in this domain, is
    pushed down at high frequencies by `deemphasize` (speech has little energy there, and an
    undertrained WaveNet's hiss masked the speaker there)."""
    if a == 0:
        return x
    return x - a * torch.nn.functional.pad(x[..., :-1], (1, 0))


def deemphasize(y: Tensor, a: float) -> Tensor:
    """The inverse of `emphasize`, y[t] + a * out[t-1], as a causal convolution with a^k cut where
    a^k < 1e-7 (vectorised on any device instead of a loop over samples), clamped to [-1, 1]."""
    if a == 0:
        return y
    taps = int(math.ceil(math.log(1e-7) / math.log(a)))
    kernel = (a ** torch.arange(taps - 1, -1, -1, dtype=torch.float64, device=y.device)).to(y.dtype)
    shape = y.shape
    flat = torch.nn.functional.pad(y.reshape(-1, 1, shape[-1]), (taps - 1, 0))
    return torch.nn.functional.conv1d(flat, kernel.view(1, 1, -1)).reshape(shape).clamp(-1.0, 1.0)


@dataclass
class SpeechVQVAEOutput:
    recon: Tensor | None  # no reconstruction in a teacher-forced pass: generation is separate
    loss: Tensor  # bits per sample + vq.loss
    recon_loss: Tensor  # the decoder's NLL in bits per real sample
    vq: VQOutput
    nll_bits_sum: Tensor  # summed over real samples (validation adds these up)
    samples: Tensor  # real samples scored

    def logs(self, model: "SpeechVQVAE") -> dict[str, float]:
        return {"loss": self.loss.item(), "bits_per_sample": self.recon_loss.item(), "vq_loss": self.vq.loss.item(),
                "commitment_loss": self.vq.commitment_loss.item(), "train_perplexity": self.vq.perplexity.item(),
                "train_usage": self.vq.usage.item(), "window_usage": model.vq.window_usage()}


class SpeechVQVAE(nn.Module):
    role = "autoencoder"

    def __init__(self, num_speakers: int, hidden: int = 256, num_downsamples: int = 6,
                 codebook_size: int = 512, code_dim: int = 64, beta: float = 0.25, ema: bool = False,
                 decay: float = 0.99, dead_code_steps: int = 0, speaker_dim: int = 64,
                 wavenet_channels: int = 64, wavenet_skip: int = 128, wavenet_layers: int = 20,
                 wavenet_cycle: int = 10, cond_channels: int = 64, mu_law_bits: int = 8,
                 preemphasis: float = 0.0, scalar_input: bool = True):
        super().__init__()
        self.config: dict[str, Any] = dict(
            num_speakers=num_speakers, hidden=hidden, num_downsamples=num_downsamples,
            codebook_size=codebook_size, code_dim=code_dim, beta=beta, ema=ema, decay=decay,
            dead_code_steps=dead_code_steps, speaker_dim=speaker_dim, wavenet_channels=wavenet_channels,
            wavenet_skip=wavenet_skip, wavenet_layers=wavenet_layers, wavenet_cycle=wavenet_cycle,
            cond_channels=cond_channels, mu_law_bits=mu_law_bits, preemphasis=preemphasis,
            scalar_input=scalar_input)  # fmt: skip
        if not 0.0 <= preemphasis < 1.0:
            raise ValueError(f"preemphasis must be in [0, 1), got {preemphasis}")
        self.num_downsamples, self.mu_law_bits, self.preemphasis = num_downsamples, mu_law_bits, preemphasis
        self.hop = 2**num_downsamples
        layers: list[nn.Module] = []
        for i in range(num_downsamples):
            layers += [nn.Conv1d(1 if i == 0 else hidden, hidden, 4, stride=2, padding=1), nn.ReLU()]
        layers.append(nn.Conv1d(hidden, code_dim, 1))
        self.encoder = nn.Sequential(*layers)
        self.vq = VectorQuantizer(codebook_size, code_dim, beta=beta, ema=ema, decay=decay,
                                  dead_code_steps=dead_code_steps)
        # z_q at the codes' rate -> conditioning channels (sees neighbouring codes: they are given)
        self.cond_net = nn.Sequential(nn.Conv1d(code_dim, cond_channels, 3, padding=1), nn.ReLU())
        self.speaker_embedding = nn.Embedding(num_speakers, speaker_dim)
        self.decoder = WaveNet(num_classes=2**mu_law_bits, channels=wavenet_channels, skip_channels=wavenet_skip,
                               num_layers=wavenet_layers, cycle=wavenet_cycle, kernel_size=2,
                               local_channels=cond_channels, global_channels=speaker_dim,
                               scalar_input=scalar_input)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "SpeechVQVAE":
        return cls(**config)

    def latent_shape(self, input_shape: tuple[int, ...] | list[int]) -> tuple[int, ...]:
        if len(input_shape) != 1:
            raise ValueError(f"expected 1 spatial size (samples), got {tuple(input_shape)}")
        length = _downsample(int(input_shape[0]), self.num_downsamples)
        if length < 1:
            raise ValueError(f"input of {input_shape[0]} samples is shorter than one code ({self.hop} samples)")
        return (length,)

    @property
    def input_dims_per_code(self) -> int:
        return self.hop

    def latent_mask(self, mask: Tensor | None, latent: tuple[int, ...]) -> Tensor | None:
        if mask is None:
            return None
        return mask[:, : latent[0] * self.hop: self.hop]

    def _decode_logits(self, z_q: Tensor, inputs: Tensor, speaker: Tensor) -> Tensor:
        # the conditioning stays at the codes' rate: each column is added to its hop samples
        return self.decoder(inputs, self.cond_net(z_q), self.speaker_embedding(speaker), hop=self.hop)

    def forward(self, x: Tensor, cond: dict[str, Tensor] | None = None, mask: Tensor | None = None) -> SpeechVQVAEOutput:
        speaker = _speaker(cond, x.shape[0], x.device)
        z_e = self.encoder(x)
        length = z_e.shape[-1] * self.hop  # the samples the codes stand for
        vq_out = self.vq(z_e, self.latent_mask(mask, (z_e.shape[-1],)))
        target = mu_law_encode(emphasize(x[:, 0, :length], self.preemphasis), self.mu_law_bits)
        logits = self._decode_logits(vq_out.quantized, target, speaker)
        real = None if mask is None else mask[:, :length].to(logits.dtype)
        total = nll_bits(logits, target, real, reduction="sum")
        count = torch.tensor(float(target.numel()), device=x.device) if real is None else real.sum()
        bits = total / count.clamp(min=1)
        return SpeechVQVAEOutput(None, bits + vq_out.loss, bits, vq_out, total.detach(), count.detach())

    @torch.no_grad()
    def encode(self, x: Tensor, cond: dict[str, Tensor] | None = None) -> Tensor:
        return self.vq.nearest(self.encoder(x))

    @torch.no_grad()
    def decode_indices(self, indices: Tensor, cond: dict[str, Tensor] | None = None, temperature: float = 1.0,
                       generator: torch.Generator | None = None) -> Tensor:
        """Codes (B, L) and speaker ids -> waveforms (B, 1, L * 64) in [-1, 1], sampled sample by
        sample (cached dilated-conv state, the whole batch at once)."""
        speaker = _speaker(cond, indices.shape[0], indices.device)
        local = self.cond_net(self.vq.embed(indices))
        q = self.decoder.generate(indices.shape[-1] * self.hop, local, self.speaker_embedding(speaker),
                                  temperature=temperature, generator=generator, hop=self.hop)
        return deemphasize(mu_law_decode(q, self.mu_law_bits), self.preemphasis).unsqueeze(1)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, cond: dict[str, Tensor] | None = None, mask: Tensor | None = None,
                    generator: torch.Generator | None = None) -> Tensor:
        return self.decode_indices(self.encode(x), cond, generator=generator)


class CodePrior(nn.Module):
    """A WaveNet over code sequences (B, L), conditioned on one speaker id per sequence."""

    role = "prior"

    def __init__(self, codebook_size: int, num_speakers: int = 0, cond_key: str = SPEAKER, hidden: int = 64,
                 num_layers: int = 10, cycle: int = 5, kernel_size: int = 3, speaker_dim: int = 32):
        super().__init__()
        self._config = dict(codebook_size=codebook_size, num_speakers=num_speakers, cond_key=cond_key,
                            hidden=hidden, num_layers=num_layers, cycle=cycle, kernel_size=kernel_size,
                            speaker_dim=speaker_dim)
        self.codebook_size, self.num_speakers, self.cond_key = codebook_size, num_speakers, cond_key
        self.speaker_embedding = nn.Embedding(num_speakers, speaker_dim) if num_speakers else None
        self.net = WaveNet(num_classes=codebook_size, channels=hidden, skip_channels=2 * hidden, num_layers=num_layers,
                           cycle=cycle, kernel_size=kernel_size, global_channels=speaker_dim if num_speakers else 0)

    @property
    def config(self) -> dict[str, Any]:
        return dict(self._config)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "CodePrior":
        return cls(**config)

    def _glob(self, cond: dict[str, Tensor] | None, batch: int, device) -> Tensor | None:
        if self.speaker_embedding is None:
            return None
        if not cond or self.cond_key not in cond:
            raise ValueError(f"this prior is conditioned on cond[{self.cond_key!r}]; none was given")
        return self.speaker_embedding(cond[self.cond_key].to(device).long().view(-1))

    def logits(self, codes: Tensor, cond: dict[str, Tensor] | None = None) -> Tensor:
        if codes.dim() != 2:
            raise ValueError(f"codes must have shape (B, L), got {tuple(codes.shape)}")
        return self.net(codes, None, self._glob(cond, codes.shape[0], codes.device))

    def forward(self, codes: Tensor, cond: dict[str, Tensor] | None = None, mask: Tensor | None = None) -> PriorOutput:
        logits = self.logits(codes, cond)
        return PriorOutput(logits, nll_bits(logits, codes, mask))

    @torch.no_grad()
    def sample(self, cond: dict[str, Tensor] | None = None, shape: tuple[int, ...] = (64,), temperature: float = 1.0,
               generator: torch.Generator | None = None, num_samples: int | None = None) -> Tensor:
        """Code sequences (B, *shape) with the cached generation of the WaveNet."""
        if len(tuple(shape)) != 1:
            raise ValueError(f"shape must have 1 dim (codes), got {tuple(shape)}")
        device = self.net.input_table().device
        batch = cond[self.cond_key].shape[0] if cond and self.cond_key in cond else num_samples
        if batch is None:
            raise ValueError("give speaker ids in cond or num_samples")
        return self.net.generate(int(shape[0]), None, self._glob(cond, batch, device), batch=batch,
                                 temperature=temperature, generator=generator)

