"""Video: clips (with per-frame actions, class folders, both or neither), stored as windows of
lossless frames, modelled with the 3-D VQ-VAE and a causal transformer prior over (time, row,
column) conditioned on the actions (van den Oord et al. 2017, section 4.4).

    data:
      modality: video
      root: /data/clips            # <root>/{train,val}/[<class>/]<clip>.{mp4,webm,mkv,avi,gif}
      frame_size: 64               # shorter side resized, then centre-cropped to a square
      frames: 16                   # frames per window (a training sample)
      window_stride: 8             # frames between window starts (default: frames, no overlap)
      fps: 15                      # resample every clip to this rate (default: keep the clip's)

Layout: clips in `<root>/train/` and `<root>/val/`, directly or in class folders (UCF-101 style:
the folder is the class). Without `val/`, a seeded `val_fraction` of the clips (per class) is
held out. Beside a clip, `<clip>.actions.json` = `{"actions": [a_0, ..., a_{T-1}]}` holds one
integer action per frame; `<root>/actions.json` = `{"names": [...]}` is the vocabulary (without
it, ids 0 .. max). Convention: `actions[i]` is taken after frame i is shown and drives frame i+1
(the gym / ViZDoom step), so the last action of a window drives nothing inside it. With `data.fps`
a resampled frame keeps the action of the source frame it came from.

A sample is one window. Its tar members: `<key>.png`, the window's frames stacked top to bottom
(frames x frame_size rows of frame_size RGB pixels; PNG is lossless, so training sees exactly what
was stored; ~2 bytes per pixel for the demo's rendered 32x32 frames, tar headers included, against 3 raw), `<key>.act` (the
window's actions as space-separated ids) when the data set has actions, and `<key>.cls` (the
class id) when it has classes. The model sees float tensors (3, frames, H, W) in [-0.5, 0.5].
"""
from __future__ import annotations

import io
import json
import os
import random
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from pydantic import Field, model_validator

from pipeline.errors import UserError
from pipeline.modalities import (Batch, CondSpec, DataSection, Item, Listing, Modality, RawItem, SkipSample,
                                 pixels_to_model, register)
from pipeline.modalities.image import decode_png, encode_png, grid, mse_metrics, to_pixels
from pipeline.sections import SampleConfig, Stage1Config, Stage2Config

if TYPE_CHECKING:  # torch only where tensors are made: sharding (Ray Data's workers) needs none
    import torch

EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".gif", ".mov")
ACTIONS = "actions"  # the per-frame conditioning's name: batches, codes, the prior
CLASSES = "labels"  # the class id's name, as for images
ACTIONS_FILE = "actions.json"
TRUNCATED = "truncated: kept the frames that decode"


class VideoData(DataSection):
    frame_size: int = Field(64, ge=8)
    frames: int = Field(16, ge=1)
    window_stride: int | None = Field(None, ge=1)  # None: `frames` (windows do not overlap)
    fps: float | None = Field(None, gt=0)  # None: every frame of the clip
    display_fps: float = Field(8.0, gt=0)  # the frame rate of the GIFs and MP4s written for people

    @property
    def stride(self) -> int:
        return self.window_stride or self.frames


class VideoStage1(Stage1Config):
    """The paper's video VQ-VAE: 3-D convs, K=512; `temporal_downsamples` of the
    `num_downsamples` strided layers also halve time (0: a latent grid per frame)."""
    codebook_size: int = Field(512, ge=2)
    temporal_downsamples: int = Field(0, ge=0)
    batch_size: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _temporal(self) -> "VideoStage1":
        if self.temporal_downsamples > self.num_downsamples:
            raise ValueError(f"temporal_downsamples ({self.temporal_downsamples}) must be <= num_downsamples "
                             f"({self.num_downsamples})")
        return self


class VideoStage2(Stage2Config):
    """The prior: a causal transformer over a window's codes in (time, row, column) order;
    `hidden` is its width, `num_layers` its blocks."""
    hidden: int = Field(128, ge=8)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    # per action a learnt k x k filter over the previous frame's codes (how the view moves under
    # it); 0 turns it off, else odd: wide enough for the view's largest move per latent step
    action_shift: int = Field(5, ge=0)

    @model_validator(mode="after")
    def _heads(self) -> "VideoStage2":
        if self.hidden % self.num_heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of num_heads ({self.num_heads})")
        if self.action_shift and self.action_shift % 2 == 0:
            raise ValueError(f"action_shift ({self.action_shift}) must be 0 (off) or odd")
        return self


