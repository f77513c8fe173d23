"""Stage 2: fit the prior over a VQ-VAE's codes with Ray Train (DDP), log and register it.

    python jobs/stage2.py --config configs/demo.yaml [--set stage2.steps=500]

The codes are those the codes stage dumped for `stage2.vqvae`, by default the VQ-VAE champion.
The modality builds the prior (`build_prior`) with the conditioning the codes carry. Rank r of
`world` reads only its contiguous r-th part of each split's Parquet row groups and keeps it in
memory in its stored integer type (pipeline/formats/codes.py `read_rows`: N / world rows a
worker, 1 or 2 bytes a code), and draws batches with replacement from a seeded RNG, padding
arrays of different shapes and masking the padding. The rows come from shards that the shard
stage mixed across classes, so every rank's part holds every class. The
loop runs a fixed number of steps, so every rank does the same number of passes and DDP stays in
step. The best validated checkpoint is registered as `prior-<dataset>`, champion by
val_nll_bits_per_code, tagged with the VQ-VAE version whose codes it learnt, so sampling can
refuse a decoder it was not trained for.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from pipeline.config import Settings
from pipeline.errors import UserError
from pipeline.formats import codes as codeset
from pipeline.formats import cond_specs
from pipeline.formats.shards import load_manifest, manifest_digest
from pipeline.modalities import Batch
from pipeline.stages.train.common import RankZeroMlflow, all_reduce_sum
from pipeline.stages.train.driver import run_name as _run_name
from pipeline.stages.train.driver import shaping, train_and_register
from pipeline.stages.train.loop import Task, train_loop

METRIC = "val_nll_bits_per_code"
KEY_METRICS = ("val_bits_per_dim", "uniform_bits_per_code")


def codes_info(settings: Settings, vqvae: dict) -> dict:
    """What the workers need to know about the codes, from the codes manifest and the VQ-VAE."""
    from pipeline import tracking

    folder = settings.codes_dir_for(vqvae["version"], vqvae["run_id"])
    manifest = codeset.load_manifest(folder)
    what = f"{vqvae['name']} v{vqvae['version']} (run {vqvae['run_id']})"
    if manifest is None:
        raise UserError(f"no codes for {what} at {folder} (run jobs/dump_codes.py first)")
    # Never a prior on stale codes: the model's weights and the shards must be those they came from.
    made = manifest["identity"]
    weights = tracking.weights_digest(f"models:/{vqvae['name']}/{vqvae['version']}")
    shards = load_manifest(settings.shards_dir)
    if made["weights_sha256"] != weights or (shards is not None and
                                            made["shards_manifest_sha256"] != manifest_digest(shards)):
        stale = "weights" if made["weights_sha256"] != weights else f"shards (now {settings.shards_dir})"
        raise UserError(f"the codes at {folder} were made from other {stale} than {what}'s: "
                        f"run jobs/dump_codes.py with --set overwrite=true")
    # the decoder's likelihood per input dimension; none for a decoder that has no likelihood (one
    # trained on a regression loss): then the prior's bits per code stand alone
    bits_tag = vqvae["tags"].get("decoder_bits_per_dim")
    try:
        decoder_bits = None if bits_tag is None else float(bits_tag)
    except ValueError:
        raise UserError(f"{vqvae['name']} v{vqvae['version']}: its 'decoder_bits_per_dim' tag {bits_tag!r} is "
                        f"not a number") from None
    return {"dir": folder, "digest": manifest_digest(manifest),
            "codebook_size": manifest["codebook_size"], "cond": manifest["cond"],
            "latent_shape": manifest["latent_shape"], "input_dims_per_code": manifest["input_dims_per_code"],
            "decoder_bits_per_dim": decoder_bits}


def build_prior(settings: Settings, info: dict) -> torch.nn.Module:
    return settings.modality.build_prior(settings.stage2, info["codebook_size"], cond_specs(info["cond"]),
                                         latent_shape=info["latent_shape"], data=settings.data)


def run_name(settings: Settings, info: dict) -> str:
    """Named by the prior's config and the exact codes (their manifest's digest)."""
    return _run_name("stage2", settings, {**shaping(settings.stage2), "codes": info["digest"]})


class _Rows:
    """A split's rows of one rank (`codes.read_rows`), drawn as Batches."""

    def __init__(self, rows: codeset.CodeRows):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, idx: np.ndarray) -> Batch:
        codes, cond, mask = self.rows.batch(idx)
        return Batch(codes, cond, mask)


