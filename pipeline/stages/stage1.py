"""Stage 1: train the VQ-VAE on the shards with Ray Train (DDP), log it in MLflow, register it.

    python jobs/stage1.py --config configs/demo.yaml [--set stage1.steps=300]

The modality builds the model (`build_autoencoder`), reads and batches the shards
(`from_members`, `collate`) and scores validation (`val_sums`, `metrics`); codebook usage and
perplexity are the same for every modality. A Ray Train run is named by a hash of what shapes the
model, so re-running the same config resumes from its last checkpoint (or does nothing when it
had finished), and a worker dying is survived with FailureConfig(max_failures). The driver owns
the MLflow run: it checks the server before any training, creates the run (its id kept beside the
checkpoints, so a resumed run logs into the same MLflow run), and logs + registers the final
model as safetensors + JSON, `champion` when its `selection_metric` beats the holder's.
"""
from __future__ import annotations

import json
import math
import os
import tempfile

import torch

from pipeline.config import Settings
from pipeline.errors import UserError
from pipeline.formats.reader import NO_SAMPLES, NoSamples, SkipCounter, TrainStream, eval_batches, loader, shard_urls
from pipeline.formats.shards import load_manifest, manifest_digest, shard_cond
from pipeline.models.metrics import perplexity
from pipeline.stages.train.common import RankZeroMlflow, all_reduce_sum, sum_over_ranks
from pipeline.stages.train.driver import run_name as _run_name
from pipeline.stages.train.driver import shaping, train_and_register
from pipeline.stages.train.loop import Task, train_loop

EXAMPLES = 8  # validation samples written beside their reconstructions


def build_model(settings: Settings, manifest: dict | None = None) -> torch.nn.Module:
    """The modality's autoencoder for the conditioning the shards carry (read from their manifest
    when not given; none before sharding)."""
    if manifest is None:
        manifest = load_manifest(settings.shards_dir)
    cond = shard_cond(manifest) if manifest is not None else {}
    return settings.modality.build_autoencoder(settings.stage1, settings.data, cond)


def check_input_size(settings: Settings) -> None:
    """Inputs too small for the downsampling fail here, in one line, before Ray starts."""
    shape = settings.modality.sample_shape(settings.data)
    if shape is None:
        return
    try:
        build_model(settings).latent_shape(tuple(shape))
    except ValueError as e:
        raise UserError(f"stage1.num_downsamples={settings.stage1.num_downsamples}: {e}") from None


def run_name(settings: Settings) -> str:
    """Named by the model config and the exact shards (their manifest's digest): other data, even
    re-sharded into the same folder, is a new run, never "already finished"."""
    shards = shard_lineage(settings)["shards_manifest_sha256"]
    return _run_name("stage1", settings, {**shaping(settings.stage1), "shards": shards})


def shard_lineage(settings: Settings) -> dict:
    manifest, _ = shard_urls(settings.shards_dir, "train")
    return {"shards": settings.shards_dir, "shards_manifest_sha256": manifest_digest(manifest),
            "dataset": settings.data.name,
            "modality": settings.data.modality}


