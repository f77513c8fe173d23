"""Audio for the speech modality: reading any file libsndfile knows (skipping what is not
audio, with the reason), resampling, trimming silence, and the FLAC members of the shards."""
from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

from pipeline.modalities import SkipSample

if TYPE_CHECKING:
    import torch


def _wav_truncated(raw: bytes) -> str | None:
    """For a RIFF/WAVE file: a reason when its data chunk claims more bytes than the file holds."""
    if raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(raw):
        chunk, size = raw[pos:pos + 4], int.from_bytes(raw[pos + 4:pos + 8], "little")
        if chunk == b"data":
            have = len(raw) - pos - 8
            if size != 0xFFFFFFFF and have < size:
                return f"truncated: the data chunk holds {have} of {size} bytes"
            return None
        pos += 8 + size + (size & 1)
    return "truncated: no data chunk"


def read_audio(raw: bytes) -> tuple[np.ndarray, int]:
    """File bytes -> (float32 (frames, channels), sample rate); SkipSample for what is not audio."""
    import soundfile as sf

    if not raw:
        raise SkipSample("empty file")
    truncated = _wav_truncated(raw)
    if truncated:
        raise SkipSample(truncated)
    try:
        audio, rate = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:
        message = str(e)
        if "Format not recognised" in message or "unknown format" in message.lower():
            raise SkipSample("not audio: libsndfile does not recognise the format") from None
        raise SkipSample(f"corrupt audio: {message.splitlines()[0][:200]}") from None
    except (RuntimeError, ValueError, TypeError, EOFError) as e:
        raise SkipSample(f"corrupt audio: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}") from None
    if audio.size == 0:
        raise SkipSample("empty audio: no samples")
    if not np.isfinite(audio).all():
        raise SkipSample("corrupt audio: samples that are not finite")
    return audio, int(rate)


def resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Mono float32 at `rate` -> at `target`, with soxr's high-quality resampler."""
    if rate == target:
        return x
    import soxr

    return soxr.resample(x, rate, target, quality="HQ").astype(np.float32)


def trim_silence(x: np.ndarray, rate: int, db: float) -> np.ndarray:
    """Leading and trailing 10 ms frames more than `db` below the loudest frame removed."""
    frame = max(1, rate // 100)
    n = len(x) // frame
    if n == 0:
        return x
    rms = np.sqrt(np.mean(x[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1))
    peak = rms.max()
    if peak <= 0:
        return x[:0]
    loud = np.nonzero(rms >= peak * 10 ** (-db / 20))[0]
    start, stop = loud[0] * frame, min(len(x), (loud[-1] + 1) * frame)
    return x[start:stop]


def encode_flac(x: np.ndarray, rate: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    pcm = np.clip(np.rint(x * 32767.0), -32768, 32767).astype(np.int16)
    sf.write(buf, pcm, rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def decode_flac(raw: bytes) -> tuple[np.ndarray, int]:
    import soundfile as sf

    pcm, rate = sf.read(io.BytesIO(raw), dtype="int16")
    if pcm.ndim != 1:
        raise ValueError(f"expected mono FLAC, got {pcm.shape[1]} channels")
    return pcm.astype(np.float32) / 32768.0, int(rate)


def to_tensor(x: np.ndarray) -> torch.Tensor:
    """Mono float samples -> (1, samples) float32, as the model sees them."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).unsqueeze(0)
