"""Reading shards inside training workers with `webdataset`.

Training draws shards with replacement (`ResampledShards`): every rank gets an endless stream and
the loop runs a fixed number of steps, so all ranks see the same number of batches whatever the
shard sizes, and a skipped corrupt sample cannot desynchronise DDP (ranks that drew different
numbers of batches would wait on each other's gradients forever). Validation reads each shard
once, rank r taking shards r, r+world, ...

What a sample's members mean is the modality's business: `modality.from_members` turns them into
an Item and `modality.collate` makes the batch.
"""
from __future__ import annotations

import random
from typing import Iterator

import webdataset as wds

from pipeline.data.shard import load_manifest
from pipeline.errors import UserError
from pipeline.modalities import Modality


class SkipCounter:
    """Corrupt samples are skipped and counted, never fatal."""

    def __init__(self) -> None:
        self.count = 0

    def handler(self, exn: Exception) -> bool:
        self.count += 1
        return True  # continue


def shard_urls(shards_dir: str, split: str) -> tuple[dict, list[str]]:
    manifest = load_manifest(shards_dir)
    if manifest is None:
        raise UserError(f"no finished shards at {shards_dir} (run jobs/shard.py first)")
    urls = [f"{shards_dir}/{s['path']}" for s in manifest["splits"][split]["shards"] if s["samples"]]
    if not urls:
        raise UserError(f"{shards_dir}/manifest.json: split '{split}' has no samples")
    return manifest, urls


def members(sample: dict) -> dict[str, bytes]:
    """A webdataset sample without its `__key__`/`__url__` bookkeeping: extension -> bytes."""
    return {k: v for k, v in sample.items() if not k.startswith("__")}


def _decoder(modality: Modality, skips: SkipCounter):
    def sample(s: dict):
        try:
            item = modality.from_members(members(s))
        except Exception as e:  # noqa: BLE001 - a bad sample is skipped and counted
            skips.handler(e)
            return None
        item.key = s["__key__"]
        return item
    return sample


def train_batches(urls: list[str], batch_size: int, seed: int, rank: int, modality: Modality,
                  skips: SkipCounter, shuffle_buffer: int = 2000) -> Iterator:
    """Endless shuffled Batches; a different stream per rank and seed."""
    return iter(wds.DataPipeline(
        wds.ResampledShards(urls, seed=seed * 7919 + rank, deterministic=True, worker_seed=lambda: rank),
        wds.tarfile_to_samples(handler=skips.handler),
        wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 500), rng=random.Random(seed * 31 + rank)),
        wds.map(_decoder(modality, skips)),
        wds.select(lambda s: s is not None),
        wds.batched(batch_size, collation_fn=modality.collate, partial=False),
    ))


def eval_batches(urls: list[str], batch_size: int, rank: int, world: int, modality: Modality,
                 skips: SkipCounter) -> Iterator:
    """Each sample of this rank's shards once, in a fixed order."""
    mine = urls[rank::world]
    if not mine:
        return iter(())
    return iter(wds.DataPipeline(
        wds.SimpleShardList(mine),
        wds.tarfile_to_samples(handler=skips.handler),
        wds.map(_decoder(modality, skips)),
        wds.select(lambda s: s is not None),
        wds.batched(batch_size, collation_fn=modality.collate, partial=True),
    ))