def _crop(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """One sample (C, *spatial) without the padding its mask (*spatial) marks."""
    if mask is None:
        return x
    extent = [int(idx.max()) + 1 if idx.numel() else 0 for idx in mask.nonzero(as_tuple=True)]
    return x[(slice(None), *(slice(0, n) for n in extent))]


def loader_workers(settings: Settings, device: torch.device) -> int:
    """Decoding processes beside a training worker (ray.loader_workers; see its comment)."""
    if settings.ray.loader_workers is not None:
        return settings.ray.loader_workers
    if device.type != "cuda":
        return 0
    return max(1, int(settings.ray.cpus_per_worker) - 1)


class VQVAETask(Task):
    ddp_kwargs = {"broadcast_buffers": False}  # the quantizer keeps its buffers identical itself

    def __init__(self, settings: Settings, rank: int, world: int, device: torch.device):
        self.settings, self.rank, self.world, self.device = settings, rank, world, device
        self.section = settings.stage1
        self.modality = settings.modality
        self.manifest, self.train_urls = shard_urls(settings.shards_dir, "train")
        _, self.val_urls = shard_urls(settings.shards_dir, "val")
        self.skips = SkipCounter(f"the train shards of {settings.shards_dir}")

    def build(self):
        model = build_model(self.settings, self.manifest)
        self.modality.prepare_autoencoder(model, self.manifest)  # a checkpoint, when resumed, overrides it
        return model

    def batches(self, start: int):
        s = self.section
        stream = TrainStream(self.train_urls, s.batch_size, s.seed + start, self.rank, self.modality,
                             self.skips.where, crop=s,
                             crop_seed=s.seed * 7919 + start * 31 + self.rank)  # crops differ per rank and resume
        return loader(stream, loader_workers(self.settings, self.device), self.device.type == "cuda", self.skips)

    def train_logs(self) -> dict:
        return {"skipped_samples": self.skips.count}

    @torch.no_grad()
    def validate(self, model, step: int, final: bool, mlf: RankZeroMlflow) -> dict:
        """The modality's metrics over the whole val split (shards divided between ranks, sums
        added over ranks), codebook usage and perplexity over every real latent position."""
        model.eval()
        k = model.vq.codebook_size
        sums: dict[str, float] = {}
        hist = torch.zeros(k, device=self.device, dtype=torch.float64)
        examples: dict = {}  # one sample per class (when there are classes), written reconstructed
        skips = SkipCounter(f"the val shards of {self.settings.shards_dir}")
        for batch in eval_batches(self.val_urls, self.section.batch_size, self.rank, self.world, self.modality, skips,
                                  view=lambda item: self.modality.crop(item, self.section, None)):
            batch = batch.to(self.device)
            out = model(batch.x, batch.cond, batch.mask)
            for name, value in self.modality.val_sums(batch, out).items():
                sums[name] = sums.get(name, 0.0) + value
            sums["samples"] = sums.get("samples", 0.0) + len(batch)
            indices = out.vq.indices
            latent_mask = model.latent_mask(batch.mask, tuple(indices.shape[1:]))
            used = indices.flatten() if latent_mask is None else indices[latent_mask]
            hist += torch.bincount(used, minlength=k).double()
            if mlf.client is not None:
                self._pick(examples, batch)
        sums = sum_over_ranks(sums)
        hist = all_reduce_sum(hist, self.device)
        if not sums.get("samples"):
            raise NoSamples(f"{NO_SAMPLES} from the {len(self.val_urls)} val shards of {self.settings.shards_dir} "
                            f"(last error: {skips.last_error or 'none'}); re-run jobs/shard.py with --set overwrite=true")
        sums["latent_bits"] = hist.sum().item() * math.log2(k)  # the uniform prior's bits (KL = log K)
        metrics = {**self.modality.metrics(sums), "perplexity": perplexity(hist.cpu()),
                   "codebook_usage": (hist > 0).double().mean().item()}
        self._log_pictures(mlf, step, examples, hist.cpu(), final, model)
        model.train()
        return metrics

    def _pick(self, examples: dict, batch) -> None:
        """Up to EXAMPLES samples (the first `example_length` positions of each): one per class
        of the first class-like conditioning."""
        labels = next((v for v in batch.cond.values() if v.dim() == 1), None)
        length = self.modality.example_length(self.section, self.settings.data)
        for i in range(len(batch)):
            if len(examples) >= EXAMPLES:
                return
            which = int(labels[i]) if labels is not None else len(examples)
            if which not in examples:
                x = _crop(batch.x[i], None if batch.mask is None else batch.mask[i])
                if length is not None:
                    x = x[..., :length]
                examples[which] = (x, {k: v[i:i + 1] for k, v in batch.cond.items()})

    def _reconstruct(self, model, examples: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(original, reconstruction) of every example: in one batch when they have one shape,
        else one at a time."""
        generator = torch.Generator(device=self.device).manual_seed(self.section.seed)
        items = [examples[c] for c in sorted(examples)]
        if len({tuple(x.shape) for x, _ in items}) == 1:
            groups = [items]
        else:
            groups = [[item] for item in items]
        pairs = []
        for group in groups:
            x = torch.stack([x for x, _ in group])
            cond = {k: torch.cat([c[k] for _, c in group]) for k in group[0][1]}
            recon = model.reconstruct(x, cond, None, generator=generator).float()
            pairs += [(a.cpu(), b.cpu()) for a, b in zip(x, recon)]
        return pairs

    def _log_pictures(self, mlf: RankZeroMlflow, step: int, examples: dict, hist, final: bool, model) -> None:
        if mlf.client is None or not examples:
            return
        pairs = self._reconstruct(model, examples)
        # log_artifact copies (or uploads) before it returns, so the folder can go right after
        with tempfile.TemporaryDirectory(prefix="stage1-art-") as folder:
            # first group: originals; second: their reconstructions
            for path in self.modality.write([[a for a, _ in pairs], [b for _, b in pairs]],
                                            os.path.join(folder, f"step_{step:07d}"), self.settings.data):
                mlf.artifact(path, "reconstructions")
            if final:
                _log_usage(mlf, folder, hist)


def _log_usage(mlf: RankZeroMlflow, folder: str, hist) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = hist.numpy()
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.bar(range(len(counts)), sorted(counts, reverse=True), width=1.0)
    ax.set(xlabel="code (sorted by use)", ylabel="val latents", title="codebook usage")
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "codebook_usage.png"), dpi=80)
    plt.close(fig)
    with open(os.path.join(folder, "codebook_counts.json"), "w") as f:
        json.dump([int(c) for c in counts], f)
    mlf.artifact(os.path.join(folder, "codebook_usage.png"))
    mlf.artifact(os.path.join(folder, "codebook_counts.json"))


def train_loop_per_worker(config: dict) -> None:
    train_loop(config, lambda settings, config, rank, world, device: VQVAETask(settings, rank, world, device))


def version_tags(metrics: dict, settings: Settings) -> dict:
    """What stage 2 needs from a VQ-VAE version: the decoder's bits per input dimension; and what
    its selection metric scores, where the modality says (the registry compares only alike)."""
    from pipeline.tracking import scale_tags

    bits = metrics.get("val_recon_bits_per_dim")
    tags = {} if bits is None else {"decoder_bits_per_dim": repr(float(bits))}
    return {**tags, **scale_tags(settings.modality.metric_scale(settings.data, settings.stage1))}


def stage1(settings: Settings) -> dict:
    """Train (or resume, or find finished) the VQ-VAE of these settings and register it; then the
    modality's evaluation of the registered model, if it has one."""
    check_input_size(settings)
    lineage = shard_lineage(settings)  # no shards: one-line error before anything starts
    modality = settings.modality
    manifest = load_manifest(settings.shards_dir)
    modality.prepare_autoencoder(build_model(settings, manifest), manifest)  # what it needs of them is there

    def summary(done: dict) -> str:
        m = done["metrics"]
        scores = ", ".join(f"{k} {m[k]:.4g}" for k in (modality.selection(settings.stage1), *modality.key_metrics) if k in m)
        line = (f"stage1 {settings.data.name}: {m['step']} steps in {done['seconds']:.0f} s; {scores}; registered "
                f"{done['name']} v{done['version']}{' (champion)' if done['promoted'] else ''}; "
                f"MLflow run {done['run_id']}")
        used = round(m.get("codebook_usage", 1.0) * settings.stage1.codebook_size)
        if used < 2:  # an autoregressive decoder can do without the codes: its loss looks fine
            line += (f"\nstage1 {settings.data.name}: warning: the codebook collapsed to {used} code in use; "
                     f"the decoder ignores the codes (try a lower stage1.lr, or stage1.dead_code_steps)")
        return line

    done = train_and_register(
        settings, stage="stage1", name=run_name(settings), registered=settings.vqvae_name, lineage=lineage,
        loop=train_loop_per_worker, loop_config={}, max_failures=settings.stage1.max_failures,
        build=lambda: build_model(settings), metric=modality.selection(settings.stage1), key_metrics=modality.key_metrics,
        version_tags=lambda metrics: version_tags(metrics, settings), summary=summary)
    evaluate_after_training(settings, f"models:/{done['name']}/{done['version']}", "stage1")
    return done


def evaluate_after_training(settings: Settings, model_uri: str, stage: str) -> dict:
    """The modality's evaluation of a model just registered, logged on its run (stages/convert.py);
    a model that cannot be scored (one speaker only) stays trained and registered all the same."""
    from pipeline.stages.convert import evaluate

    try:
        scores = evaluate(settings, model_uri)
    except UserError as e:
        print(f"{stage} {settings.data.name}: not evaluated: {e}", flush=True)
        return {}
    if scores:
        print(f"{stage} {settings.data.name}: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(scores.items())),
              flush=True)
    return scores
