"""A speech VQ-VAE whose decoder predicts WORLD vocoder frames instead of samples
(`stage1.decoder: world`): codes that keep the words, decoded in one deterministic pass, and a
voice with harmonics at the target speaker's pitch.

    model = WorldVQVAE(num_speakers=8, rate=16000)
    model.set_statistics(sums)                           # the shards' tallies (world.sums)
    out = model(x, {"speaker": ids, "world": feats}, mask)   # x (B, 1, T); feats (B, T // 160 + 1, FEATURES)
    out.loss.backward()
    codes = model.encode(x)                              # (B, T // hop): one code per 20 ms
    wav = model.decode_indices(codes, {"speaker": ids})  # (B, 1, L * hop) through the WORLD synthesizer

Encoder: log-mel frames of the waveform (one per WORLD frame, 10 ms; the input of the ZeroSpeech
VQ-VAE baselines), convolutions that give one code per `code_frames` frames. Decoder: the codes
repeated to the frame rate, dilated convolutions, the speaker's learnt embedding as a bias of the
last `speaker_layers` of them (None: all, and at the input) and as an offset of the output, then
a 1x1 to the WORLD frame (pipeline/models/world.py): the
envelope's coded coefficients, band aperiodicities, log F0 in the speaker's own standard units,
and a voicing logit. pyworld synthesizes the waveform. The speaker's log-F0 statistics
(`pitch_mean`, `pitch_std`, buffers from the training data) turn the normalised contour into Hz,
so a conversion speaks at the target's pitch.

The loss is an L1 over the frame's dimensions, each counted once (the envelope's 40 are most of
it). The envelope's errors are weighted by each coefficient's spread in the data, i.e. measured
in log-spectral units as the synthesizer hears them, not standardised: measured on 4 flite
voices, 2,000 steps, standardised errors gave 63 % word error on reconstructions, these 44 %.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pipeline.models import Track, untracked, world
from pipeline.models.quantizer import VectorQuantizer, VQOutput

SPEAKER = "speaker"
WORLD = world.BATCH_KEY  # the batch's WORLD frames (the decoder's target) travel in cond under this name


@dataclass
class WorldOutput:
    recon: Tensor | None  # none in training: the waveform needs the (numpy) synthesizer
    loss: Tensor  # feature_loss + vq.loss
    feature_loss: Tensor  # the frames' L1 (envelope, aperiodicity, pitch, voicing), mean per real frame
    envelope_loss: Tensor  # the envelope's part of it, per envelope dimension
    vq: VQOutput
    feature_sum: Tensor  # feature_loss summed over real frames (validation adds these up)
    envelope_sum: Tensor
    frames: Tensor  # real frames scored

    def logs(self, model: "WorldVQVAE") -> dict[str, float]:
        return {"loss": self.loss.item(), "feature_loss": self.feature_loss.item(),
                "envelope_loss": self.envelope_loss.item(), "vq_loss": self.vq.loss.item(),
                "commitment_loss": self.vq.commitment_loss.item(), "train_perplexity": self.vq.perplexity.item(),
                "train_usage": self.vq.usage.item(), "window_usage": model.vq.window_usage()}


class WorldVQVAE(nn.Module):
    role = "autoencoder"

    def __init__(self, num_speakers: int, rate: int = 16000, mels: int = 80, hidden: int = 128,
                 codebook_size: int = 512, code_dim: int = 64, speaker_dim: int = 64, decoder_layers: int = 4,
                 code_frames: int = 2, beta: float = 0.25, ema: bool = True, decay: float = 0.99,
                 dead_code_steps: int = 100, input_warp: float = 0.0, speaker_layers: int | None = None):
        super().__init__()
        import librosa

        self.config: dict[str, Any] = dict(
            num_speakers=num_speakers, rate=rate, mels=mels, hidden=hidden, codebook_size=codebook_size,
            code_dim=code_dim, speaker_dim=speaker_dim, decoder_layers=decoder_layers, code_frames=code_frames,
            beta=beta, ema=ema, decay=decay, dead_code_steps=dead_code_steps, input_warp=input_warp,
            speaker_layers=speaker_layers)
        if code_frames < 1:
            raise ValueError(f"code_frames must be >= 1, got {code_frames}")
        self.rate, self.mels, self.code_frames = rate, mels, code_frames
        self.input_warp = input_warp
        self.frame = int(round(rate * world.FRAME_MS / 1000))  # samples per WORLD frame
        self.hop = code_frames * self.frame  # samples per code
        self.n_fft = 1 << (4 * self.frame - 1).bit_length()
        self.register_buffer("window", torch.hann_window(4 * self.frame), persistent=False)
        self.register_buffer("mel_basis", torch.from_numpy(
            librosa.filters.mel(sr=rate, n_fft=self.n_fft, n_mels=mels, fmin=50.0)).float(), persistent=False)
        down = (nn.Conv1d(hidden, hidden, 2 * code_frames, stride=code_frames, padding=code_frames // 2)
                if code_frames > 1 else nn.Conv1d(hidden, hidden, 3, padding=1))
        self.encoder = nn.Sequential(
            nn.Conv1d(mels, hidden, 5, padding=2), nn.ReLU(), down, nn.ReLU(),
            nn.Conv1d(hidden, hidden, 3, padding=1), nn.ReLU(), nn.Conv1d(hidden, code_dim, 1))
        self.vq = VectorQuantizer(codebook_size, code_dim, beta=beta, ema=ema, decay=decay,
                                  dead_code_steps=dead_code_steps)
        self.speaker_embedding = nn.Embedding(num_speakers, speaker_dim)
        self.decoder_in = nn.Conv1d(code_dim + speaker_dim, hidden, 3, padding=1)
        self.decoder_convs = nn.ModuleList(nn.Conv1d(hidden, hidden, 3, padding=2 ** (i % 3), dilation=2 ** (i % 3))
                                           for i in range(decoder_layers))
        # the speaker: a bias of the last `speaker_layers` layers (None: all) and an offset of the
        # output frames; the layers before it render the codes alike for every speaker
        self.speaker_layers = decoder_layers if speaker_layers is None else min(speaker_layers, decoder_layers)
        self.decoder_speaker = nn.ModuleList(nn.Linear(speaker_dim, hidden) for _ in range(self.speaker_layers))
        self.head = nn.Conv1d(hidden, world.FEATURES, 1)
        self.speaker_out = nn.Linear(speaker_dim, world.FEATURES)
        # the data's statistics (set_statistics), saved with the weights
        self.register_buffer("pitch_mean", torch.full((num_speakers,), math.log(120.0)))
        self.register_buffer("pitch_std", torch.full((num_speakers,), 0.2))
        self.register_buffer("feature_mean", torch.zeros(world.FEATURES))
        self.register_buffer("feature_std", torch.ones(world.FEATURES))
        self.register_buffer("envelope_weight", torch.ones(world.ENVELOPE))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "WorldVQVAE":
        return cls(**config)

    # ---- shapes --------------------------------------------------------------------------------

    def frames(self, samples: int) -> int:
        """WORLD frames (and log-mel frames) of `samples` samples."""
        return samples // self.frame + 1

    def latent_shape(self, input_shape: tuple[int, ...] | list[int]) -> tuple[int, ...]:
        if len(input_shape) != 1:
            raise ValueError(f"expected 1 spatial size (samples), got {tuple(input_shape)}")
        length = int(input_shape[0]) // self.hop
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

    def _frame_mask(self, mask: Tensor, frames: int) -> Tensor:
        """(B, T) real samples -> (B, frames): a frame is real where the sample at its centre is
        (the last frame, centred on sample T, counts when sample T - 1 does)."""
        m = mask[:, ::self.frame][:, :frames]
        if m.shape[1] < frames:
            m = torch.cat([m, mask[:, -1:].expand(-1, frames - m.shape[1])], dim=1)
        return m

    # ---- statistics of the data ------------------------------------------------------------------

    def set_statistics(self, sums: dict[str, float]) -> None:
        """Fill the per-speaker log-F0 statistics, the per-dimension feature scale and the
        envelope's loss weights from `world_sums` added up over the training utterances."""
        n = sums.get("world/frames", 0.0)
        if n < 2:
            raise ValueError("no WORLD frames in the statistics")
        mean = torch.tensor([sums[f"world/sum/{i}"] / n for i in range(world.FEATURES)], dtype=torch.float64)
        sq = torch.tensor([sums[f"world/sq/{i}"] / n for i in range(world.FEATURES)], dtype=torch.float64)
        self.feature_mean.copy_(mean.float())
        self.feature_std.copy_((sq - mean ** 2).clamp(min=0).sqrt().clamp(min=1e-3).float())
        w = self.feature_std[:world.ENVELOPE].clone()
        w[0] = w[1]  # c0 is loudness: weighted as c1, not by its large spread
        self.envelope_weight.copy_(w / w.mean())
        for s in range(self.pitch_mean.numel()):
            v = sums.get(f"world/speaker/{s}/voiced", 0.0)
            if v >= 2:
                m = sums[f"world/speaker/{s}/lf0"] / v
                self.pitch_mean[s] = m
                self.pitch_std[s] = max(math.sqrt(max(sums[f"world/speaker/{s}/lf0sq"] / v - m * m, 0.0)), 1e-3)

    # ---- the input: log-mel frames of the waveform -------------------------------------------

    def log_mel(self, x: Tensor) -> Tensor:
        """(B, 1, T) -> (B, mels, T // frame + 1): one frame per WORLD frame, centred as WORLD's;
        log magnitudes shifted and scaled to about unit range."""
        spec = torch.stft(x[:, 0].float(), self.n_fft, hop_length=self.frame, win_length=4 * self.frame,
                          window=self.window, center=True, return_complex=True).abs().square()
        return (torch.log(self.mel_basis @ spec + 1e-5) + 6.0) / 4.0

    # ---- normalisation of the WORLD frames ----------------------------------------------------

    def _targets(self, feats: Tensor, speaker: Tensor) -> Tensor:
        """WORLD frames in the units the decoder predicts: dimensions standardised, log F0 in the
        speaker's own standard units."""
        t = (feats - self.feature_mean) / self.feature_std
        lf0 = (feats[..., world.LF0] - self.pitch_mean[speaker, None]) / self.pitch_std[speaker, None]
        return torch.cat([t[..., :world.LF0], lf0.unsqueeze(-1), feats[..., world.VUV:]], dim=-1)

    def _features(self, pred: Tensor, speaker: Tensor) -> Tensor:
        """The decoder's output back in WORLD's units, log F0 at `speaker`'s pitch."""
        f = pred[..., :world.LF0] * self.feature_std[:world.LF0] + self.feature_mean[:world.LF0]
        lf0 = pred[..., world.LF0] * self.pitch_std[speaker, None] + self.pitch_mean[speaker, None]
        vuv = torch.sigmoid(pred[..., world.VUV])
        return torch.cat([f, lf0.unsqueeze(-1), vuv.unsqueeze(-1)], dim=-1)

    # ---- encoder, decoder ---------------------------------------------------------------------

    def _encode(self, x: Tensor) -> Tensor:
        h = self.log_mel(x)
        if self.training and self.input_warp > 0:
            h = self._warp(h)
        return self.encoder(h)

    def _warp(self, h: Tensor) -> Tensor:
        """Each utterance's mel axis stretched by a random factor in [1 - w, 1 + w] (vocal tract
        length perturbation): the encoder cannot tell voices by where their formants sit."""
        b, m, t = h.shape
        alpha = 1 + (torch.rand(b, 1, device=h.device) * 2 - 1) * self.input_warp
        pos = (torch.arange(m, device=h.device, dtype=h.dtype) * alpha).clamp(max=m - 1)  # (B, mels)
        lo = pos.floor().long().clamp(max=m - 2)
        frac = (pos - lo).unsqueeze(-1)
        gather = lambda idx: torch.gather(h, 1, idx.unsqueeze(-1).expand(-1, -1, t))  # noqa: E731
        return gather(lo) * (1 - frac) + gather(lo + 1) * frac

    def _decode(self, z_q: Tensor, speaker: Tensor, frames: int) -> Tensor:
        s = self.speaker_embedding(speaker)
        up = z_q.repeat_interleave(self.code_frames, dim=-1)[..., :frames]
        if up.shape[-1] < frames:
            up = F.pad(up, (0, frames - up.shape[-1]), mode="replicate")
        first = len(self.decoder_convs) - self.speaker_layers  # the first layer that hears the speaker
        given = s if first == 0 else torch.zeros_like(s)  # the input's speaker channels: only when all do
        h = F.relu(self.decoder_in(torch.cat([up, given.unsqueeze(-1).expand(-1, -1, frames)], dim=1)))
        for i, conv in enumerate(self.decoder_convs):
            h = conv(h)
            if i >= first:
                h = h + self.decoder_speaker[i - first](s).unsqueeze(-1)
            h = F.relu(h)
        # (B, frames, FEATURES) in the normalised units
        return self.head(h).transpose(1, 2) + self.speaker_out(s).unsqueeze(1)

    def forward(self, x: Tensor, cond: dict[str, Tensor] | None = None, mask: Tensor | None = None) -> WorldOutput:
        """cond: the speaker ids and `WORLD`, the frames of x (B, >= T // frame + 1, FEATURES)."""
        if not cond or WORLD not in cond:
            raise ValueError("the WORLD decoder trains on the shards' WORLD frames: shard with "
                             "data.world_frames: true")
        speaker = _speaker(cond, x.shape[0], x.device)
        z_e = self._encode(x)
        frames = self.frames(x.shape[-1])
        feats = cond[WORLD][:, :frames].float()
        if feats.shape[1] < frames:
            feats = F.pad(feats.transpose(1, 2), (0, frames - feats.shape[1]), mode="replicate").transpose(1, 2)
        vq_out = self.vq(z_e, self.latent_mask(mask, (z_e.shape[-1],)))
        pred = self._decode(vq_out.quantized, speaker, frames)
        target = self._targets(feats, speaker)
        voiced = feats[..., world.VUV]
        weight = torch.ones_like(voiced) if mask is None else self._frame_mask(mask, frames).to(voiced.dtype)
        count = weight.sum().clamp(min=1)
        env = ((pred[..., :world.ENVELOPE] - target[..., :world.ENVELOPE]).abs()
               * self.envelope_weight).mean(-1) * weight
        ap = (pred[..., world.ENVELOPE:world.LF0] - target[..., world.ENVELOPE:world.LF0]).abs().mean(-1) * weight
        lf0 = (pred[..., world.LF0] - target[..., world.LF0]).abs() * voiced * weight  # pitch where there is one
        vuv = F.binary_cross_entropy_with_logits(pred[..., world.VUV], voiced, reduction="none") * weight
        per_frame = (world.ENVELOPE * env + world.BANDS * ap + lf0 + vuv) / world.FEATURES
        total = per_frame.sum()
        feature_loss = total / count
        return WorldOutput(None, feature_loss + vq_out.loss, feature_loss.detach(), (env.sum() / count).detach(),
                           vq_out, total.detach(), env.sum().detach(), count.detach())

    @torch.no_grad()
    def encode(self, x: Tensor, cond: dict[str, Tensor] | None = None) -> Tensor:
        """(B, 1, T) -> (B, T // hop) codes."""
        codes = self.vq.nearest(self._encode(x))
        return codes[:, : x.shape[-1] // self.hop]

    @torch.no_grad()
    def decode_features(self, indices: Tensor, cond: dict[str, Tensor] | None = None,
                        frames: int | None = None) -> Tensor:
        """Codes (B, L) and speaker ids -> WORLD frames (B, frames or L * code_frames, FEATURES)."""
        speaker = _speaker(cond, indices.shape[0], indices.device)
        frames = frames or self.code_frames * indices.shape[-1]
        return self._features(self._decode(self.vq.embed(indices), speaker, frames), speaker)

    @torch.no_grad()
    def decode_indices(self, indices: Tensor, cond: dict[str, Tensor] | None = None, track: Track = untracked,
                       **_) -> Tensor:
        """Codes and speaker ids -> waveforms (B, 1, L * hop) in [-1, 1] through the WORLD
        synthesizer (on the CPU, one utterance at a time; deterministic: no temperature)."""
        import numpy as np

        feats = self.decode_features(indices, cond).float().cpu().numpy()
        n = indices.shape[-1] * self.hop
        out = np.zeros((len(feats), 1, n), np.float32)
        for i in track(range(len(feats)), "WORLD synthesis", len(feats), "utterances"):
            y = world.synthesize(feats[i], self.rate)[:n]
            out[i, 0, :len(y)] = y
        return torch.from_numpy(out).to(indices.device)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, cond: dict[str, Tensor] | None = None, mask: Tensor | None = None,
                    generator: torch.Generator | None = None) -> Tensor:
        return self.decode_indices(self.encode(x), cond)


def _speaker(cond: dict[str, Tensor] | None, batch: int, device) -> Tensor:
    if not cond or SPEAKER not in cond:
        raise ValueError("the speech VQ-VAE needs cond['speaker']")
    ids = cond[SPEAKER].to(device).long().view(-1)
    if ids.numel() == 1 and batch > 1:
        ids = ids.expand(batch)
    return ids
