"""A speech VQ-VAE whose decoder predicts WORLD vocoder frames instead of samples (work in progress
toward issue #36: speech that keeps its words; not yet a stage-1 choice).

    model = WorldVQVAE(num_speakers=8, rate=16000)
    out = model(x, feats, {"speaker": ids})     # x (B, 1, T) waveform; feats (B, frames, FEATURES)
    out.loss.backward()
    codes = model.encode(x)                     # (B, frames // 2): one code per 20 ms
    feats = model.decode_features(codes, {"speaker": ids})   # (B, 2 * L, FEATURES)

Encoder: log-mel frames of the waveform (10 ms hop, the ZeroSpeech VQ-VAE baselines' input), a
conv stack that halves the frame rate, a 1x1 to the code dimension. Decoder: codes repeated to
the frame rate, a learnt speaker embedding added, a conv stack and a bidirectional GRU, then a
linear layer to the WORLD frame (pipeline/models/world.py): the envelope's coded
coefficients, band aperiodicities, log F0 in the speaker's own normalised units, and a voicing
logit. One deterministic pass, no sampling: pyworld then synthesizes a waveform with harmonics.
The speaker's log-F0 statistics (`pitch_mean`, `pitch_std`, buffers filled from the training
data) turn the normalised contour into Hz, so a conversion speaks at the target's pitch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pipeline.models.quantizer import VectorQuantizer, VQOutput
from pipeline.models import world

SPEAKER = "speaker"


@dataclass
class WorldOutput:
    loss: Tensor
    feature_loss: Tensor  # the frames' error (envelope, aperiodicity, pitch, voicing), unweighted by VQ
    envelope_loss: Tensor
    vq: VQOutput


class _Res(nn.Module):
    def __init__(self, channels: int, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.out(F.relu(self.conv(F.relu(x))))


class WorldVQVAE(nn.Module):
    def __init__(self, num_speakers: int, rate: int = 16000, mels: int = 80, hidden: int = 256,
                 codebook_size: int = 512, code_dim: int = 64, speaker_dim: int = 64, decoder_layers: int = 4,
                 ema: bool = True, dead_code_steps: int = 100, beta: float = 0.25):
        super().__init__()
        import librosa

        self.rate, self.mels = rate, mels
        self.frame = int(round(rate * world.FRAME_MS / 1000))  # samples per WORLD frame
        self.hop = 2 * self.frame  # samples per code
        self.n_fft = 1 << (4 * self.frame - 1).bit_length()
        self.register_buffer("window", torch.hann_window(4 * self.frame), persistent=False)
        self.register_buffer("mel_basis", torch.from_numpy(
            librosa.filters.mel(sr=rate, n_fft=self.n_fft, n_mels=mels, fmin=50.0)).float(), persistent=False)
        self.encoder = nn.Sequential(
            nn.Conv1d(mels, hidden, 3, padding=1), _Res(hidden), nn.ReLU(),
            nn.Conv1d(hidden, hidden, 4, stride=2, padding=1), _Res(hidden), _Res(hidden, 2), nn.ReLU(),
            nn.Conv1d(hidden, code_dim, 1))
        self.vq = VectorQuantizer(codebook_size, code_dim, beta=beta, ema=ema, dead_code_steps=dead_code_steps)
        self.speaker_embedding = nn.Embedding(num_speakers, speaker_dim)
        self.decoder_in = nn.Conv1d(code_dim + speaker_dim, hidden, 3, padding=1)
        self.decoder_convs = nn.Sequential(*[_Res(hidden, 2 ** (i % 3)) for i in range(decoder_layers)])
        self.gru = nn.GRU(hidden + speaker_dim, hidden // 2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(hidden, world.FEATURES)
        self.register_buffer("pitch_mean", torch.full((num_speakers,), 4.8))
        self.register_buffer("pitch_std", torch.full((num_speakers,), 0.2))
        self.register_buffer("feature_mean", torch.zeros(world.FEATURES))
        self.register_buffer("feature_std", torch.ones(world.FEATURES))

    # ---- the input: log-mel frames of the waveform -------------------------------------------

    def log_mel(self, x: Tensor) -> Tensor:
        """(B, 1, T) -> (B, mels, T // frame + 1): one frame per WORLD frame, centred as WORLD's."""
        spec = torch.stft(x[:, 0].float(), self.n_fft, hop_length=self.frame, win_length=4 * self.frame,
                          window=self.window, center=True, return_complex=True).abs().square()
        return torch.log(self.mel_basis @ spec + 1e-5)

    def frames(self, samples: int) -> int:
        return samples // self.frame + 1

    # ---- normalisation of the WORLD frames ----------------------------------------------------

    def set_statistics(self, features: list, speakers: list[int]) -> None:
        """Fill the per-speaker log-F0 statistics and the per-dimension feature scale from the
        training utterances' WORLD frames (numpy (frames, FEATURES) each)."""
        import numpy as np

        by_speaker: dict[int, list] = {}
        for f, s in zip(features, speakers):
            by_speaker.setdefault(int(s), []).append(f)
        for s, fs in by_speaker.items():
            mean, std = world.pitch_stats(fs)
            self.pitch_mean[s], self.pitch_std[s] = mean, std
        stacked = np.concatenate(features)
        self.feature_mean.copy_(torch.from_numpy(stacked.mean(0)))
        self.feature_std.copy_(torch.from_numpy(stacked.std(0).clip(1e-3)))

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
        return self.encoder(self.log_mel(x))

    def _decode(self, z_q: Tensor, speaker: Tensor, frames: int) -> Tensor:
        s = self.speaker_embedding(speaker)
        up = z_q.repeat_interleave(2, dim=-1)[..., :frames]
        if up.shape[-1] < frames:
            up = F.pad(up, (0, frames - up.shape[-1]), mode="replicate")
        h = self.decoder_in(torch.cat([up, s.unsqueeze(-1).expand(-1, -1, frames)], dim=1))
        h = F.relu(self.decoder_convs(h)).transpose(1, 2)
        h, _ = self.gru(torch.cat([h, s.unsqueeze(1).expand(-1, frames, -1)], dim=-1))
        return self.head(h)  # (B, frames, FEATURES) in the normalised units

    def forward(self, x: Tensor, feats: Tensor, cond: dict[str, Tensor], mask: Tensor | None = None) -> WorldOutput:
        """`feats` (B, frames, FEATURES): the WORLD frames of `x` (frames = T // frame + 1)."""
        speaker = cond[SPEAKER].to(x.device).long().view(-1)
        z_e = self._encode(x)
        frames = feats.shape[1]
        frame_mask = None if mask is None else mask[:, ::self.frame][:, :frames]
        vq_out = self.vq(z_e, None if frame_mask is None else frame_mask[:, ::2][:, :z_e.shape[-1]])
        pred = self._decode(vq_out.quantized, speaker, frames)
        target = self._targets(feats, speaker)
        voiced = feats[..., world.VUV]
        weight = torch.ones_like(voiced) if frame_mask is None else frame_mask.to(voiced.dtype)
        count = weight.sum().clamp(min=1)
        env = ((pred[..., :world.ENVELOPE] - target[..., :world.ENVELOPE]).abs().mean(-1) * weight).sum() / count
        ap = ((pred[..., world.ENVELOPE:world.LF0] - target[..., world.ENVELOPE:world.LF0]).abs().mean(-1)
              * weight).sum() / count
        lf0 = ((pred[..., world.LF0] - target[..., world.LF0]).abs() * weight * voiced).sum() / \
            (weight * voiced).sum().clamp(min=1)
        vuv = (F.binary_cross_entropy_with_logits(pred[..., world.VUV], voiced, reduction="none") * weight).sum() / count
        feature_loss = env + ap + lf0 + vuv
        return WorldOutput(feature_loss + vq_out.loss, feature_loss.detach(), env.detach(), vq_out)

    @torch.no_grad()
    def encode(self, x: Tensor, cond: dict[str, Tensor] | None = None) -> Tensor:
        return self.vq.nearest(self._encode(x))

    @torch.no_grad()
    def decode_features(self, indices: Tensor, cond: dict[str, Tensor], frames: int | None = None) -> Tensor:
        """Codes (B, L) and speaker ids -> WORLD frames (B, frames or 2L, FEATURES) in WORLD's units."""
        speaker = cond[SPEAKER].to(indices.device).long().view(-1)
        frames = frames or 2 * indices.shape[-1]
        return self._features(self._decode(self.vq.embed(indices), speaker, frames), speaker)

    @torch.no_grad()
    def decode_indices(self, indices: Tensor, cond: dict[str, Tensor], **_) -> Tensor:
        """Codes and speaker ids -> waveforms (B, 1, 2L * frame) through the WORLD synthesizer."""
        import numpy as np

        feats = self.decode_features(indices, cond).cpu().numpy()
        n = 2 * indices.shape[-1] * self.frame
        out = np.zeros((len(feats), 1, n), np.float32)
        for i, f in enumerate(feats):
            y = world.synthesize(f, self.rate)[:n]
            out[i, 0, :len(y)] = y
        return torch.from_numpy(out)
