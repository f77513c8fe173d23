"""Config sections: the base of every one, and the sections a modality may extend with its own
fields (`Modality.Stage1Config`, ...).

The base:  unknown keys, booleans given for numbers and non-finite
numbers are errors, never silently taken (YAML's `true` would otherwise be the number 1, and
`.inf` a learning rate that trains to NaN)."""
from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

_NUMBERS = {int, float, Optional[int], Optional[float], Union[int, float]}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_not_booleans(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and cls.model_fields[info.field_name].annotation in _NUMBERS:
            raise ValueError(f"expected a number, got {str(value).lower()}")
        return value


class _TrainingSection(Section):
    """What both training stages share: how often they checkpoint, validate and log."""
    checkpoint_every: int = Field(500, ge=1)
    val_every: int = Field(250, ge=1)
    log_every: int = Field(10, ge=1)
    max_failures: int = Field(1, ge=0)  # worker-group restarts from the last checkpoint
    seed: int = 0
    # torch.compile the model for training: 1.7x the images/s of stage 1 on an H100 (bench/gpu.py),
    # after a compilation of about 20 s per worker. Off by default: on CPU it compiles for minutes.
    compile: bool = False


class Stage1Config(_TrainingSection):
    steps: int = Field(2000, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(2e-4, gt=0)
    codebook_size: int = Field(512, ge=2)
    code_dim: int = Field(64, ge=1)
    beta: float = Field(0.25, ge=0)
    ema: bool = False
    decay: float = Field(0.99, gt=0, lt=1)
    dead_code_steps: int = Field(0, ge=0)
    hidden: int = Field(256, ge=1)
    num_res_blocks: int = Field(2, ge=0)
    num_downsamples: int = Field(2, ge=1)


class Stage2Config(_TrainingSection):
    vqvae: Optional[str] = None  # the VQ-VAE whose codes the prior models; else its champion
    steps: int = Field(2000, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-4, gt=0)
    hidden: int = Field(64, ge=1)
    num_layers: int = Field(8, ge=1)
    kernel_size: int = Field(5, ge=3)

    @model_validator(mode="after")
    def _odd_kernel(self) -> "Stage2Config":
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        return self


class SampleConfig(Section):
    prior: Optional[str] = None  # else models:/prior-<data.name>@champion
    per_class: int = Field(8, ge=1)
    temperature: float = Field(1.0, gt=0)
    seed: int = 0
