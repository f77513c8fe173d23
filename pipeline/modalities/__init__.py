"""The modality seam: every question the shared stages ask about one kind of data.

Images, speech and video differ in a few places only: where the raw inputs are, how one becomes a
sample, how a sample is stored in a tar and read back, how samples make a batch, which models
fit them, how validation is scored and how results are written. Each kind of data answers these
in one `Modality` object; `data.modality` in the config selects it through `get(name)`. The
shard, training, codes and sampling stages ask the modality and never branch on its name, and
the modality's hooks take the config sections they need, never the whole settings tree.

    modality = get(settings.data.modality)        # "image", or "package.module:ATTRIBUTE"
    listing = modality.find(settings.data)        # splits of RawItems, conditioning, manifest fields
    members = modality.to_members(modality.preprocess(raw_bytes, item, settings.data))
    item = modality.from_members(members)         # Item(x, cond): floats, or pixels kept uint8
    batch = modality.collate([item, ...]).to(device)  # Batch(x, cond, mask) as the model sees it
    model = modality.build_autoencoder(settings.stage1, settings.data, listing.cond)

A modality outside this package (a plugin, or one a test defines) is named by its import path,
`data.modality: mypackage.speech:MODALITY`; importing it registers it. Training and codes run in
Ray workers, which must be able to import it too (install it, or put it on PYTHONPATH).

A modality whose libraries come with an extra (`pip install 'vqvae-pipeline[speech]'`) says so
with `require` when it is imported: a missing one is one line naming the pip command.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

if TYPE_CHECKING:  # torch is imported where a tensor is made: Ray Data's shard workers never need it
    import torch
    from torch import Tensor

from pipeline.errors import UserError
from pipeline.formats import CondSpec
from pipeline.modalities import common
from pipeline.sections import SampleSection, Section, Stage1Section, Stage2Section

__all__ = ["Batch", "CondSpec", "Conversion", "DataSection", "Item", "Listing", "Modality", "MissingExtra", "RawItem",
           "SkipSample", "get", "model_classes", "names", "pixels_to_model", "register", "require"]

# ---- what stages exchange ------------------------------------------------------------------------


class SkipSample(Exception):
    """A raw input that cannot become a sample; the message is the reason recorded in the manifest."""


@dataclass(frozen=True)
class RawItem:
    """One raw input of a split: where it is, its conditioning ids, its sample key (unique, no
    dots), a reason when it is known up front that it cannot be used, and what else the listing
    knows of it that the sample keeps (a transcript, a speaker's name)."""
    key: str
    path: str
    cond: dict[str, Any] = field(default_factory=dict)
    skip: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Listing:
    """What `find` returns: the raw inputs of each split, the conditioning they carry, and the
    modality's own fields for the shard manifest (class names, image size, speaker table, ...)."""
    splits: dict[str, list[RawItem]]
    cond: dict[str, CondSpec]
    manifest: dict = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)  # {path, reason}: inputs the listing could not take


def pixels_to_model(x: Tensor) -> Tensor:
    """uint8 pixels (0-255) -> float in [-0.5, 0.5], the model space of images and video, on
    x's device. Readers keep pixels uint8 up to `Batch.to`: a quarter of the bytes through the
    loader processes, pinned memory and the host-to-device copy, and no float conversion on the
    decoding cores (a GPU does it in microseconds)."""
    return x.float().div_(255.0).sub_(0.5)


@dataclass
class Item:
    """One sample: x (C, *spatial), float as the model sees it or uint8 pixels that `Batch.to`
    maps with `pixels_to_model`; its conditioning ids."""
    x: Tensor
    cond: dict[str, Any] = field(default_factory=dict)
    key: str = ""