class PriorTask(Task):
    def __init__(self, settings: Settings, info: dict, rank: int, world: int, device: torch.device):
        self.settings, self.info, self.rank, self.device = settings, info, rank, device
        self.section = settings.stage2
        self.train = _Rows(codeset.read_rows(info["dir"], "train", rank, world))
        self.val = _Rows(codeset.read_rows(info["dir"], "val", rank, world))
        if len(self.train) == 0:
            raise RuntimeError(f"rank {rank}: no training rows ({info['dir']} has fewer rows than workers)")

    def build(self):
        return build_prior(self.settings, self.info)

    def batches(self, start: int):
        # Seeded by step too: a resumed run draws fresh batches rather than replaying the first ones.
        rng = np.random.default_rng([self.section.seed, self.rank, start])
        while True:
            yield self.train.batch(rng.integers(0, len(self.train), self.section.batch_size))

    @torch.no_grad()
    def validate(self, model, step: int, final: bool, mlf: RankZeroMlflow) -> dict:
        """NLL over this rank's val rows, summed over ranks; bits per dim as in the paper's bound:
        the prior's bits for the latents plus the decoder's, both per input dimension."""
        model.eval()
        bits, positions = 0.0, 0.0
        size = self.section.batch_size
        for i in range(0, len(self.val), size):
            batch = self.val.batch(np.arange(i, min(i + size, len(self.val)))).to(self.device)
            count = batch.x.numel() if batch.mask is None else batch.mask.sum().item()
            bits += model(batch.x, batch.cond, batch.mask).loss.item() * count
            positions += count
        totals = all_reduce_sum([bits, positions], self.device)
        model.train()
        bits_per_code = (totals[0] / totals[1]).item()
        info = self.info
        metrics = {METRIC: bits_per_code, "uniform_bits_per_code": math.log2(info["codebook_size"])}
        if info["decoder_bits_per_dim"] is not None:
            metrics["val_bits_per_dim"] = bits_per_code / info["input_dims_per_code"] + info["decoder_bits_per_dim"]
        return metrics


def train_loop_per_worker(config: dict) -> None:
    train_loop(config, lambda settings, config, rank, world, device:
               PriorTask(settings, config["codes"], rank, world, device))


def stage2(settings: Settings) -> dict:
    """Fit (or resume, or find finished) the prior over the codes of `stage2.vqvae` (default the
    VQ-VAE champion) and register its best validated checkpoint."""
    from pipeline import tracking

    tracking.setup_tracking(settings.tracking_uri, settings.experiment)
    vqvae = tracking.resolve(settings.stage2.vqvae or settings.vqvae_champion)
    info = codes_info(settings, vqvae)
    lineage = {"vqvae_name": vqvae["name"], "vqvae_version": vqvae["version"], "vqvae_run_id": vqvae["run_id"],
               "codes": info["dir"], "dataset": settings.data.name}

    def summary(done: dict) -> str:
        m = done["metrics"]
        return (f"stage2 {settings.data.name}: {settings.stage2.steps} steps in {done['seconds']:.0f} s, best at "
                f"step {m['step']}: val {m[METRIC]:.3f} bits/code (uniform {m['uniform_bits_per_code']:.3f}); "
                f"{'' if 'val_bits_per_dim' not in m else format(m['val_bits_per_dim'], '.3f') + ' bits/dim; '}"
                f"registered {done['name']} v{done['version']}"
                f"{' (champion)' if done['promoted'] else ''} on {vqvae['name']} v{vqvae['version']}; "
                f"MLflow run {done['run_id']}")

    return train_and_register(
        settings, stage="stage2", name=run_name(settings, info), registered=settings.prior_name,
        lineage=lineage, loop=train_loop_per_worker, loop_config={"codes": info},
        max_failures=settings.stage2.max_failures, build=lambda: build_prior(settings, info), metric=METRIC,
        key_metrics=KEY_METRICS, metadata={"latent_shape": info["latent_shape"], "cond": info["cond"]},
        best=True, summary=summary)
