"""Causal transformer prior over video code arrays, conditioned on per-frame actions.

The video prior of the VQ-VAE paper (arXiv 1711.00937, section 4.4): the codes of a window of
video, (B, T, H, W) int64 (T latent time steps of H x W grids), modelled autoregressively in
(time, row, column) raster order by a small decoder-only transformer:

    prior = VideoPrior(codebook_size=512, latent_shape=(4, 16, 16), num_actions=3,
                       frames_per_step=4, num_frames=16)
    out = prior(codes, {"actions": actions})     # codes (B, T, H, W), actions (B, num_frames)
    out.logits                                   # (B, codebook_size, T, H, W)
    out.loss.backward()                          # NLL in bits per code (cross-entropy / ln 2)
    codes = prior.sample({"actions": actions}, given=codes[:, :1])   # continue from step 0

Input to position i: the embedding of the code at i-1 (a learnt start vector at i = 0), plus
learnt (factorised) embeddings of i's time step, row and column, plus the action conditioning of
i's time step, plus the class embedding, plus (from the second time step on) a 3x3 conv over
the embeddings of the previous time step's codes around i's row and column, plus (with
`action_shift` k > 0) a depthwise k x k filter over the same embeddings, one filter per action,
mixed by the actions driving i's step. The output at i: logits over the codebook for the code at
i, so the logits at i depend only on the codes strictly before i.

Action convention (that of the video data, gym / ViZDoom step): `actions[j]`, one per INPUT frame,
is taken after frame j is shown and drives frame j + 1; the last action of a window drives nothing
inside it. With f = frames_per_step input frames per latent step (2**temporal_downsamples of the
video VQ-VAE), step t covers frames [t*f, (t+1)*f), driven by the actions j in [t*f - 1, (t+1)*f - 1).
j = -1 ("nothing drives frame 0") is a learnt start action. The conditioning of step t, the mean of
the embeddings of those f actions, is added to every position of step t. Changing action j
therefore changes the logits of the step holding frame j + 1 and (through attention) later steps,
never an earlier one.

`sample` draws one position at a time with a key/value cache, after a single forward over the
`given` time steps; `sample_naive` re-runs the full forward per position (same codes, for tests).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models import Track, untracked
from pipeline.models.prior import PriorOutput, nll_bits

Cache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values (B, heads, N, head_dim)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: causal self-attention, then a 4x GELU MLP."""

    def __init__(self, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None = None,
                start: int = 0) -> torch.Tensor:
        """x (B, L, d): positions start .. start+L-1. Without a cache, start must be 0 (causal over
        x); with one, the keys and values of x are written into it at [start, start+L) and the
        queries attend to every cached position before start+L."""
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        if cache is None:
            att = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                 dropout_p=self.dropout if self.training else 0.0)
        else:
            keys, values = cache
            keys[:, :, start:start + n] = k
            values[:, :, start:start + n] = v
            k, v = keys[:, :, :start + n], values[:, :, :start + n]
            if n == 1:  # one query, the newest position: it sees every cached key
                att = F.scaled_dot_product_attention(q, k, v)
            else:  # prefill from position 0 (the only multi-position use)
                if start != 0:
                    raise ValueError("a multi-position cached forward must start at position 0")
                att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, n, d)))
        return x + self.drop(self.mlp(self.norm2(x)))


