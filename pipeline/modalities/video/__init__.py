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

The package: `settings` (its config sections), `layout` (the clips and their actions on disk),
`decode` (PyAV), `windows` (a clip cut into samples, a window's PNG member), `pictures` (GIFs,
MP4s and strips), `sampling` (continuing val windows under true and shuffled actions), `demo`
(ViZDoom clips). Its libraries come with the `video` extra.

A sample is one window. Its tar members: `<key>.png`, the window's frames stacked top to bottom
(frames x frame_size rows of frame_size RGB pixels; PNG is lossless, so training sees exactly what
was stored; ~2 bytes per pixel for the demo's rendered 32x32 frames, tar headers included, against 3 raw), `<key>.act` (the
window's actions as space-separated ids) when the data set has actions, and `<key>.cls` (the
class id) when it has classes. The model sees float tensors (3, frames, H, W) in [-0.5, 0.5].
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.modalities import require

require("video", "av")

from pipeline.errors import UserError  # noqa: E402
from pipeline.modalities import Batch, CondSpec, Item, Listing, Modality, RawItem, SkipSample, register  # noqa: E402
from pipeline.modalities.common import build_vqvae, mse_metrics  # noqa: E402
from pipeline.modalities.video.decode import decode_video, resample  # noqa: E402
from pipeline.modalities.video.layout import ACTIONS, CLASSES, list_clips  # noqa: E402
from pipeline.modalities.video.pictures import write_clips  # noqa: E402
from pipeline.modalities.video.settings import VideoData, VideoSample, VideoStage1, VideoStage2  # noqa: E402
from pipeline.modalities.video.windows import (Clip, Window, frames_to_png, png_to_frames, to_cthw,  # noqa: E402
                                               video_pixels, windows)

if TYPE_CHECKING:  # torch only where tensors are made: sharding (Ray Data's workers) needs none
    import torch

TRUNCATED = "truncated: kept the frames that decode"


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
        return build_vqvae(stage1, in_channels=3, spatial_dims=3, temporal_downsamples=stage1.temporal_downsamples)

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

    def draw_samples(self, prior, vqvae, meta: dict, data: VideoData, sample: VideoSample, shards_dir: str,
                     device, stem: str) -> tuple[list[str], dict]:
        from pipeline.modalities.video.sampling import continue_windows

        return continue_windows(self, prior, vqvae, meta, data, sample, shards_dir, device, stem)

    def make_demo(self, data: VideoData, small: bool = False) -> dict:
        from pipeline.modalities.video.demo import make_demo_data

        sizes = dict(train_clips=16, val_clips=4, frames=max(16, data.frames)) if small else {}
        return make_demo_data(data.root, seed=data.seed, **sizes)


MODALITY = register(VideoModality())