class VideoSample(SampleConfig):
    """Sampling continues val windows: given the codes of their first `given_frames` frames and
    their actions, the prior generates the rest; it also runs with the actions shuffled between
    windows, and scores both against the real frames (PSNR)."""
    given_frames: int = Field(4, ge=1)
    windows: int = Field(8, ge=2)  # val windows continued (and scored)
    draws: int = Field(1, ge=1)  # continuations per window and actions, averaged in the scores


# ---- decoding ------------------------------------------------------------------------------------


def _square(img: Image.Image, size: int) -> np.ndarray:
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)).convert("RGB"), dtype=np.uint8)


@dataclass
class Decoded:
    frames: np.ndarray  # (N, size, size, 3) uint8
    times: list[float]  # each frame's presentation time in seconds
    declared: int  # the frame count the container declares or its duration implies (0: unknown)
    truncated: bool  # decoding stopped on an error: the frames before it are kept


def decode_video(raw: bytes, size: int) -> Decoded:
    """A clip's bytes -> its frames, square `size`; SkipSample for what is not a decodable video."""
    import av

    if not raw:
        raise SkipSample("empty file")
    try:
        container = av.open(io.BytesIO(raw), mode="r")
    except (av.FFmpegError, ValueError, OSError) as e:
        raise SkipSample(f"not a video: {type(e).__name__}") from None
    frames, times, truncated = [], [], False
    with container:
        if not container.streams.video:
            raise SkipSample("not a video: no video stream")
        stream = container.streams.video[0]
        # One thread each for decoding and for the RGB conversion: a shard task holds one CPU, and
        # FFmpeg's default (threads = cores) started and joined a pool of threads for every frame's
        # conversion. Preprocessing the video demo's 240 clips took 5.6 s in one process, 3.5 s
        # with this, and two processes at once now do 2.0x one (1.2x before: cores sat idle).
        stream.codec_context.thread_count = 1
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        declared = int(stream.frames or 0)
        if not declared and container.duration:  # Matroska, WebM: no count, a duration
            declared = round(container.duration / 1_000_000 * rate)
        try:
            for frame in container.decode(stream):
                frames.append(_square(frame.to_image(threads=1), size))
                times.append(float(frame.time) if frame.time is not None else len(times) / rate)
        except (av.FFmpegError, ValueError, OSError) as e:
            if not frames:
                raise SkipSample(f"undecodable: {type(e).__name__}") from None
            truncated = True
    if not frames:
        raise SkipSample("undecodable: no frame decodes")
    if declared and len(frames) < declared - 1:  # a count from a duration may be one off
        truncated = True
    return Decoded(np.stack(frames), times, declared, truncated)


def resample(times: list[float], fps: float) -> list[int]:
    """Source frame indices of a clip resampled to `fps`: for each output time k / fps, the
    last source frame shown at or before it."""
    start, end = times[0], times[-1]
    count = int(np.floor((end - start) * fps + 1e-6)) + 1
    t = np.asarray(times)
    return [int(np.searchsorted(t, start + k / fps + 1e-6, side="right") - 1) for k in range(count)]


# ---- windows -------------------------------------------------------------------------------------


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


# ---- writing -------------------------------------------------------------------------------------


def save_atomic(path: str, save) -> str:
    stem, ext = os.path.splitext(path)
    tmp = f"{stem}.tmp{ext}"
    save(tmp)
    os.replace(tmp, path)
    return path


def write_gif(frames: list[Image.Image], path: str, fps: float) -> str:
    duration = max(20, round(1000 / fps))
    return save_atomic(path, lambda tmp: frames[0].save(tmp, save_all=True, append_images=frames[1:],
                                                    duration=duration, loop=0, optimize=False))


def write_mp4(frames: list[Image.Image], path: str, fps: float) -> str:
    """H.264 (yuv420p, even sizes: padded with white) where FFmpeg has it, else MPEG-4 part 2."""
    import av
    from fractions import Fraction

    w, h = frames[0].size
    w2, h2 = w + w % 2, h + h % 2

    def save(tmp: str) -> None:
        with av.open(tmp, mode="w", format="mp4") as out:
            try:
                stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
                stream.options = {"crf": "18"}
            except (av.FFmpegError, ValueError):
                stream = out.add_stream("mpeg4", rate=Fraction(fps).limit_denominator(1000))
                stream.bit_rate = 4_000_000
            stream.width, stream.height, stream.pix_fmt = w2, h2, "yuv420p"
            for img in frames:
                if (w2, h2) != (w, h):
                    canvas = Image.new("RGB", (w2, h2), (255, 255, 255))
                    canvas.paste(img, (0, 0))
                    img = canvas
                for packet in stream.encode(av.VideoFrame.from_image(img)):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
    return save_atomic(path, save)