class VideoPrior(nn.Module):
    """Decoder-only transformer over (B, T, H, W) video codes, conditioned on per-frame actions
    (`cond[action_key]`, (B, num_frames), when num_actions > 0) and a class id per sample
    (`cond[class_key]`, (B,), when num_classes > 0)."""

    role = "prior"  # what tracking.load_prior accepts

    def __init__(
        self,
        codebook_size: int,
        latent_shape: tuple[int, int, int] | list[int],
        num_actions: int = 0,
        frames_per_step: int = 1,
        num_frames: int | None = None,
        num_classes: int = 0,
        action_key: str = "actions",
        class_key: str = "labels",
        d_model: int = 128,
        num_layers: int = 4,
        num_heads: int = 4,
        dropout: float = 0.0,
        previous_frame: bool = True,
        action_shift: int = 0,
    ):
        super().__init__()
        latent_shape = tuple(int(n) for n in latent_shape)
        if len(latent_shape) != 3 or min(latent_shape) < 1:
            raise ValueError(f"latent_shape must be (T, H, W) of positive sizes, got {latent_shape}")
        if codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2, got {codebook_size}")
        if num_actions < 0 or num_classes < 0:
            raise ValueError(f"num_actions and num_classes must be >= 0, got {num_actions}, {num_classes}")
        if frames_per_step < 1:
            raise ValueError(f"frames_per_step must be >= 1, got {frames_per_step}")
        num_frames = latent_shape[0] * frames_per_step if num_frames is None else int(num_frames)
        if num_frames != latent_shape[0] * frames_per_step:
            raise ValueError(f"num_frames ({num_frames}) must be T * frames_per_step = "
                             f"{latent_shape[0]} * {frames_per_step}")
        if d_model < 1 or num_layers < 1 or num_heads < 1 or d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be a positive multiple of num_heads ({num_heads}); "
                             f"num_layers ({num_layers}) >= 1")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if action_shift < 0 or (action_shift and action_shift % 2 == 0):
            raise ValueError(f"action_shift must be 0 (off) or an odd kernel size, got {action_shift}")
        self._config = dict(
            codebook_size=codebook_size, latent_shape=list(latent_shape), num_actions=num_actions,
            frames_per_step=frames_per_step, num_frames=num_frames, num_classes=num_classes,
            action_key=action_key, class_key=class_key, d_model=d_model, num_layers=num_layers,
            num_heads=num_heads, dropout=dropout, previous_frame=previous_frame,
        )
        if action_shift:  # absent from the configs of priors made before it existed
            self._config["action_shift"] = action_shift
        self.codebook_size, self.latent_shape = codebook_size, latent_shape
        self.num_actions, self.frames_per_step, self.num_frames = num_actions, frames_per_step, num_frames
        self.num_classes, self.action_key, self.class_key = num_classes, action_key, class_key
        self.d_model, self.num_heads = d_model, num_heads
        t, h, w = latent_shape
        self.num_positions = t * h * w

        self.code_embedding = nn.Embedding(codebook_size, d_model)
        self.start = nn.Parameter(torch.zeros(d_model))
        self.time_embedding = nn.Embedding(t, d_model)
        self.row_embedding = nn.Embedding(h, d_model)
        self.column_embedding = nn.Embedding(w, d_model)
        # index num_actions: the start action (nothing drives frame 0)
        self.action_embedding = nn.Embedding(num_actions + 1, d_model) if num_actions else None
        self.class_embedding = nn.Embedding(num_classes, d_model) if num_classes else None
        # The codes of the previous time step around each position (a 3x3 conv over their
        # embeddings): the whole previous step comes before any position of this one, so this
        # keeps the order causal, and it hands every position the place it most likely copies or
        # shifts from (a turn moves the view sideways by about a code per frame).
        self.previous = nn.Conv2d(d_model, d_model, 3, padding=1) if previous_frame and t > 1 else None
        # How the view moves under an action: per action (and the start action) a depthwise
        # k x k kernel over the previous step's code embeddings, mixed by the actions driving the
        # step (their mean, as for the action embedding). A turn shifts the view by a code or two
        # a frame: with these the shift is a learnt filter chosen by the action, which the shared
        # 3x3 conv and the attention would otherwise have to build from the added action vector.
        self.action_shift = (nn.Parameter(0.02 * torch.randn(num_actions + 1, d_model, action_shift, action_shift))
                             if action_shift and num_actions and self.previous is not None else None)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, num_heads, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, codebook_size)

        grid = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"))
        self.register_buffer("position_index", grid.reshape(3, -1), persistent=False)  # (3, N): time, row, col
        # (T, f): 1 + the frame index j of each action driving step t (0: the start action)
        steps = torch.arange(t).view(-1, 1) * frames_per_step + torch.arange(frames_per_step).view(1, -1)
        self.register_buffer("action_index", steps, persistent=False)

        self.apply(self._init)
        for block in self.blocks:  # GPT-2: residual projections scaled by depth
            for proj in (block.proj, block.mlp[-1]):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * num_layers))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments, JSON-serialisable: weights + this dict rebuild the model."""
        return dict(self._config)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "VideoPrior":
        return cls(**config)

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    # -- conditioning -------------------------------------------------------------------------

    def _condition(self, cond: dict[str, torch.Tensor] | None, batch: int | None, device):
        """-> (the conditioning vector of each time step (B, T, d) (actions + class) or None, the
        mixture of the actions driving each time step (B, T, num_actions + 1) for the action
        shift, or None)."""
        cond = cond or {}
        out = mix = None
        if self.action_embedding is not None:
            actions = cond.get(self.action_key)
            if actions is None:
                raise ValueError(f"this prior is conditioned on actions: give cond[{self.action_key!r}] "
                                 f"of shape (B, {self.num_frames})")
            actions = torch.as_tensor(actions).to(device=device, dtype=torch.long)
            if actions.dim() != 2 or actions.shape[1] != self.num_frames or (batch is not None and actions.shape[0] != batch):
                raise ValueError(f"cond[{self.action_key!r}] must have shape ({batch if batch is not None else 'B'}, "
                                 f"{self.num_frames}) (one action per input frame), got {tuple(actions.shape)}")
            if actions.numel() and (actions.min() < 0 or actions.max() >= self.num_actions):
                raise ValueError(f"actions must be in [0, {self.num_actions}), got values in "
                                 f"[{actions.min().item()}, {actions.max().item()}]")
            start = torch.full_like(actions[:, :1], self.num_actions)
            padded = torch.cat([start, actions], dim=1)  # column j + 1 holds action j; column 0 the start
            driving = padded[:, self.action_index]  # (B, T, f): actions j in [t*f - 1, (t+1)*f - 1)
            out = self.action_embedding(driving).mean(dim=2)
            if self.action_shift is not None:
                mix = F.one_hot(driving, self.num_actions + 1).to(self.action_shift.dtype).mean(dim=2)
            batch = actions.shape[0]
        if self.class_embedding is not None:
            labels = cond.get(self.class_key)
            if labels is None:
                raise ValueError(f"this prior is conditioned on class ids: give cond[{self.class_key!r}] of shape (B,)")
            labels = torch.as_tensor(labels).to(device=device, dtype=torch.long).view(-1)
            if batch is not None and labels.shape[0] != batch:
                raise ValueError(f"cond[{self.class_key!r}] must have shape ({batch},), got {tuple(labels.shape)}")
            vec = self.class_embedding(labels)[:, None].expand(-1, self.latent_shape[0], -1)  # (B, T, d)
            out = vec if out is None else out + vec
        return out, mix

    def _previous_step(self, grid: torch.Tensor, first: int, last: int, mix: torch.Tensor | None) -> torch.Tensor:
        """(B, last - first + 1, H * W, d): for each time step first .. last, the previous step's
        codes in `grid` (B, T, H, W) seen through the 3x3 conv, plus the action shift under the
        step's action mixture `mix` (B, T, A + 1) when the model has one (zeros for step 0)."""
        b, (_, h, w) = grid.shape[0], self.latent_shape
        out = torch.zeros(b, last - first + 1, h * w, self.d_model, device=grid.device,
                          dtype=self.code_embedding.weight.dtype)
        lo = max(first, 1)
        if lo <= last:
            e = self.code_embedding(grid[:, lo - 1:last])  # (B, n, H, W, d)
            n = e.shape[1]
            e = e.reshape(b * n, h, w, -1).permute(0, 3, 1, 2)  # (B*n, d, H, W)
            f = self.previous(e)
            if self.action_shift is not None:
                d, k = self.d_model, self.action_shift.shape[-1]
                kernels = torch.einsum("bna,adij->bndij", mix[:, lo:last + 1].to(e.dtype),
                                       self.action_shift.to(e.dtype)).reshape(b * n * d, 1, k, k)
                f = f + F.conv2d(e.reshape(1, b * n * d, h, w), kernels, padding=k // 2,
                                 groups=b * n * d).view(b * n, d, h, w)
            out[:, lo - first:] = f.reshape(b, n, -1, h * w).transpose(2, 3).to(out.dtype)
        return out

    def _inputs(self, prev_codes: torch.Tensor, start: int, step_cond: tuple,
                with_start: bool, grid: torch.Tensor) -> torch.Tensor:
        """Transformer inputs at positions start .. start+L-1. prev_codes (B, L') are the codes at
        the positions before each (one fewer than L when with_start: position 0 takes the start
        vector); grid (B, T, H, W) holds at least every time step before the last position's."""
        x = self.code_embedding(prev_codes)
        if with_start:
            x = torch.cat([self.start.to(x.dtype).expand(x.shape[0], 1, -1), x], dim=1)
        n = x.shape[1]
        t, r, c = self.position_index[:, start:start + n]
        x = x + self.time_embedding(t) + self.row_embedding(r) + self.column_embedding(c)
        vec, mix = step_cond
        if vec is not None:
            x = x + vec[:, t]
        if self.previous is not None:
            first = int(t[0])
            previous = self._previous_step(grid, first, int(t[-1]), mix)
            x = x + previous[:, t - first, r * self.latent_shape[2] + c]
        return self.drop(x)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x))

    # -- training -----------------------------------------------------------------------------

    def _check_codes(self, codes: torch.Tensor) -> None:
        if codes.dim() != 4 or tuple(codes.shape[1:]) != self.latent_shape:
            raise ValueError(f"codes must have shape (B, {', '.join(map(str, self.latent_shape))}), "
                             f"got {tuple(codes.shape)}")

    def logits(self, codes: torch.Tensor, cond: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """codes (B, T, H, W) int64 -> logits (B, codebook_size, T, H, W)."""
        self._check_codes(codes)
        b = codes.shape[0]
        step_cond = self._condition(cond, b, codes.device)
        x = self._inputs(codes.reshape(b, -1)[:, :-1], 0, step_cond, with_start=True, grid=codes)
        for block in self.blocks:
            x = block(x)
        out = self._head(x)  # (B, N, K)
        return out.transpose(1, 2).reshape(b, self.codebook_size, *self.latent_shape)

    def forward(self, codes: torch.Tensor, cond: dict[str, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None) -> PriorOutput:
        logits = self.logits(codes, cond)
        return PriorOutput(logits, nll_bits(logits, codes, mask))

    # -- sampling -----------------------------------------------------------------------------

    def _sample_setup(self, cond, shape, temperature, num_samples, given):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if shape is not None and tuple(shape) != self.latent_shape:
            raise ValueError(f"shape must be the prior's latent_shape {self.latent_shape}, got {tuple(shape)}")
        device = self.code_embedding.weight.device
        sizes = {f"cond[{k!r}]": len(v) for k, v in (cond or {}).items()
                 if k in (self.action_key, self.class_key) and v is not None}
        if given is not None:
            sizes["given"] = given.shape[0]
        if num_samples is not None:
            sizes["num_samples"] = num_samples
        if not sizes:
            raise ValueError("give num_samples, the conditioning in cond, or given codes")
        if len(set(sizes.values())) > 1:
            raise ValueError(f"batch sizes disagree: {sizes}")
        batch = next(iter(sizes.values()))
        codes = torch.zeros(batch, *self.latent_shape, dtype=torch.long, device=device)
        steps = 0
        if given is not None:
            t, h, w = self.latent_shape
            if given.dim() != 4 or tuple(given.shape[2:]) != (h, w) or given.shape[1] > t:
                raise ValueError(f"given must have shape (B, t0 <= {t}, {h}, {w}), got {tuple(given.shape)}")
            steps = given.shape[1]
            codes[:, :steps] = given.to(device=device, dtype=torch.long)
        step_cond = self._condition(cond, batch, device)
        return codes, steps * self.latent_shape[1] * self.latent_shape[2], step_cond

    def _draw(self, logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
        probs = F.softmax(logits.float() / temperature, dim=-1)
        if generator is not None:
            probs = probs.to(generator.device)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    @torch.no_grad()
    def sample(
        self,
        cond: dict[str, torch.Tensor] | None = None,
        shape: tuple[int, ...] | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        num_samples: int | None = None,
        given: torch.Tensor | None = None,
        track: Track = untracked,
    ) -> torch.Tensor:
        """Ancestral sampling in raster order with a key/value cache -> codes (B, T, H, W) int64.

        cond: {action_key: (B, num_frames), class_key: (B,)} as the model needs (None for an
        unconditional model, with num_samples or given). given (B, t0, H, W): the first t0 time
        steps, copied unchanged into the output; one forward over them, then one position per step.
        The draw uses the generator's device, so a seeded CPU generator gives the same codes
        whatever device the model is on.
        """
        codes, first, step_cond = self._sample_setup(cond, shape, temperature, num_samples, given)
        n = self.num_positions
        if first >= n:
            return codes
        b, flat = codes.shape[0], codes.view(codes.shape[0], -1)
        dtype = next(self.parameters()).dtype
        head_dim = self.d_model // self.num_heads
        cache: Cache = [tuple(torch.empty(b, self.num_heads, n, head_dim, device=codes.device, dtype=dtype)
                              for _ in range(2)) for _ in self.blocks]
        was_training = self.training
        self.eval()
        try:
            # prefill: positions 0 .. first (inputs: start, codes 0 .. first-1) -> logits of `first`
            x = self._inputs(flat[:, :first], 0, step_cond, with_start=True, grid=codes)
            pos = 0
            for position in track(range(first, n), "sampling", unit="positions"):
                for block, kv in zip(self.blocks, cache):
                    x = block(x, kv, pos)
                flat[:, position] = self._draw(self._head(x[:, -1]), temperature, generator).to(flat.device)
                pos = position + 1
                if pos < n:
                    x = self._inputs(flat[:, position:pos], pos, step_cond, with_start=False, grid=codes)
        finally:
            self.train(was_training)
        return codes

    @torch.no_grad()
    def sample_naive(
        self,
        cond: dict[str, torch.Tensor] | None = None,
        shape: tuple[int, ...] | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        num_samples: int | None = None,
        given: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`sample` without the cache: the full forward per position (a reference for tests)."""
        codes, first, _ = self._sample_setup(cond, shape, temperature, num_samples, given)
        flat = codes.view(codes.shape[0], -1)
        was_training = self.training
        self.eval()
        try:
            for position in range(first, self.num_positions):
                logits = self.logits(codes, cond).flatten(2)[:, :, position]
                flat[:, position] = self._draw(logits, temperature, generator).to(flat.device)
        finally:
            self.train(was_training)
        return codes
