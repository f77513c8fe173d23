"""Typed, validated configuration for every stage.

One YAML file per experiment (configs/*.yaml) plus `--set dotted.key=value` overrides, each value
parsed as YAML. Validated once here; the rest of the code trusts it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import Field, SerializeAsAny, ValidationError, ValidationInfo, field_validator, model_validator

from pipeline import modalities
from pipeline.errors import UserError
from pipeline.sections import SampleSection, Section as _Section, Stage1Section, Stage2Section


class RayConfig(_Section):
    address: Optional[str] = None  # else RAY_ADDRESS, else a new local instance
    num_cpus: Optional[int] = Field(None, ge=1)  # logical CPUs of a *local* instance
    num_workers: int = Field(2, ge=1)
    use_gpu: Optional[bool] = None  # None: when present
    cpus_per_worker: float = Field(1.0, gt=0)
    # Processes that decode stage 1's training batches beside each worker. None: on a GPU one per
    # CPU the worker has beyond its first (at least one), on CPU none (decoding would take cores
    # from the compute). They change the order batches come in, not what they are drawn from.
    loader_workers: Optional[int] = Field(None, ge=0)


class MlflowConfig(_Section):
    tracking_uri: Optional[str] = None  # else MLFLOW_TRACKING_URI, else sqlite in the workdir
    experiment: Optional[str] = None  # else data.name


class CodesConfig(_Section):
    model: Optional[str] = None  # else models:/vqvae-<data.name>@champion
    batch_size: int = Field(256, ge=1)
    # Encoder actors, each holding the model (and a GPU when GPUs are used). None: what the cluster
    # has when the job starts, one per GPU (on CPUs one per two CPUs); a number: that many.
    actors: Optional[int] = Field(None, ge=1)
    # On a GPU, encode under bf16 autocast as stage 1 trains (the quantizer's distances stay fp32):
    # 1.35x the images/s of fp32 on an H100, 1.5x channels-last (bench/gpu.py). A few positions whose encoding lies
    # almost as near two codes may take the other one than under fp32. false: fp32. No effect on CPU.
    bf16: bool = True


_SAMPLERS = {"choice", "uniform", "loguniform", "randint"}


class TuneSection(_Section):
    """Ray Tune over stage-1 keys (jobs/tune_codebook.py). Each `space` entry names a `stage1.*`
    key and gives either a list (grid search: every value is tried) or one sampler,
    `{choice: [...]}`, `{uniform: [lo, hi]}`, `{loguniform: [lo, hi]}` or `{randint: [lo, hi]}`
    (drawn `num_samples` times). ASHA stops trials whose selection metric (the modality's:
    images `val_mse`, speech `val_bits_per_sample`) trails at a rung.
    Every trial is validated when the settings load (Settings.trial_tree)."""
    space: dict[str, Any] = Field(default_factory=lambda: {"stage1.codebook_size": [64, 128, 256, 512]})
    num_samples: int = Field(1, ge=1)  # repeats of the grid / draws of the samplers
    max_concurrent_trials: int = Field(2, ge=1)
    # Fixed `section.key: value`s every trial runs with, e.g. shorter trials on fewer workers:
    # {stage1.steps: 500, stage1.val_every: 50, ray.num_workers: 1}. stage1.steps is ASHA's max_t.
    overrides: dict[str, Any] = Field(default_factory=dict)
    grace_period: Optional[int] = Field(None, ge=1)  # steps before ASHA may stop a trial; else stage1.val_every
    reduction_factor: float = Field(2.0, gt=1)
    seed: int = 0

    @field_validator("space", "overrides", mode="before")
    @classmethod
    def _dotted(cls, value: Any) -> Any:
        """Nested keys as dotted ones: `--set tune.overrides.stage1.steps=60` gives
        {stage1: {steps: 60}} beside the YAML's {stage1.steps: 400}; both mean stage1.steps (the
        later wins), never "replace the whole stage1 section with {steps: 60}"."""
        if not isinstance(value, dict) or not value:
            return value
        flat: dict[str, Any] = {}

        def walk(prefix: str, node: Any) -> None:
            sampler = isinstance(node, dict) and len(node) == 1 and next(iter(node)) in _SAMPLERS
            if isinstance(node, dict) and node and not sampler:
                for k, v in node.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                flat.pop(prefix, None)  # re-inserted last: the later of two spellings wins
                flat[prefix] = node

        walk("", value)
        return flat

    @model_validator(mode="after")
    def _check_space(self) -> "TuneSection":
        if not self.space:
            raise ValueError("space is empty: name at least one stage1.* key")
        for key, spec in self.space.items():
            section, _, field = key.partition(".")
            if section != "stage1" or not field:
                raise ValueError(f"space key {key!r} is not a stage1.* key")
            if isinstance(spec, list):
                values = spec
            elif isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in _SAMPLERS:
                kind, values = next(iter(spec.items()))
                if not isinstance(values, list) or (kind != "choice" and len(values) != 2):
                    raise ValueError(f"space {key}: {kind} takes a list" + ("" if kind == "choice" else " [lo, hi]"))
            else:
                raise ValueError(f"space {key}: expected a list of values or one of {sorted(_SAMPLERS)}")
            if not values:
                raise ValueError(f"space {key}: no values")
        return self

    def check_values(self, stage1: type[Stage1Section]) -> None:
        """Every key names a field of the modality's stage-1 section and every candidate is valid."""
        for key, spec in self.space.items():
            field = key.partition(".")[2]
            if field not in stage1.model_fields:
                raise ValueError(f"tune: space key {key!r} is not a stage1.* key")
            for value in spec if isinstance(spec, list) else next(iter(spec.values())):
                try:
                    stage1.model_validate({field: value})
                except ValidationError as e:
                    raise ValueError(f"tune: space {key}: {value!r}: {e.errors()[0]['msg']}") from None