SHOWN_SIZE = 96  # smaller frames are enlarged (nearest neighbour) in the files written for people


def enlarge(clip: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) -> each pixel repeated so the frames are at least SHOWN_SIZE high."""
    factor = -(-SHOWN_SIZE // clip.shape[1])
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
                shown: list[np.ndarray] | None = None) -> list[str]:
    """Rows of clips -> `<stem>.gif` and `<stem>.mp4` (animated, a row per group, side by side
    within it) and `<stem>.png` (every frame of the `shown` clips, a row each, left to right;
    by default the first clip of each row)."""
    pictures = animate(rows)
    shown = [row[0] for row in rows] if shown is None else shown
    return [write_gif(pictures, f"{path_stem}.gif", fps), write_mp4(pictures, f"{path_stem}.mp4", fps),
            save_atomic(f"{path_stem}.png", strip(shown).save)]


# ---- the listing -------------------------------------------------------------------------------


def _read_json(fs, path: str, what: str):
    from pipeline.data import fs as fsx

    try:
        return json.loads(fsx.read_bytes(fs, path))
    except (OSError, ValueError) as e:
        raise ValueError(f"{what} {path} is not readable JSON: {e}") from None


def _vocabulary(fs, base: str, root: str) -> list[str] | None:
    from pipeline.data import fs as fsx

    path = f"{base}/{ACTIONS_FILE}"
    if not fsx.exists(fs, path):
        return None
    try:
        names = _read_json(fs, path, "the action vocabulary")["names"]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{root}/{ACTIONS_FILE}: expected {{\"names\": [...]}} ({e})") from None
    if not isinstance(names, list) or not names:
        raise UserError(f"{root}/{ACTIONS_FILE}: \"names\" must be a non-empty list")
    return [str(n) for n in names]


def _clip_actions(fs, path: str) -> tuple[list[int] | None, str | None]:
    """A clip's actions file -> (actions, None), (None, None) when there is none, or (None, reason)."""
    from pipeline.data import fs as fsx

    act = f"{path.rsplit('.', 1)[0]}.actions.json"
    if not fsx.exists(fs, act):
        return None, None
    try:
        actions = _read_json(fs, act, "actions file")["actions"]
        if not isinstance(actions, list) or not all(isinstance(a, int) and not isinstance(a, bool) for a in actions):
            raise ValueError("\"actions\" must be a list of integers")
    except (ValueError, KeyError, TypeError) as e:
        return None, f"bad actions file {act.rsplit('/', 1)[-1]}: {e}"
    return actions, None


def _is_clip(name: str) -> bool:
    return name.lower().endswith(EXTENSIONS)


def _key(class_name: str | None, path: str) -> str:
    stem = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{class_name}-{stem}" if class_name else stem)


