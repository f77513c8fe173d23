"""A clip cut into windows, the samples video trains on, and a window as its tar member: one PNG
of its frames stacked top to bottom."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.media import decode_png, encode_png
from pipeline.modalities import pixels_to_model
from pipeline.modalities.common import to_pixels

if TYPE_CHECKING:
    import torch


@dataclass
class Clip:
    key: str
    frames: np.ndarray  # (N, H, W, 3) uint8, after resampling
    actions: list[int] | None
    label: int | None
    truncated: bool
    seconds: float


@dataclass
class Window:
    frames: np.ndarray  # (frames, H, W, 3) uint8
    actions: list[int] | None
    label: int | None


def windows(clip: Clip, frames: int, stride: int) -> list[tuple[str, Window]]:
    """The clip's windows, keyed `<clip key>-f<first frame>`, each with its slice of actions."""
    out = []
    for start in range(0, len(clip.frames) - frames + 1, stride):
        acts = None if clip.actions is None else clip.actions[start:start + frames]
        out.append((f"{clip.key}-f{start:06d}", Window(clip.frames[start:start + frames], acts, clip.label)))
    return out


def frames_to_png(frames: np.ndarray) -> bytes:
    """(T, H, W, 3) uint8 -> one PNG, the frames stacked top to bottom."""
    return encode_png(frames.reshape(-1, *frames.shape[2:]))


def png_to_frames(data: bytes) -> np.ndarray:
    pixels = decode_png(data)
    h, w = pixels.shape[:2]
    if h % w:
        raise ValueError(f"a window's PNG is {w} wide and {h} tall: not a stack of square frames")
    return pixels.reshape(h // w, w, w, 3)


def to_cthw(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> uint8 (3, T, H, W), contiguous (what the readers batch)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).contiguous()


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (3, T, H, W) in [-0.5, 0.5]."""
    return pixels_to_model(to_cthw(frames))


def video_pixels(x: torch.Tensor) -> np.ndarray:
    """(3, T, H, W) model-space -> uint8 (T, H, W, 3)."""
    return to_pixels(x.movedim(1, 0))
