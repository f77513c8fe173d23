"""WaveNet (van den Oord et al. 2016, arXiv 1609.03499): an autoregressive model of a sequence of
class ids, here used twice: as the speech VQ-VAE's decoder (8-bit mu-law samples, conditioned on
the upsampled codes and a speaker) and as the speech prior (code ids, conditioned on a speaker).

    net = WaveNet(num_classes=256, channels=64, num_layers=20, cycle=10,
                  local_channels=64, global_channels=32)
    logits = net(x, local, glob)          # x (B, T) int64; local (B, local_channels, T); glob (B, G)
    logits = net(x, codes, glob, hop=64)  # local at a 64x lower rate: each column serves 64 steps
    x = net.generate(num_steps, local, glob, generator=g)   # cached: O(layers) per step

Each layer is a dilated causal conv (dilations 1, 2, 4, ... restarting every `cycle` layers)
with a gated unit tanh(f) * sigmoid(g), conditioning added inside the gate, and residual and skip
1x1 convs; the skips are summed and turned into logits by ReLU, 1x1, ReLU, 1x1. The output at t
sees the inputs before t only: the input is shifted right by one step behind a start token.

Generation keeps, per layer, the last (kernel_size - 1) * dilation inputs in a queue (the "fast
WaveNet" of Paine et al. 2016), so each new step costs one column per layer instead of a re-run
of the receptive field; `generate_naive` re-runs it and draws from the same random numbers, so the
two give the same samples (tests and bench/wavenet_generation.py compare them).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.models import Track, untracked


def mu_law_encode(x: Tensor, bits: int = 8) -> Tensor:
    """Waveform in [-1, 1] -> int64 classes 0 .. 2**bits - 1 (mu-law companding, mu = 2**bits - 1)."""
    mu = 2**bits - 1
    x = x.float().clamp(-1.0, 1.0)
    y = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)
    return ((y + 1) / 2 * mu + 0.5).floor().long().clamp_(0, mu)


def mu_law_decode(q: Tensor, bits: int = 8) -> Tensor:
    """int64 classes -> waveform in [-1, 1] (the inverse of mu_law_encode up to its quantisation)."""
    mu = 2**bits - 1
    y = q.float() / mu * 2 - 1
    return torch.sign(y) * ((1 + mu) ** y.abs() - 1) / mu


def gate(h: Tensor) -> Tensor:
    f, g = h.chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


class CausalLayer(nn.Module):
    """One dilated causal conv with a gated unit; returns (residual output, skip). The last layer
    of a stack has no residual 1x1 (`residual=False`; it returns its input): nothing reads its
    residual output, and a parameter without a gradient stops DDP's backward on every rank."""

    def __init__(self, channels: int, skip_channels: int, kernel_size: int, dilation: int, residual: bool = True):
        super().__init__()
        self.kernel_size, self.dilation = kernel_size, dilation
        self.conv = nn.Conv1d(channels, 2 * channels, kernel_size, dilation=dilation)
        self.res = nn.Conv1d(channels, channels, 1) if residual else None
        self.skip = nn.Conv1d(channels, skip_channels, 1)

    @property
    def history(self) -> int:
        """How many past inputs one output step reads."""
        return (self.kernel_size - 1) * self.dilation

    def forward(self, x: Tensor, cond: Tensor | None, hop: int = 1) -> tuple[Tensor, Tensor]:
        """cond (B, 2C, T / hop) or (B, 2C, 1): each column is added to `hop` output steps (a
        broadcast, never a (B, 2C, T) copy)."""
        h = self.conv(F.pad(x, (self.history, 0)))
        if cond is not None:
            if hop > 1 and cond.shape[-1] > 1:
                b, c, t = h.shape
                h = (h.view(b, c, t // hop, hop) + cond.unsqueeze(-1)).view(b, c, t)
            else:
                h = h + cond
        z = gate(h)
        if self.res is None:
            return x, self.skip(z)
        return (x + self.res(z)) * math.sqrt(0.5), self.skip(z)

    def step_weights(self) -> tuple:
        """The layer as matrices for one time step: per tap (oldest first, then now) W (C, 2C),
        the bias, and the residual and skip 1x1s fused into one (C, C + S) matrix."""
        w = self.conv.weight  # (2C, C, kernel): tap j reads the input (kernel - 1 - j) * dilation back
        taps = [w[:, :, j].t().contiguous() for j in range(self.kernel_size)]
        skip_w, skip_b = self.skip.weight.squeeze(-1), self.skip.bias
        if self.res is None:  # the last layer: a zero residual, whose output nothing reads
            res_w = skip_w.new_zeros(skip_w.shape[1], skip_w.shape[1])
            res_b = skip_b.new_zeros(skip_w.shape[1])
        else:
            res_w, res_b = self.res.weight.squeeze(-1), self.res.bias
        return taps, self.conv.bias, torch.cat([res_w, skip_w]).t().contiguous(), torch.cat([res_b, skip_b])


class WaveNet(nn.Module):
    def __init__(self, num_classes: int = 256, channels: int = 64, skip_channels: int = 128,
                 num_layers: int = 20, cycle: int = 10, kernel_size: int = 2,
                 local_channels: int = 0, global_channels: int = 0, scalar_input: bool = False):
        super().__init__()
        if kernel_size < 2:
            raise ValueError(f"kernel_size must be >= 2, got {kernel_size}")
        self._config = dict(num_classes=num_classes, channels=channels, skip_channels=skip_channels,
                            num_layers=num_layers, cycle=cycle, kernel_size=kernel_size,
                            local_channels=local_channels, global_channels=global_channels,
                            scalar_input=scalar_input)
        self.num_classes, self.channels, self.scalar_input = num_classes, channels, scalar_input
        self.start = num_classes  # the token before the first step
        if scalar_input:
            # Ordered classes (mu-law levels) read as their value v in [-1, 1]: the input is
            # v * weight + bias, so neighbouring levels start out alike and the net can predict
            # linearly from the first step; an embedding table learns each level apart.
            self.input_weight = nn.Parameter(torch.randn(channels))
            self.input_bias = nn.Parameter(torch.zeros(channels))
            self.start_vector = nn.Parameter(torch.zeros(channels))
        else:
            self.embedding = nn.Embedding(num_classes + 1, channels)
        self.layers = nn.ModuleList(
            CausalLayer(channels, skip_channels, kernel_size, 2 ** (i % cycle), residual=i < num_layers - 1)
            for i in range(num_layers))
        # Weights saved before the last layer lost its residual 1x1 (2026-12-06) hold one that
        # nothing read: dropped on load, whatever loads them (a registered model, a checkpoint).
        self._register_load_state_dict_pre_hook(self._drop_unread_residual)
        # Every layer's conditioning projections in one conv / linear (2 * channels each).
        self.local = nn.Conv1d(local_channels, 2 * channels * num_layers, 1) if local_channels else None
        self.glob = nn.Linear(global_channels, 2 * channels * num_layers) if global_channels else None
        self.head = nn.Sequential(nn.ReLU(), nn.Conv1d(skip_channels, skip_channels, 1), nn.ReLU(),
                                  nn.Conv1d(skip_channels, num_classes, 1))

    def _drop_unread_residual(self, state_dict, prefix, *args) -> None:
        for name in ("weight", "bias"):
            state_dict.pop(f"{prefix}layers.{len(self.layers) - 1}.res.{name}", None)

    @property
    def config(self) -> dict[str, Any]:
        return dict(self._config)

    @property
    def receptive_field(self) -> int:
        """Steps of input one output depends on (the shift included)."""
        return 1 + sum(layer.history for layer in self.layers)

    def _cond(self, local: Tensor | None, glob: Tensor | None) -> Tensor | None:
        """(B, layers * 2C, T or 1) conditioning of every layer."""
        cond = None
        if self.local is not None:
            if local is None:
                raise ValueError("this WaveNet is conditioned on a local input; none was given")
            cond = self.local(local)
        if self.glob is not None:
            if glob is None:
                raise ValueError("this WaveNet is conditioned on a global input; none was given")
            g = self.glob(glob).unsqueeze(-1)
            cond = g if cond is None else cond + g
        return cond

    def input_table(self) -> Tensor:
        """(num_classes + 1, C): the input vector of every class and of the start token."""
        if not self.scalar_input:
            return self.embedding.weight
        value = torch.linspace(-1.0, 1.0, self.num_classes, device=self.input_weight.device,
                               dtype=self.input_weight.dtype)
        return torch.cat([value[:, None] * self.input_weight + self.input_bias, self.start_vector[None]])

    def forward_embedded(self, e: Tensor, local: Tensor | None = None, glob: Tensor | None = None,
                         hop: int = 1) -> Tensor:
        """Logits (B, num_classes, T) from the embedded inputs e (B, C, T), not yet shifted (a leaf
        e lets tests read the causal field from gradients)."""
        start = self.input_table()[self.start].view(1, -1, 1).expand(e.shape[0], -1, 1)
        x = torch.cat([start, e[:, :, :-1]], dim=-1)
        return self._stack(x, self._cond(local, glob), hop)

    def _stack(self, x: Tensor, cond: Tensor | None, hop: int = 1) -> Tensor:
        """The layers and the head; cond (B, layers * 2C, T / hop or 1)."""
        if cond is not None and cond.shape[-1] > 1 and cond.shape[-1] * hop != x.shape[-1]:
            # a length that is not a whole number of columns: repeat them and crop
            cond, hop = cond.repeat_interleave(hop, dim=-1)[..., :x.shape[-1]], 1
        # split, not a slice per layer: one backward node instead of a zero-filled (B, layers * 2C,
        # T) gradient per layer
        conds = cond.split(2 * self.channels, dim=1) if cond is not None else [None] * len(self.layers)
        skips = 0
        for layer, c in zip(self.layers, conds):
            x, skip = layer(x, c, hop)
            skips = skips + skip
        return self.head(skips)

    def embed(self, x: Tensor) -> Tensor:
        return F.embedding(x, self.input_table()).transpose(1, 2).contiguous()  # channels-first grads suit DDP

    def forward(self, x: Tensor, local: Tensor | None = None, glob: Tensor | None = None, hop: int = 1) -> Tensor:
        """x (B, T) int64 classes -> logits (B, num_classes, T); logits[..., t] predict x[:, t]
        from x[:, :t], local[..., :(t // hop) + 1] and glob. `local` (B, local_channels, T / hop)
        holds one column per `hop` steps (the codes at their own rate)."""
        return self.forward_embedded(self.embed(x), local, glob, hop)

    # ---- generation ---------------------------------------------------------------------------

    def _draw(self, logits: Tensor, temperature: float, u: Tensor) -> Tensor:
        """Inverse-CDF draw from softmax(logits / temperature) with uniforms u (B,)."""
        cdf = torch.softmax(logits.double() / temperature, dim=-1).cumsum(-1)
        cdf = cdf / cdf[:, -1:]
        return torch.searchsorted(cdf, u.double().unsqueeze(-1).to(cdf.device)).squeeze(-1).clamp_(max=self.num_classes - 1)

    @staticmethod
    def _uniforms(num_steps: int, batch: int, generator: torch.Generator | None) -> Tensor:
        device = generator.device if generator is not None else "cpu"
        return torch.rand(num_steps, batch, generator=generator, device=device, dtype=torch.float64)

    def _cond_at(self, cond: Tensor | None, t: int, hop: int) -> Tensor | None:
        if cond is None:
            return None
        return cond[:, :, 0] if cond.shape[-1] == 1 else cond[:, :, t // hop]

    @torch.no_grad()
    def generate(self, num_steps: int, local: Tensor | None = None, glob: Tensor | None = None,
                 batch: int | None = None, temperature: float = 1.0, generator: torch.Generator | None = None,
                 hop: int = 1, feedback: Callable[[int, Tensor], Tensor] | None = None,
                 track: Track = untracked) -> Tensor:
        """Ancestral samples (B, num_steps) int64, one column per layer per step.

        `local` (B, local_channels, ceil(num_steps / hop)) holds the conditioning at `hop`
        times the output's step (the codes at their own rate: each column is used for `hop`
        steps, as the decoder's upsampling repeats it); `glob` (B, global_channels).
        `feedback(t, drawn)`, called once per step in order, gives the next step's input classes
        from the classes drawn at step t (default: the drawn classes themselves); the speech
        decoder uses it when it draws an excitation but reads back the sample it makes. `track` wraps
        the steps (a progress bar)."""
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        table = self.input_table()
        device = table.device
        batch = batch or next(t.shape[0] for t in (local, glob) if t is not None)
        cond = self._cond(local, glob)  # 1x1 projections commute with repeating columns
        u = self._uniforms(num_steps, batch, generator)
        c2 = 2 * self.channels
        # per layer, its last `history` inputs in a ring: step t writes slot t % history
        rings = [torch.zeros(batch, layer.history, self.channels, device=device, dtype=table.dtype)
                 for layer in self.layers]
        weights = [layer.step_weights() for layer in self.layers]
        out = torch.empty(batch, num_steps, dtype=torch.long, device=device)
        prev = torch.full((batch,), self.start, dtype=torch.long, device=device)
        was_training = self.training
        self.eval()
        try:
            for t in track(range(num_steps), "generating", unit="samples"):
                x = F.embedding(prev, table)
                c = self._cond_at(cond, t, hop)
                skips = None
                for i, (layer, (taps, bias, w_out, b_out)) in enumerate(zip(self.layers, weights)):
                    ring, d, k = rings[i], layer.dilation, layer.kernel_size
                    h = torch.addmm(bias, x, taps[-1])
                    for j in range(k - 1):  # tap j reads the input (k - 1 - j) * d steps back
                        h.addmm_(ring[:, (t - (k - 1 - j) * d) % ring.shape[1]], taps[j])
                    if c is not None:
                        h += c[:, i * c2:(i + 1) * c2]
                    f, g = h.chunk(2, dim=1)
                    z = torch.tanh(f).mul_(torch.sigmoid(g))
                    rs = torch.addmm(b_out, z, w_out)
                    ring[:, t % ring.shape[1]] = x  # after the reads: the slot held the input history steps back
                    x = (x + rs[:, :self.channels]).mul_(math.sqrt(0.5))
                    skips = rs[:, self.channels:] if skips is None else skips.add_(rs[:, self.channels:])
                logits = self.head(skips.unsqueeze(-1)).squeeze(-1)
                drawn = self._draw(logits, temperature, u[t]).to(device)
                out[:, t] = drawn
                prev = drawn if feedback is None else feedback(t, drawn)
        finally:
            self.train(was_training)
        return out

    @torch.no_grad()
    def generate_naive(self, num_steps: int, local: Tensor | None = None, glob: Tensor | None = None,
                       batch: int | None = None, temperature: float = 1.0,
                       generator: torch.Generator | None = None, hop: int = 1,
                       feedback: Callable[[int, Tensor], Tensor] | None = None) -> Tensor:
        """The same draws as `generate`, re-running the whole receptive field for every step."""
        device = self.input_table().device
        batch = batch or next(t.shape[0] for t in (local, glob) if t is not None)
        cond = self._cond(local, glob)
        if cond is not None and cond.shape[-1] > 1:
            cond = cond.repeat_interleave(hop, dim=-1)
        u = self._uniforms(num_steps, batch, generator)
        field = self.receptive_field
        inputs = torch.full((batch, num_steps + 1), self.start, dtype=torch.long, device=device)
        out = torch.empty(batch, num_steps, dtype=torch.long, device=device)
        was_training = self.training
        self.eval()
        try:
            for t in range(num_steps):
                lo = max(0, t + 1 - field)
                # inputs[:, lo] is the start token (lo == 0) or a real sample; the layers' zero
                # padding before the window reaches no input the last output depends on.
                window = self.embed(inputs[:, lo:t + 1])
                c = None if cond is None else (cond if cond.shape[-1] == 1 else cond[:, :, lo:t + 1])
                logits = self._stack(window, c)[:, :, -1]
                out[:, t] = self._draw(logits, temperature, u[t]).to(device)
                inputs[:, t + 1] = out[:, t] if feedback is None else feedback(t, out[:, t])
        finally:
            self.train(was_training)
        return out