@dataclass
class Batch:
    """x (B, C, *spatial), float, or uint8 pixels until `to` puts it on a device; cond: name ->
    (B,) or (B, T) int64; mask (B, *spatial) bool where lengths vary (True on real positions),
    else None. What a model gets is `batch.to(device)`."""
    x: Tensor
    cond: dict[str, Tensor] = field(default_factory=dict)
    mask: Tensor | None = None
    keys: list[str] = field(default_factory=list)
    skipped: int = 0  # corrupt samples the reader skipped since its previous batch

    def to(self, device) -> "Batch":
        """On `device`, x in the model's space (uint8 pixels become floats there, after the copy);
        the copies do not wait when the batch is in pinned memory."""
        import torch

        x = self.x.to(device, non_blocking=True)
        return Batch(pixels_to_model(x) if x.dtype == torch.uint8 else x,
                     {k: v.to(device, non_blocking=True) for k, v in self.cond.items()},
                     None if self.mask is None else self.mask.to(device, non_blocking=True), self.keys, self.skipped)

    def pin_memory(self) -> "Batch":
        """What DataLoader(pin_memory=True) calls: page-locked copies, for asynchronous copies."""
        return Batch(self.x.pin_memory(), {k: v.pin_memory() for k, v in self.cond.items()},
                     None if self.mask is None else self.mask.pin_memory(), self.keys, self.skipped)

    def __len__(self) -> int:
        return self.x.shape[0]