def list_clips(data: VideoData) -> Listing:
    """The clips of `data.root` (a local folder or a pyarrow filesystem URI: s3://, gs://)."""
    from pipeline.data import fs as fsx
    from pipeline.data.sources import list_dir

    root = data.root
    fs, base = fsx.filesystem(root)
    if not fsx.isdir(fs, f"{base}/train"):
        raise UserError(f"data.root has no train/ folder of clips: {root}")
    found: dict[str, list[tuple[str | None, str]]] = {}
    skipped: list[dict] = []
    for split in ("train", "val"):
        files, dirs, odd = list_dir(fs, f"{base}/{split}", _is_clip)
        skipped += odd
        found[split] = [(None, p) for p in files]
        for d in dirs:
            in_class, _, odd = list_dir(fs, d, _is_clip)
            skipped += odd
            found[split] += [(d.rstrip("/").rsplit("/", 1)[-1], p) for p in in_class]
    classes = sorted({c for c, _ in found["train"] if c})
    if classes and any(c is None for c, _ in found["train"]):
        raise UserError(f"{root}/train holds both clips and class folders: use one or the other")
    names = _vocabulary(fs, base, root)
    actions = {p: _clip_actions(fs, p) for s in found.values() for _, p in s}
    have_actions = names is not None or any(a is not None for a, _ in actions.values())
    if names is None and have_actions:
        top = max((max(a) for a, _ in actions.values() if a), default=0)
        names = [str(i) for i in range(top + 1)]
    index = {c: i for i, c in enumerate(classes)}

    def item(class_name: str | None, path: str) -> RawItem:
        cond, skip = {}, None
        if classes:
            cond[CLASSES] = index.get(class_name, -1)
            if cond[CLASSES] < 0:
                skip = f"class folder {class_name!r} is not a train class"
        if have_actions:
            acts, bad = actions[path]
            if bad:
                skip = bad
            elif acts is None:
                skip = "no actions file beside the clip (other clips have one)"
            elif any(not 0 <= a < len(names) for a in acts):
                wrong = next(a for a in acts if not 0 <= a < len(names))
                skip = f"action {wrong} outside the vocabulary (0 .. {len(names) - 1})"
            cond[ACTIONS] = acts or []
        return RawItem(key=_key(class_name, path), path=path, cond=cond, skip=skip)

    splits = {"train": [], "val": []}
    if found["val"]:
        for split in splits:
            splits[split] = [item(c, p) for c, p in found[split]]
    else:  # a seeded fraction of every class's clips
        rng = random.Random(data.seed)
        for c in (classes or [None]):
            paths = [p for cc, p in found["train"] if cc == c]
            rng.shuffle(paths)
            n_val = round(len(paths) * data.val_fraction) if len(paths) > 1 else 0
            splits["val"] += [item(c, p) for p in sorted(paths[:n_val])]
            splits["train"] += [item(c, p) for p in sorted(paths[n_val:])]
    if not splits["train"]:
        raise UserError(f"data.root holds no clips ({', '.join(EXTENSIONS)}) under train/: {root}")
    cond = {}
    if classes:
        cond[CLASSES] = CondSpec("class", len(classes), tuple(classes))
    if have_actions:
        cond[ACTIONS] = CondSpec("sequence", len(names), tuple(names))
    manifest = {"classes": classes, "action_names": names or [], "frame_size": data.frame_size,
                "frames": data.frames, "window_stride": data.stride, "fps": data.fps}
    return Listing(splits, cond, manifest, sorted(skipped, key=lambda s: s["path"]))


# ---- the modality --------------------------------------------------------------------------------


