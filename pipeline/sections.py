"""Config sections: the base of every one, and what every training stage and every sampling run
has, whatever the model.

The base: unknown keys, booleans given for numbers and non-finite numbers are errors, never
silently taken (YAML's `true` would otherwise be the number 1, and `.inf` a learning rate that
trains to NaN).

A model's own hyperparameters are not here: each model declares its section beside the modality
that builds it (pipeline/modalities/common.py: the VQ-VAE and the Gated PixelCNN; speech/ and
video/ their own), and a modality's `stage1:` / `stage2:` section is the stage's fields below plus
its model's. A key the chosen model does not have is then an unknown key, and cannot change a
run's identity.
"""
from __future__ import annotations

from typing import Any, ClassVar, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

_NUMBERS = {int, float, Optional[int], Optional[float], Union[int, float]}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_not_booleans(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and cls.model_fields[info.field_name].annotation in _NUMBERS:
            raise ValueError(f"expected a number, got {str(value).lower()}")
        return value


class TrainingSection(Section):
    """What both training stages have: steps, batch, learning rate, seed, and how often they
    checkpoint, validate and log."""
    # Fields that leave the trained model what it is (how often it checkpoints, validates and
    # logs, how fast its steps run): a change of these resumes the same run. The others make the
    # run's identity (pipeline/stages/train/driver.py: shaping).
    NOT_SHAPING: ClassVar[frozenset[str]] = frozenset({"checkpoint_every", "val_every", "log_every",
                                                       "max_failures", "compile"})
    steps: int = Field(2000, ge=1)
    batch_size: int = Field(128, ge=1)  # per DDP worker
    lr: float = Field(2e-4, gt=0)
    seed: int = 0
    checkpoint_every: int = Field(500, ge=1)
    val_every: int = Field(250, ge=1)
    log_every: int = Field(10, ge=1)
    max_failures: int = Field(1, ge=0)  # worker-group restarts from the last checkpoint
    # torch.compile the model for training: 1.7x the images/s of stage 1 on an H100 (bench/gpu.py),
    # after a compilation of about 20 s per worker. Off by default: on CPU it compiles for minutes.
    compile: bool = False


class Stage1Section(TrainingSection):
    """`stage1:` beside the VQ-VAE's own fields."""


class Stage2Section(TrainingSection):
    """`stage2:` beside the prior's own fields."""
    NOT_SHAPING = TrainingSection.NOT_SHAPING | {"vqvae"}  # the codes, which make the identity, say which
    vqvae: Optional[str] = None  # the VQ-VAE whose codes the prior models; else its champion
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-4, gt=0)


class SampleSection(Section):
    """`sample:`, with the modality's own fields beside these."""
    prior: Optional[str] = None  # else models:/prior-<data.name>@champion
    per_class: int = Field(8, ge=1)
    temperature: float = Field(1.0, gt=0)
    seed: int = 0