class DataSection(Section):
    """The `data:` fields every modality has; a modality subclasses it with its own."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    # "{workdir}" in root is replaced by the workdir, so a demo's data can live beside its outputs.
    root: str
    modality: str = "image"  # DEFAULT below
    make_demo: bool = False  # jobs/pipeline.py builds the modality's demo data at `root` when missing
    val_fraction: float = Field(0.05, gt=0, lt=1)  # held out per class when the layout has no val split
    samples_per_shard: int = Field(1000, ge=1)
    seed: int = 0


# ---- the interface -------------------------------------------------------------------------------


class Modality:
    """One kind of data. Subclasses set `name` and `DataConfig` and implement the methods that
    raise NotImplementedError; the others have defaults that fit fixed-size samples."""

    name: ClassVar[str]
    DataConfig: ClassVar[type[DataSection]] = DataSection
    # The `stage1:`, `stage2:` and `sample:` sections: the stage's shared fields plus the fields of
    # the model the modality builds (pipeline/sections.py). By default the paper's VQ-VAE and the
    # Gated PixelCNN; speech and video declare their own models' sections.
    Stage1Config: ClassVar[type[Stage1Section]] = common.VQVAEStage1
    Stage2Config: ClassVar[type[Stage2Section]] = common.PixelCNNStage2
    SampleConfig: ClassVar[type[SampleSection]] = SampleSection
    # The metric stage 1 registers models on and Ray Tune searches on (lower is better), and the
    # run metrics `jobs/models.py` shows beside it.
    selection_metric: ClassVar[str] = "val_loss"
    key_metrics: ClassVar[tuple[str, ...]] = ()
    # The paper's reference number (with its setting) beside a metric, for the run's report.
    paper_references: ClassVar[dict[str, str]] = {}
    # Model classes beyond pipeline.models' own that this modality's registered models may be
    # (a plugin's); loading builds only classes named in one of the two.
    model_classes: ClassVar[dict[str, type[torch.nn.Module]]] = {}
    # The scores `evaluate` returns (none here), logged on the model's run after stage 1, and the
    # artifact folder of that run its files go to.
    evaluation_metrics: ClassVar[tuple[str, ...]] = ()
    # scores the evaluation adds when it can (an optional library), shown beside the others
    evaluation_extra: ClassVar[tuple[str, ...]] = ()
    evaluation_folder: ClassVar[str] = "evaluation"
    # The conditioning a conversion replaces (speech: "speaker"); None: the modality converts nothing.
    conversion_cond: ClassVar[str | None] = None

    # shard ------------------------------------------------------------------
    def find(self, data: DataSection) -> Listing:
        """The raw inputs in `data.root`'s layout. Raises UserError for a root that is not one."""
        raise NotImplementedError

    def preprocess(self, raw: bytes, item: RawItem, data: DataSection) -> Any:
        """A raw file's bytes -> the example to store; raises SkipSample(reason)."""
        raise NotImplementedError

    def samples_of(self, example: Any, key: str, data: DataSection) -> list[tuple[str, Any]]:
        """The samples one preprocessed input makes, each with its key (unique, no dots): the
        input itself here; the windows of a clip for video. `notes` and `tally` see the input."""
        return [(key, example)]

    def notes(self, example: Any) -> list[str]:
        """Warnings about a kept example (e.g. "upsampled"): the shard manifest counts them."""
        return []

    def to_members(self, example: Any) -> dict[str, bytes]:
        """The whole tar schema of one sample: extension -> bytes (conditioning included)."""
        raise NotImplementedError

    def tally(self, example: Any) -> dict[str, float]:
        """Additive figures of a kept example (hours of speech, per speaker, ...): the shard
        manifest holds their sums per split."""
        return {}

    # read -------------------------------------------------------------------
    def from_members(self, members: dict[str, bytes]) -> Item:
        """A sample's tar members -> Item; raises on a corrupt sample (the readers skip and count it)."""
        raise NotImplementedError

    def collate(self, items: list[Item]) -> Batch:
        """Items of one shape stacked; modalities whose lengths vary pad and return a mask."""
        import torch

        x = torch.stack([it.x for it in items])
        cond = {k: torch.as_tensor([it.cond[k] for it in items], dtype=torch.long) for k in items[0].cond}
        return Batch(x, cond, None, [it.key for it in items])

    def crop(self, item: Item, stage1: Stage1Section, rng) -> Item:
        """What stage 1 trains on (rng: a random.Random) and validates on (rng None) of a sample:
        the whole of it here; a random segment of an utterance for speech."""
        return item

    def sample_shape(self, data: DataSection) -> tuple[int, ...] | None:
        """The spatial shape of every sample, when it is fixed (checked against the model's
        downsampling before training starts); None when lengths vary."""
        return None

    # models -----------------------------------------------------------------
    def build_autoencoder(self, stage1: Stage1Section, data: DataSection, cond: dict[str, CondSpec]) -> torch.nn.Module:
        """The stage-1 model; `cond` is the conditioning the shards carry (a speaker-conditioned
        decoder needs the number of speakers)."""
        raise NotImplementedError

    def build_prior(self, stage2: Stage2Section, codebook_size: int, cond: dict[str, CondSpec],
                    latent_shape: list[int] | None = None, data: DataSection | None = None) -> torch.nn.Module:
        """The stage-2 model over the codes; `latent_shape` is their shape when it is fixed (None
        when it varies), `data` the data section (a video prior needs the window's frames)."""
        raise NotImplementedError

    def selection(self, stage1: Stage1Section) -> str:
        """The metric that ranks stage-1 checkpoints and registry versions of these settings (lower
        is better): `selection_metric`, unless a setting swaps the model's kind."""
        return self.selection_metric

    def prepare_autoencoder(self, model, manifest: dict | None) -> None:
        """Anything a new autoencoder takes from the shards (their manifest) before its first step."""

    def metric_scale(self, data: DataSection, stage1: Stage1Section) -> str | None:
        """What `selection_metric` scores, when settings can change that (then versions are
        compared for the champion only with versions that scored the same). None: always alike."""
        return None

    # scoring and writing ----------------------------------------------------------
    def val_sums(self, batch: Batch, out: Any) -> dict[str, float]:
        """Additive sums of one validation batch (summed over batches and ranks); `out` is the
        autoencoder's output on it (its reconstruction, or its decoder's NLL)."""
        raise NotImplementedError

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """Validation metrics from the summed `val_sums` (plus "samples"). Must include
        `selection_metric` and `val_recon_bits_per_dim`, the decoder's NLL in bits per input
        dimension, which stage 2 adds to the prior's bits to give the model's bits per dim."""
        raise NotImplementedError

    def example_length(self, stage1: Stage1Section, data: DataSection) -> int | None:
        """Positions of a validation sample written beside its reconstruction (None: all of it)."""
        return None

    def write(self, groups: list[list[Tensor]], path_stem: str, data: DataSection) -> list[str]:
        """Groups of model-space samples (each (C, *spatial), lengths may differ) -> files a person
        opens at `path_stem` + an extension: originals above their reconstructions, or one group
        per class. Written atomically; returns the paths, the main one first."""
        raise NotImplementedError

    # sampling ---------------------------------------------------------------
    def sample_latent_shape(self, data: DataSection, sample: SampleSection, dims_per_code: int) -> tuple[int, ...] | None:
        """The code shape to sample when the codes vary in shape (None: they do not)."""
        return None

    def decoder_options(self, sample: SampleSection) -> dict:
        """Keyword arguments of the VQ-VAE's decode_indices when sampling (speech: the WaveNet's
        temperature and progress). None here."""
        return {}

    def draw_samples(self, prior, vqvae, meta: dict, data: DataSection, sample: SampleSection, shards_dir: str,
                     device, stem: str) -> tuple[list[str], dict]:
        """What jobs/sample.py makes with the prior and the decoder: the files (at `stem` + an
        extension, the main one first) and metrics to log. `meta` is the prior's config.json,
        `shards_dir` the shards a modality may read real samples from. Here: `sample.per_class`
        samples of each class (or unconditional ones) drawn in one batch, decoded and written by
        `write`. Video continues val windows under their true and shuffled actions instead."""
        return common.draw_per_class(self, prior, vqvae, meta, data, sample, device, stem), {}

    # after stage 1 ----------------------------------------------------------
    def evaluation_settings(self, sample: SampleSection) -> str | None:
        """What `evaluate`'s scores depend on besides the model, as text: scores a model's run
        holds from the same text are reused. None: the modality has no evaluation."""
        return None

    def evaluate(self, model, shards_dir: str, data: DataSection, sample: SampleSection, device,
                 out_dir: str) -> tuple[dict, list[str]]:
        """Scores beyond validation's for a trained autoencoder (`evaluation_metrics`; speech:
        voice conversion) and files that show them, written under `out_dir`."""
        raise NotImplementedError

    def convert(self, load_model, shards_dir: str, sources: list[str], target: str, out_dir: str,
                data: DataSection, sample: SampleSection, device, seconds: float | None = None) -> "list[Conversion]":
        """Samples (`sources`: input files, val samples' keys, or "val" for every val sample)
        decoded under the `conversion_cond` of `target` (a name or id of the shards' table),
        written under `out_dir`, one result each. `load_model()` gives the autoencoder, called
        once, when the request is known to be good. Only for a modality with a `conversion_cond`."""
        raise NotImplementedError

    def make_demo(self, data: DataSection, small: bool = False) -> dict:
        """Small real demo data at `data.root`, made offline (jobs/pipeline.py, `data.make_demo`);
        returns {"out": root, "created": bool, ...counts}. `small`: a few samples per class (or
        speaker), enough to exercise every code path in seconds (tests, `make_demo_data.py --small`)."""
        raise NotImplementedError(f"modality {self.name!r} has no demo data")