class VideoModality(Modality):
    name = "video"
    DataConfig = VideoData
    Stage1Config = VideoStage1
    Stage2Config = VideoStage2
    SampleConfig = VideoSample
    selection_metric = "val_mse"
    key_metrics = ("val_psnr", "perplexity", "codebook_usage")
    paper_references = {
        "val_psnr": "DeepMind Lab 84x84 frames -> 21x21 codes of K=512; judged by eye, no PSNR reported",
    }

    @property
    def model_classes(self):
        from pipeline.models.video_prior import VideoPrior

        return {"VideoPrior": VideoPrior}

    def find(self, data: VideoData) -> Listing:
        return list_clips(data)

    def preprocess(self, raw: bytes, item: RawItem, data: VideoData) -> Clip:
        decoded = decode_video(raw, data.frame_size)
        frames, count = decoded.frames, len(decoded.frames)
        actions = item.cond.get(ACTIONS)
        if actions is not None:
            # a truncated clip keeps the actions of the frames that decode
            if len(actions) != count and not (decoded.truncated and len(actions) > count):
                raise SkipSample(f"actions file holds {len(actions)} actions for {count} frames")
            actions = list(actions[:count])
        if data.fps:
            picked = resample(decoded.times, data.fps)
            frames = frames[picked]
            actions = None if actions is None else [actions[i] for i in picked]
        if len(frames) < data.frames:
            raise SkipSample(f"too short: {len(frames)} frames decode, a window is data.frames={data.frames}")
        seconds = decoded.times[-1] - decoded.times[0] + (decoded.times[1] - decoded.times[0] if count > 1 else 0)
        return Clip(item.key, frames, actions, item.cond.get(CLASSES), decoded.truncated, seconds)

    def samples_of(self, example: Clip, key: str, data: VideoData) -> list[tuple[str, Window]]:
        return windows(example, data.frames, data.stride)

    def notes(self, example: Clip) -> list[str]:
        return [TRUNCATED] if example.truncated else []

    def tally(self, example: Clip) -> dict[str, float]:
        return {"clips": 1, "frames": len(example.frames), "seconds": example.seconds}

    def to_members(self, example: Window) -> dict[str, bytes]:
        members = {"png": frames_to_png(example.frames)}
        if example.actions is not None:
            members["act"] = " ".join(map(str, example.actions)).encode()
        if example.label is not None:
            members["cls"] = str(example.label).encode()
        return members

    def from_members(self, members: dict[str, bytes]) -> Item:
        frames = png_to_frames(members["png"])
        cond = {}
        if "act" in members:
            actions = [int(a) for a in members["act"].split()]
            if len(actions) != len(frames):
                raise ValueError(f"{len(actions)} actions for {len(frames)} frames")
            cond[ACTIONS] = actions
        if "cls" in members:
            cond[CLASSES] = int(members["cls"])
        return Item(to_cthw(frames), cond)

    def sample_shape(self, data: VideoData) -> tuple[int, ...]:
        return (data.frames, data.frame_size, data.frame_size)

    def build_autoencoder(self, stage1: VideoStage1, data: VideoData, cond: dict[str, CondSpec]):
        from pipeline.models.vqvae import VQVAE

        return VQVAE(in_channels=3, spatial_dims=3, hidden=stage1.hidden, num_res_blocks=stage1.num_res_blocks,
                     num_downsamples=stage1.num_downsamples, temporal_downsamples=stage1.temporal_downsamples,
                     codebook_size=stage1.codebook_size, code_dim=stage1.code_dim, beta=stage1.beta, ema=stage1.ema,
                     decay=stage1.decay, dead_code_steps=stage1.dead_code_steps)

    def build_prior(self, stage2: VideoStage2, codebook_size: int, cond: dict[str, CondSpec],
                    latent_shape=None, data: VideoData | None = None):
        from pipeline.models.video_prior import VideoPrior

        if not latent_shape or data is None:
            raise ValueError("the video prior needs the codes' latent shape and the data section")
        if data.frames % latent_shape[0]:
            raise UserError(f"data.frames={data.frames} is not a multiple of the codes' {latent_shape[0]} time steps")
        return VideoPrior(codebook_size=codebook_size, latent_shape=tuple(latent_shape),
                          num_actions=cond[ACTIONS].size if ACTIONS in cond else 0,
                          frames_per_step=data.frames // latent_shape[0], num_frames=data.frames,
                          num_classes=cond[CLASSES].size if CLASSES in cond else 0, action_key=ACTIONS,
                          class_key=CLASSES, d_model=stage2.hidden, num_layers=stage2.num_layers,
                          num_heads=stage2.num_heads, dropout=stage2.dropout, action_shift=stage2.action_shift)

    def val_sums(self, batch: Batch, out) -> dict[str, float]:
        import torch

        err = (out.recon.float() - batch.x).square()
        per_frame = err.mean(dim=(1, 3, 4)).clamp(min=1e-12)  # (B, T)
        return {"sq_err": err.sum().item(), "dims": float(batch.x.numel()),
                "frame_psnr": (10 * torch.log10(1.0 / per_frame)).sum().item(), "frames": float(per_frame.numel())}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        # val_psnr: the mean of every frame's PSNR (the paper's per-frame figure); val_mse and
        # the bits per dim over all pixels, as for images
        return {**mse_metrics(sums), "val_psnr": sums["frame_psnr"] / sums["frames"]}

    def write(self, groups: list[list[torch.Tensor]], path_stem: str, data: VideoData) -> list[str]:
        """Groups (originals, reconstructions; or one per class) -> an animated GIF and MP4, a group
        per row, and a PNG of the first clip of each group frame by frame."""
        rows = [[video_pixels(x) for x in group] for group in groups]
        return write_clips(rows, path_stem, data.display_fps)

    def draw_samples(self, settings, prior, vqvae, meta: dict, device, stem: str) -> tuple[list[str], dict]:
        from pipeline.modalities.video_sampling import continue_windows

        return continue_windows(settings, prior, vqvae, meta, device, stem)

    def make_demo(self, data: VideoData, small: bool = False) -> dict:
        from pipeline.modalities.video_demo import make_demo_data

        sizes = dict(train_clips=16, val_clips=4, frames=max(16, data.frames)) if small else {}
        return make_demo_data(data.root, seed=data.seed, **sizes)


MODALITY = register(VideoModality())
