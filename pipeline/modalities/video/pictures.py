"""Clips as files a person opens: animated GIF and MP4 grids (a row per group) and PNG strips
of frames, small frames enlarged."""
from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.media import grid, write_gif, write_mp4, write_picture


DISPLAY_SIZE = 96  # smaller frames are enlarged (nearest neighbour) in the files written for people


def enlarge(clip: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) -> each pixel repeated so the frames are at least DISPLAY_SIZE high."""
    factor = -(-DISPLAY_SIZE // clip.shape[1])
    return clip if factor <= 1 else clip.repeat(factor, axis=1).repeat(factor, axis=2)


def animate(rows: list[list[np.ndarray]]) -> list[Image.Image]:
    """Rows of clips (each uint8 (T, H, W, 3); T may differ) -> one picture per time step, a grid
    with a row per list item; a clip that has ended shows its last frame."""
    rows = [[enlarge(c) for c in row] for row in rows]
    length = max(len(c) for row in rows for c in row)
    return [grid([np.stack([c[min(t, len(c) - 1)] for c in row]) for row in rows]) for t in range(length)]


def strip(rows: list[np.ndarray]) -> Image.Image:
    """Clips (each uint8 (T, H, W, 3)) -> one picture, a clip's frames left to right per row."""
    return grid([enlarge(c) for c in rows])


def write_clips(rows: list[list[np.ndarray]], path_stem: str, fps: float,
                stripped: list[np.ndarray] | None = None) -> list[str]:
    """Rows of clips -> `<stem>.gif` and `<stem>.mp4` (animated, a row per group, side by side
    within it) and `<stem>.png` (every frame of the `stripped` clips, a row each, left to right;
    by default the first clip of each row)."""
    pictures = animate(rows)
    stripped = [row[0] for row in rows] if stripped is None else stripped
    return [write_gif(pictures, f"{path_stem}.gif", fps), write_mp4(pictures, f"{path_stem}.mp4", fps),
            write_picture(strip(stripped), f"{path_stem}.png")]
