"""The video modality's config sections: `data:`, and `stage1:` / `stage2:` / `sample:` as the
stage's shared fields plus the 3-D VQ-VAE's, the transformer prior's and the sampler's own."""
from __future__ import annotations

from pydantic import Field, model_validator

from pipeline.modalities import DataSection
from pipeline.modalities.common import VQVAESettings
from pipeline.sections import SampleSection, Section, Stage1Section, Stage2Section


class VideoData(DataSection):
    frame_size: int = Field(64, ge=8)
    frames: int = Field(16, ge=1)
    window_stride: int | None = Field(None, ge=1)  # None: `frames` (windows do not overlap)
    fps: float | None = Field(None, gt=0)  # None: every frame of the clip
    display_fps: float = Field(8.0, gt=0)  # the frame rate of the GIFs and MP4s written for people

    @property
    def stride(self) -> int:
        return self.window_stride or self.frames


class VideoVQVAESettings(VQVAESettings):
    """The paper's video VQ-VAE: 3-D convs, K=512; `temporal_downsamples` of the
    `num_downsamples` strided layers also halve time (0: a latent grid per frame)."""
    temporal_downsamples: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _temporal(self):
        if self.temporal_downsamples > self.num_downsamples:
            raise ValueError(f"temporal_downsamples ({self.temporal_downsamples}) must be <= num_downsamples "
                             f"({self.num_downsamples})")
        return self


class VideoStage1(VideoVQVAESettings, Stage1Section):
    batch_size: int = Field(16, ge=1)


class VideoPriorSettings(Section):
    """The prior (pipeline.models.video_prior): a causal transformer over a window's codes in
    (time, row, column) order; `hidden` is its width, `num_layers` its blocks."""
    hidden: int = Field(128, ge=8)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    # per action a learnt k x k filter over the previous frame's codes (how the view moves under
    # it); 0 turns it off, else odd: wide enough for the view's largest move per latent step
    action_shift: int = Field(5, ge=0)

    @model_validator(mode="after")
    def _heads(self):
        if self.hidden % self.num_heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of num_heads ({self.num_heads})")
        if self.action_shift and self.action_shift % 2 == 0:
            raise ValueError(f"action_shift ({self.action_shift}) must be 0 (off) or odd")
        return self


class VideoStage2(VideoPriorSettings, Stage2Section):
    """`stage2:` of video: the transformer's fields beside the stage's."""


class VideoSample(SampleSection):
    """Sampling continues val windows: given the codes of their first `given_frames` frames and
    their actions, the prior generates the rest; it also runs with the actions shuffled between
    windows, and scores both against the real frames (PSNR)."""
    given_frames: int = Field(4, ge=1)
    windows: int = Field(8, ge=2)  # val windows continued (and scored)
    draws: int = Field(1, ge=1)  # continuations per window and actions, averaged in the scores