class Settings(_Section):
    workdir: str
    overwrite: bool = False
    # The `data:` section belongs to the modality it names: its class (pipeline/modalities/)
    # adds that modality's fields (image_size, sample_rate, frames, ...) to the shared ones.
    data: SerializeAsAny[modalities.DataSection]
    ray: RayConfig = RayConfig()
    mlflow: MlflowConfig = MlflowConfig()
    # stage1, stage2 and sample take the modality's classes: the stage's shared fields and its
    # models' own (pipeline/sections.py)
    stage1: SerializeAsAny[Stage1Section] = Field(default_factory=dict, validate_default=True)
    codes: CodesConfig = CodesConfig()
    stage2: SerializeAsAny[Stage2Section] = Field(default_factory=dict, validate_default=True)
    sample: SerializeAsAny[SampleSection] = Field(default_factory=dict, validate_default=True)
    tune: TuneSection = TuneSection()

    @field_validator("data", mode="before")
    @classmethod
    def _modality_data(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        name = value.get("modality", modalities.DEFAULT)
        if not isinstance(name, str):
            raise ValueError(f"modality must be a name, got {name!r}")
        try:
            modality = modalities.get(name)
        except ValueError as e:
            raise ValueError(f"modality: {e}") from None
        return modality.DataConfig.model_validate({**value, "modality": name})

    @field_validator("stage1", "stage2", "sample", mode="before")
    @classmethod
    def _modality_sections(cls, value: Any, info: ValidationInfo) -> Any:
        data = info.data.get("data")
        if data is None or not isinstance(value, dict):
            return value
        section = {"stage1": "Stage1Config", "stage2": "Stage2Config", "sample": "SampleConfig"}[info.field_name]
        return getattr(modalities.get(data.modality), section).model_validate(value)

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

    @model_validator(mode="after")
    def _check_trials(self, info: ValidationInfo) -> "Settings":
        # Every trial's config must be valid before the search starts, not minutes into it.
        if (info.context or {}).get("trial"):
            return self
        self.tune.check_values(type(self.stage1))
        for key, spec in self.tune.space.items():
            for value in spec if isinstance(spec, list) else spec.get("choice", [None]):
                params = {} if value is None else {key: value}
                try:
                    Settings.model_validate(self.trial_tree(params), context={"trial": True})
                except ValidationError as e:
                    raise ValueError(_format_error(e, f"tune trial {params}")) from None
        return self

    def trial_tree(self, params: dict[str, Any]) -> dict:
        """The config tree of one Tune trial: these settings, then `tune.overrides`, then the
        trial's own `params` (both dotted `section.key: value`)."""
        tree = self.model_dump()
        for key, value in [*self.tune.overrides.items(), *params.items()]:
            node = tree
            *path, leaf = key.split(".")
            for part in path:
                if not isinstance(node.get(part), dict):
                    raise ValueError(f"tune: {key!r} does not name a config key")
                node = node[part]
            if isinstance(node.get(leaf), dict) or leaf not in node:  # a section, or no such key
                raise ValueError(f"tune: {key!r} does not name a config key")
            node[leaf] = value
        tree["tune"] = {**tree["tune"], "overrides": {}}  # a trial does not tune again
        return tree

    @property
    def modality(self) -> "modalities.Modality":
        return modalities.get(self.data.modality)

    # Where each stage's outputs live (docs/architecture.md, "The stages").
    @property
    def shards_dir(self) -> str:
        return f"{self.workdir}/shards/{self.data.name}"

    @property
    def runs_dir(self) -> str:
        return f"{self.workdir}/runs"

    @property
    def codes_dir(self) -> str:
        return f"{self.workdir}/codes/{self.data.name}"

    def codes_dir_for(self, vqvae_version: str | int, vqvae_run_id: str) -> str:
        """The codes of one VQ-VAE: named by its version and its run id, so that the codes of two
        versions never mix and a version number of another MLflow store never finds them."""
        return f"{self.codes_dir}/v{vqvae_version}-{vqvae_run_id[:12]}"

    @property
    def samples_dir(self) -> str:
        return f"{self.workdir}/samples"

    @property
    def vqvae_name(self) -> str:
        """The registered model stage 1 makes a new version of."""
        return f"vqvae-{self.data.name}"

    @property
    def prior_name(self) -> str:
        return f"prior-{self.data.name}"

    @property
    def vqvae_champion(self) -> str:
        """The VQ-VAE codes, stage 2 and sampling use unless codes.model / stage2.vqvae say otherwise."""
        return f"models:/{self.vqvae_name}@champion"

    @property
    def prior_champion(self) -> str:
        return f"models:/{self.prior_name}@champion"

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
    if first["type"] == "value_error":  # our own validators: the message names the key
        msg = first["msg"].removeprefix("Value error, ")
        return f"{source}: {msg}" if not first["loc"] else f"{source}: key '{key}': {msg}"
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
