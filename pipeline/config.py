"""Typed, validated configuration for every stage.

One YAML file per experiment (configs/*.yaml) plus `--set dotted.key=value` overrides, each value
parsed as YAML. Validated once here; the rest of the code trusts it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import UserError


class _Section(BaseModel):
    # An unknown key is an error, never silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    # "{workdir}" in root is replaced by the workdir, so a demo's data can live beside its outputs.
    root: str
    modality: Literal["image"] = "image"
    make_demo: bool = False  # jobs/pipeline.py builds the demo photos at `root` when missing
    image_size: int = Field(128, ge=8)
    val_fraction: float = Field(0.05, gt=0, lt=1)
    samples_per_shard: int = Field(1000, ge=1)
    min_source_size: int = Field(32, ge=1)
    seed: int = 0


class RayConfig(_Section):
    address: Optional[str] = None  # else RAY_ADDRESS, else a new local instance
    num_cpus: Optional[int] = Field(None, ge=1)  # logical CPUs of a *local* instance
    num_workers: int = Field(2, ge=1)
    use_gpu: Optional[bool] = None  # None: when present
    cpus_per_worker: float = Field(1.0, gt=0)


class MlflowConfig(_Section):
    tracking_uri: Optional[str] = None  # else MLFLOW_TRACKING_URI, else sqlite in the workdir
    experiment: Optional[str] = None  # else data.name


class _TrainingSection(_Section):
    """What both training stages share: how often they checkpoint, validate and log."""
    checkpoint_every: int = Field(500, ge=1)
    val_every: int = Field(250, ge=1)
    log_every: int = Field(10, ge=1)
    max_failures: int = Field(1, ge=0)  # worker-group restarts from the last checkpoint
    seed: int = 0


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


class CodesConfig(_Section):
    model: Optional[str] = None  # else models:/vqvae-<data.name>@champion
    batch_size: int = Field(256, ge=1)


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


class SampleConfig(_Section):
    prior: Optional[str] = None  # else models:/prior-<data.name>@champion
    per_class: int = Field(8, ge=1)
    temperature: float = Field(1.0, gt=0)
    seed: int = 0


class Settings(_Section):
    workdir: str
    overwrite: bool = False
    data: DataConfig
    ray: RayConfig = RayConfig()
    mlflow: MlflowConfig = MlflowConfig()
    stage1: Stage1Config = Stage1Config()
    codes: CodesConfig = CodesConfig()
    stage2: Stage2Config = Stage2Config()
    sample: SampleConfig = SampleConfig()

    @model_validator(mode="before")
    @classmethod
    def _absolute_paths(cls, tree: Any) -> Any:
        # Ray Train workers chdir elsewhere: every path is made absolute at the edge.
        if not isinstance(tree, dict) or not isinstance(tree.get("workdir"), str):
            return tree
        tree = dict(tree)
        workdir = tree["workdir"]
        if "://" not in workdir:
            workdir = tree["workdir"] = str(Path(workdir).expanduser().resolve())
        data = tree.get("data")
        if isinstance(data, dict) and isinstance(data.get("root"), str):
            root = data["root"].replace("{workdir}", workdir)
            tree["data"] = {**data, "root": root if "://" in root else str(Path(root).expanduser().resolve())}
        return tree

    # Where each stage's outputs live (DESIGN.md, "Interfaces between stages").
    @property
    def shards_dir(self) -> str:
        return f"{self.workdir}/shards/{self.data.name}"

    @property
    def runs_dir(self) -> str:
        return f"{self.workdir}/runs"

    @property
    def codes_dir(self) -> str:
        return f"{self.workdir}/codes/{self.data.name}"

    @property
    def samples_dir(self) -> str:
        return f"{self.workdir}/samples"

    @property
    def experiment(self) -> str:
        return self.mlflow.experiment or self.data.name

    @property
    def tracking_uri(self) -> str:
        uri = self.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        return uri or f"sqlite:///{self.workdir}/mlflow.db"


def apply_override(tree: dict, assignment: str) -> None:
    """Apply one `dotted.key=value` to a nested dict; the value is parsed as YAML."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {assignment!r}: expected dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise UserError(f"--set {key}: value is not valid YAML ({e.problem})") from None
    node = tree
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"--set {key}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _format_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'"
    if first["type"] == "missing":
        return f"{source}: missing key '{key}'"
    got = first.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{source}: key '{key}': {first['msg']}{shown}"


def load_settings(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Settings:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(tree, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    for assignment in overrides:
        apply_override(tree, assignment)
    try:
        return Settings.model_validate(tree)
    except ValidationError as e:
        raise UserError(_format_error(e, str(path))) from None


def settings_to_params(settings: Settings) -> dict[str, Any]:
    """Flat `section.key -> value` view, for MLflow params."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, obj: Any) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = obj

    walk("", settings.model_dump())
    return flat
