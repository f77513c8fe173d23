"""Media files a person opens, and the PNG bytes shards hold: one copy of each writer.

Every file is written atomically (`pipeline.fs.write_atomic`): a file with its final name is
complete. The libraries behind them are imported where they are used: soundfile and librosa
come with the `speech` extra, PyAV with `video`; Pillow and matplotlib with the base install.
"""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from PIL import Image

from pipeline.fs import write_atomic

# ---- PNG -------------------------------------------------------------------------------------------


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 HxWx3 -> PNG bytes (fast compression: shards are written once, read many times)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 HxWx3 (writable: torch.from_numpy shares it)."""
    with Image.open(io.BytesIO(data)) as img:
        return np.array(img.convert("RGB"), dtype=np.uint8)


def grid(rows: list[np.ndarray], pad: int = 2) -> Image.Image:
    """Rows of uint8 BHWC images -> one picture, a row per list item, on white."""
    h, w = rows[0].shape[1:3]
    cols = max(len(r) for r in rows)
    canvas = Image.new("RGB", (cols * (w + pad) + pad, len(rows) * (h + pad) + pad), (255, 255, 255))
    for i, row in enumerate(rows):
        for j, px in enumerate(row):
            tile = Image.fromarray(px[..., 0] if px.shape[-1] == 1 else px)
            canvas.paste(tile, (pad + j * (w + pad), pad + i * (h + pad)))
    return canvas


def write_picture(picture: Image.Image, path: str) -> str:
    return write_atomic(path, picture.save)


# ---- animations ------------------------------------------------------------------------------------


def write_gif(frames: Sequence[Image.Image], path: str, fps: float) -> str:
    duration = max(20, round(1000 / fps))
    return write_atomic(path, lambda tmp: frames[0].save(tmp, save_all=True, append_images=list(frames[1:]),
                                                         duration=duration, loop=0, optimize=False))


def write_mp4(frames: Sequence[np.ndarray | Image.Image], path: str, fps: float, crf: int = 18,
              fast: bool = False) -> str:
    """Frames (uint8 HxWx3, or pictures) -> an MP4: H.264 (yuv420p, `crf`) where PyAV's FFmpeg
    has it, else MPEG-4 part 2 at a high bit rate. Odd sizes are padded with white (yuv420p needs
    even ones). `fast`: x264's veryfast preset on one thread (processes writing side by side)."""
    import av
    from fractions import Fraction

    pictures = [np.asarray(f.convert("RGB")) if isinstance(f, Image.Image) else f for f in frames]
    h, w = pictures[0].shape[:2]
    h2, w2 = h + h % 2, w + w % 2
    rate = Fraction(fps).limit_denominator(1000)

    def save(tmp: str) -> None:
        with av.open(tmp, mode="w", format="mp4") as out:
            try:
                stream = out.add_stream("libx264", rate=rate)
                stream.options = {"crf": str(crf), **({"preset": "veryfast", "threads": "1"} if fast else {})}
            except (av.FFmpegError, ValueError):
                stream = out.add_stream("mpeg4", rate=rate)
                stream.bit_rate = 4_000_000
            stream.width, stream.height, stream.pix_fmt = w2, h2, "yuv420p"
            for picture in pictures:
                if (h2, w2) != (h, w):
                    canvas = np.full((h2, w2, 3), 255, dtype=np.uint8)
                    canvas[:h, :w] = picture
                    picture = canvas
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)

    return write_atomic(path, save)


# ---- sound -----------------------------------------------------------------------------------------


def write_wav(path: str, x: np.ndarray, rate: int) -> str:
    """Mono float samples in [-1, 1] -> 16-bit PCM WAV."""
    import soundfile as sf

    return write_atomic(path, lambda tmp: sf.write(tmp, np.clip(x, -1, 1), rate, subtype="PCM_16"))


def mel_power(x: np.ndarray, rate: int, n_mels: int = 80) -> np.ndarray:
    """(n_mels, frames) mel power spectrogram: 25 ms windows, 10 ms hop."""
    import librosa

    n_fft = int(2 ** np.ceil(np.log2(0.025 * rate)))
    return librosa.feature.melspectrogram(y=x.astype(np.float32), sr=rate, n_fft=n_fft, hop_length=rate // 100,
                                          win_length=int(0.025 * rate), n_mels=n_mels, fmax=rate / 2)


def log_mel(x: np.ndarray, rate: int, n_mels: int = 80) -> np.ndarray:
    """(n_mels, frames) log-mel spectrogram in dB of power."""
    return 10 * np.log10(np.maximum(mel_power(x, rate, n_mels), 1e-10))


def spectrogram_picture(rows: list[list[np.ndarray]], rate: int, path: str, titles: list[str] | None = None,
                        columns: list[str] | None = None) -> str:
    """Log-mel spectrograms, a row per group, columns side by side, as one PNG; `titles` label
    the rows, `columns` the columns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.6 * n_cols, 1.9 * n_rows), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(row) and len(row[j]):
                ax.imshow(log_mel(row[j], rate), origin="lower", aspect="auto", cmap="magma", vmin=-100, vmax=0)
        if titles:
            axes[i][0].set_ylabel(titles[i], fontsize=8)
    for j, name in enumerate(columns or []):
        axes[0][j].set_title(name, fontsize=9)
    fig.tight_layout()
    try:
        return write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=70))
    finally:
        plt.close(fig)