@dataclass
class Conversion:
    """What `Modality.convert` made: its name (`<source>-to-<target>`), the target's name, the
    files (the main one first), the seconds the decoding took and a line for a person."""
    name: str
    target: str
    files: list[str]
    seconds: float
    summary: str


# ---- extras and the registry ---------------------------------------------------------------------


class MissingExtra(UserError):
    """A modality's libraries are not installed."""


def require(extra: str, *modules: str) -> None:
    """Raise MissingExtra, one line naming the pip command, when a module of `extra` is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtra(f"the {extra} modality needs {', '.join(missing)}, which the base install leaves out: "
                           f"pip install 'vqvae-pipeline[{extra}]' (or pip install -e '.[{extra}]' in a checkout)")


_REGISTRY: dict[str, Modality] = {}
_BUILTIN = {"image": "pipeline.modalities.image", "speech": "pipeline.modalities.speech",
            "video": "pipeline.modalities.video"}
DEFAULT = "image"  # what a config without data.modality means


def register(modality: Modality) -> Modality:
    _REGISTRY[modality.name] = modality
    return modality


def get(name: str) -> Modality:
    """The modality called `name`: a built-in one, or `package.module:ATTRIBUTE` (imported and
    registered under that whole name). Raises ValueError for an unknown one, MissingExtra when
    its libraries are not installed."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
        return _REGISTRY[name]
    module_name, sep, attribute = name.partition(":")
    if not sep:
        raise ValueError(f"unknown modality {name!r}: one of {sorted(names())}, or package.module:ATTRIBUTE")
    try:
        modality = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"modality {name!r} cannot be imported: {e}") from None
    if not isinstance(modality, Modality):
        raise ValueError(f"modality {name!r} is a {type(modality).__name__}, not a Modality")
    _REGISTRY[name] = modality
    return modality


def names() -> list[str]:
    """Every modality that `get` knows without an import path."""
    return sorted({*_BUILTIN, *_REGISTRY})


def model_classes() -> dict[str, type[torch.nn.Module]]:
    """The model classes a registered model may be: pipeline.models' own and those of every
    modality loaded in this process (a plugin's)."""
    from pipeline.models import MODEL_CLASSES

    classes = dict(MODEL_CLASSES)
    for modality in _REGISTRY.values():
        classes.update(modality.model_classes)
    return classes
