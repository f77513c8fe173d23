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

`lpc_order=p` (0, the paper's, by default) splits the decoder as LPCNet does (Valin & Skoglund
2019): a small net turns the codes and the speaker into the coefficients of a stable p-th order
linear predictor per code (reflection coefficients, trained on the prediction's squared error),
and the WaveNet models the excitation, what the prediction leaves. Generation adds each drawn
excitation to the prediction from the samples made so far, so the sampling noise comes out with
the voice's spectral envelope instead of white.

The prior (`CodePrior`) is a WaveNet over code ids conditioned on the speaker.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.models import Track, untracked
from pipeline.models.prior import PriorOutput, nll_bits
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


def reflection_to_lpc(k: Tensor) -> Tensor:
    """Reflection coefficients k (..., p), each in (-1, 1), -> the predictor a (..., p) of
    x[t] ~ sum_i a_i x[t - i] (Levinson's step-up recursion). Its synthesis filter
    1 / (1 - sum_i a_i z^-i) is stable for any such k, so a learnt k can never make generation blow up."""
    a = k[..., :1]
    for m in range(1, k.shape[-1]):
        km = k[..., m:m + 1]
        a = torch.cat([a - km * a.flip(-1), km], dim=-1)
    return a


def past_samples(x: Tensor, order: int) -> Tensor:
    """x (B, T) -> (B, order, T): row i - 1 holds x[t - i] (zeros before the start)."""
    return torch.stack([torch.nn.functional.pad(x, (i, 0))[:, :x.shape[-1]] for i in range(1, order + 1)], dim=1)


@dataclass
class SpeechVQVAEOutput:
    recon: Tensor | None  # no reconstruction in a teacher-forced pass: generation is separate
    loss: Tensor  # bits per sample + vq.loss
    recon_loss: Tensor  # the decoder's NLL in bits per real sample
    vq: VQOutput
    nll_bits_sum: Tensor  # summed over real samples (validation adds these up)
    samples: Tensor  # real samples scored
    lpc_residual: Tensor | None = None  # the linear prediction's error energy / the signal's

    def logs(self, model: "SpeechVQVAE") -> dict[str, float]:
        logs = {"loss": self.loss.item(), "bits_per_sample": self.recon_loss.item(), "vq_loss": self.vq.loss.item(),
                "commitment_loss": self.vq.commitment_loss.item(), "train_perplexity": self.vq.perplexity.item(),
                "train_usage": self.vq.usage.item(), "window_usage": model.vq.window_usage()}
        if self.lpc_residual is not None:
            logs["lpc_residual"] = self.lpc_residual.item()
        return logs


class SpeechVQVAE(nn.Module):
    role = "autoencoder"

    def __init__(self, num_speakers: int, hidden: int = 256, num_downsamples: int = 6,
                 codebook_size: int = 512, code_dim: int = 64, beta: float = 0.25, ema: bool = False,
                 decay: float = 0.99, dead_code_steps: int = 0, speaker_dim: int = 64,
                 wavenet_channels: int = 64, wavenet_skip: int = 128, wavenet_layers: int = 20,
                 wavenet_cycle: int = 10, cond_channels: int = 64, mu_law_bits: int = 8,
                 preemphasis: float = 0.0, scalar_input: bool = True, lpc_order: int = 0):
        super().__init__()
        self.config: dict[str, Any] = dict(
            num_speakers=num_speakers, hidden=hidden, num_downsamples=num_downsamples,
            codebook_size=codebook_size, code_dim=code_dim, beta=beta, ema=ema, decay=decay,
            dead_code_steps=dead_code_steps, speaker_dim=speaker_dim, wavenet_channels=wavenet_channels,
            wavenet_skip=wavenet_skip, wavenet_layers=wavenet_layers, wavenet_cycle=wavenet_cycle,
            cond_channels=cond_channels, mu_law_bits=mu_law_bits, preemphasis=preemphasis,
            scalar_input=scalar_input, lpc_order=lpc_order)  # fmt: skip
        if not 0.0 <= preemphasis < 1.0:
            raise ValueError(f"preemphasis must be in [0, 1), got {preemphasis}")
        if lpc_order < 0:
            raise ValueError(f"lpc_order must be >= 0, got {lpc_order}")
        self.num_downsamples, self.mu_law_bits, self.preemphasis = num_downsamples, mu_law_bits, preemphasis
        self.lpc_order = lpc_order
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
        if lpc_order:
            # codes + speaker -> reflection coefficients of a linear predictor per code: its
            # synthesis filter gives what the WaveNet draws the spectral envelope of the voice
            self.lpc_net = nn.Sequential(nn.Conv1d(cond_channels + speaker_dim, 2 * cond_channels, 3, padding=1),
                                         nn.ReLU(), nn.Conv1d(2 * cond_channels, lpc_order, 1))
            nn.init.zeros_(self.lpc_net[-1].weight)  # starts as no prediction: the plain decoder
            nn.init.zeros_(self.lpc_net[-1].bias)
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

    def _predictor(self, local: Tensor, speaker_vector: Tensor) -> Tensor:
        """(B, lpc_order, L): per code, the coefficients a_i of x[t] ~ sum_i a_i x[t - i]."""
        glob = speaker_vector.unsqueeze(-1).expand(-1, -1, local.shape[-1])
        # The predictor's error trains the encoder too. On the demo it pulls the codebook down to
        # a few codes for the first few hundred steps (dead-code restarts bring them back), and
        # the decoder comes out rendering voices better than with the codes held apart
        # (local.detach()): 0.78 against 0.68 of 180 conversions nearer the target speaker.
        k = 0.99 * torch.tanh(self.lpc_net(torch.cat([local, glob], dim=1)))
        return reflection_to_lpc(k.transpose(1, 2)).transpose(1, 2)

    def teacher_forced(self, signal: Tensor, z_q: Tensor, speaker: Tensor,
                       real: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """The decoder on a known (emphasized) signal (B, T = L * hop) given z_q (B, D, L): its
        logits (B, classes, T), the classes they score, and the linear prediction's relative
        error energy (None without one)."""
        inputs = target = mu_law_encode(signal, self.mu_law_bits)
        # the conditioning stays at the codes' rate: each column is added to its hop samples
        local, speaker_vector = self.cond_net(z_q), self.speaker_embedding(speaker)
        lpc_residual = None
        if self.lpc_order:
            # Linear prediction from the past samples with coefficients the codes and the speaker
            # give (LPCNet, Valin & Skoglund 2019): the WaveNet models the excitation
            # e = x - prediction. Generation runs the prediction on what it made, so the noise
            # of its draws is shaped by the voice's spectral envelope instead of white.
            a = self._predictor(local, speaker_vector)
            b, t = signal.shape
            past = past_samples(signal, self.lpc_order)
            prediction = (past.view(b, self.lpc_order, -1, self.hop) * a.unsqueeze(-1)).sum(1).view(b, t)
            weight = torch.ones_like(signal) if real is None else real
            # the least-squares criterion of LPC trains the predictor
            lpc_residual = ((signal - prediction).square() * weight).sum() / ((signal.square() * weight).sum() + 1e-8)
            target = mu_law_encode(signal - prediction.detach(), self.mu_law_bits)
        return self.decoder(inputs, local, speaker_vector, hop=self.hop), target, lpc_residual

    def forward(self, x: Tensor, cond: dict[str, Tensor] | None = None, mask: Tensor | None = None) -> SpeechVQVAEOutput:
        speaker = _speaker(cond, x.shape[0], x.device)
        z_e = self.encoder(x)
        length = z_e.shape[-1] * self.hop  # the samples the codes stand for
        vq_out = self.vq(z_e, self.latent_mask(mask, (z_e.shape[-1],)))
        signal = emphasize(x[:, 0, :length], self.preemphasis)
        real = None if mask is None else mask[:, :length].to(signal.dtype)
        logits, target, lpc_residual = self.teacher_forced(signal, vq_out.quantized, speaker, real)
        total = nll_bits(logits, target, real, reduction="sum")
        count = torch.tensor(float(target.numel()), device=x.device) if real is None else real.sum()
        bits = total / count.clamp(min=1)
        loss = bits + vq_out.loss + (0.0 if lpc_residual is None else lpc_residual)
        return SpeechVQVAEOutput(None, loss, bits, vq_out, total.detach(), count.detach(),
                                 None if lpc_residual is None else lpc_residual.detach())

    @torch.no_grad()
    def encode(self, x: Tensor, cond: dict[str, Tensor] | None = None) -> Tensor:
        return self.vq.nearest(self.encoder(x))

    @torch.no_grad()
    def decode_indices(self, indices: Tensor, cond: dict[str, Tensor] | None = None, temperature: float = 1.0,
                       generator: torch.Generator | None = None, track: Track = untracked) -> Tensor:
        """Codes (B, L) and speaker ids -> waveforms (B, 1, L * 64) in [-1, 1], sampled sample by
        sample (cached dilated-conv state, the whole batch at once); `track` wraps the samples."""
        speaker = _speaker(cond, indices.shape[0], indices.device)
        local, speaker_vector = self.cond_net(self.vq.embed(indices)), self.speaker_embedding(speaker)
        steps = indices.shape[-1] * self.hop
        feedback, made = self.excitation_feedback(local, speaker_vector, steps) if self.lpc_order else (None, None)
        q = self.decoder.generate(steps, local, speaker_vector, temperature=temperature, generator=generator,
                                  hop=self.hop, feedback=feedback, track=track)
        signal = mu_law_decode(q, self.mu_law_bits) if made is None else made[:, self.lpc_order:]
        return deemphasize(signal, self.preemphasis).unsqueeze(1)

    def excitation_feedback(self, local: Tensor, speaker_vector: Tensor, steps: int) -> tuple:
        """For generation with the linear predictor: the WaveNet's `feedback` (each drawn
        excitation plus the prediction from the samples made so far is the sample at t, which the
        next step reads) and the (B, lpc_order + steps) buffer it fills, zeros before the start."""
        order = self.lpc_order
        # per code, (B, order) coefficients oldest first, to meet made[:, t:t + order] as it lies
        taps = self._predictor(local, speaker_vector).flip(1).permute(2, 0, 1).contiguous()
        made = torch.zeros(local.shape[0], order + steps, device=local.device, dtype=local.dtype)

        def feedback(t: int, drawn: Tensor) -> Tensor:
            past = made[:, t:t + order]  # x[t - order], ..., x[t - 1]
            sample = (past * taps[t // self.hop]).sum(-1) + mu_law_decode(drawn, self.mu_law_bits)
            made[:, order + t] = sample.clamp(-1.0, 1.0)
            return mu_law_encode(made[:, order + t], self.mu_law_bits)

        return feedback, made

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
               generator: torch.Generator | None = None, num_samples: int | None = None,
               track: Track = untracked) -> Tensor:
        """Code sequences (B, *shape) with the cached generation of the WaveNet."""
        if len(tuple(shape)) != 1:
            raise ValueError(f"shape must have 1 dim (codes), got {tuple(shape)}")
        device = self.net.input_table().device
        batch = cond[self.cond_key].shape[0] if cond and self.cond_key in cond else num_samples
        if batch is None:
            raise ValueError("give speaker ids in cond or num_samples")
        return self.net.generate(int(shape[0]), None, self._glob(cond, batch, device), batch=batch,
                                 temperature=temperature, generator=generator, track=track)

