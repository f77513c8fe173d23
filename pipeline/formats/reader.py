"""Reading shards with `webdataset`: the training stream and the validation pass.

Training draws shards with replacement (`ResampledShards`), reads several at once, interleaved,
and shuffles their samples in a buffer (the shards themselves hold a seeded mix of the
classes, pipeline/stages/shard.py); every rank gets an endless stream and
the loop runs a fixed number of steps, so all ranks see the same number of batches whatever the
shard sizes, and a skipped corrupt sample cannot desynchronise DDP (ranks that drew different
numbers of batches would wait on each other's gradients forever). Validation reads each shard
once, rank r taking shards r, r+world, ...

What a sample's members mean is the modality's business: the functions here take the modality
(pipeline.modalities.Modality, a layer above this one), whose `from_members` turns a sample's
members into an Item and whose `collate` makes the batch.

Decoding (PNG, FLAC) costs a core about a millisecond per 128x128 image, so on a GPU the training
loop would mostly wait for it. `TrainStream` runs the same pipeline in DataLoader worker
processes (`loader`): each worker reads its own endless stream, seeded by (seed, rank, worker), so
ranks still draw one batch per step each; the batches come back in pinned memory, and the samples
a worker skipped ride along with its batches (`Batch.skipped`) into the rank's SkipCounter.
Pixels stay uint8 through all of it (a quarter of the bytes); `Batch.to` makes them floats on the
device. (Why not Ray Data's iterator: docs/architecture.md.)
"""
from __future__ import annotations

import importlib
import random
from typing import Iterator

import torch
import webdataset as wds

from pipeline import fs as fsx
from pipeline.errors import UserError
from pipeline.formats.shards import MANIFEST, load_manifest


def open_stream(url: str, mode: str = "rb", bufsize: int = 8192, **kw):
    """webdataset's opener for tars on a pyarrow filesystem (s3://, gs://, ...): a buffered stream
    through the same filesystem (endpoint, credentials) as every other stage's reads and writes.
    webdataset 1.0 has no s3 handler of its own."""
    if "r" not in mode:
        raise ValueError(f"{url}: shards are opened for reading only")
    return fsx.open_read(url)


# the module, not webdataset.gopen (the package exports its function under that name)
_gopen = importlib.import_module("webdataset.gopen")
for _scheme in ("s3", "gs", "gcs", "hdfs", "abfs", "abfss"):
    _gopen.gopen_schemes[_scheme] = open_stream


NO_SAMPLES = "no sample could be read"  # the driver finds this in the workers' error
MAX_BAD_IN_A_ROW = 100  # consecutive unreadable samples before a stage gives up


class NoSamples(RuntimeError):
    """The shards yield nothing: every read fails, or every tar is empty."""


def _describe(exn: Exception) -> str:
    """`Type: message (where)` in one short line; webdataset appends the shard's URL to the args."""
    args = exn.args
    message = args[0] if args and isinstance(args[0], str) else (str(exn).splitlines() or [""])[0]
    where = f" ({args[-1]})" if len(args) > 1 and isinstance(args[-1], str) else ""
    return f"{type(exn).__name__}: {message}{where}"[:300]


class SkipCounter:
    """Corrupt samples are skipped and counted, never fatal, unless nothing can be read at all:
    then, rather than spin for ever drawing shards that yield nothing, it raises NoSamples after
    MAX_BAD_IN_A_ROW failures in a row, or `max_empty_draws` shards in a row without a sample."""

    def __init__(self, where: str = "the shards", max_empty_draws: int = 100) -> None:
        self.count = 0
        self.where = where
        self.max_empty_draws = max_empty_draws
        self.bad_in_a_row = 0
        self.draws_without_sample = 0
        self.last_error = ""

    def handler(self, exn: Exception) -> bool:
        self.count += 1
        self.bad_in_a_row += 1
        self.last_error = _describe(exn)
        if self.bad_in_a_row >= MAX_BAD_IN_A_ROW:
            raise NoSamples(f"{NO_SAMPLES} from {self.where}: {self.bad_in_a_row} failures in a row "
                            f"(last: {self.last_error}); re-run jobs/shard.py with --set overwrite=true")
        return True  # continue

    def good(self) -> None:
        self.bad_in_a_row = 0

    def drawn(self, src):
        """Pipeline stage over shard URLs: counts draws since the last sample came out of a tar."""
        for url in src:
            self.draws_without_sample += 1
            if self.draws_without_sample > self.max_empty_draws:
                raise NoSamples(f"{NO_SAMPLES} from {self.where}: {self.draws_without_sample - 1} shards drawn "
                                f"in a row gave no sample (empty or unreadable tars; last error: "
                                f"{self.last_error or 'none'}); re-run jobs/shard.py with --set overwrite=true")
            yield url

    def arrived(self, src):
        """Pipeline stage over raw samples: a tar gave something."""
        for sample in src:
            self.draws_without_sample = 0
            yield sample


def shard_urls(shards_dir: str, split: str) -> tuple[dict, list[str]]:
    """(the manifest, the tars of `split` that hold samples); one line when there are none."""
    manifest = load_manifest(shards_dir)
    if manifest is None:
        raise UserError(f"no finished shards at {shards_dir} (run jobs/shard.py first)")
    urls = [f"{shards_dir}/{s['path']}" for s in manifest["splits"][split]["shards"] if s["samples"]]
    if not urls:
        raise UserError(f"{shards_dir}/{MANIFEST}: split '{split}' has no samples")
    return manifest, urls


def members(sample: dict) -> dict[str, bytes]:
    """A webdataset sample without its `__key__`/`__url__` bookkeeping: extension -> bytes."""
    return {k: v for k, v in sample.items() if not k.startswith("__")}


def _decoder(modality, skips: SkipCounter):
    def sample(s: dict):
        try:
            item = modality.from_members(members(s))
        except Exception as e:  # noqa: BLE001 - a bad sample is skipped and counted
            skips.handler(e)
            return None
        skips.good()
        item.key = s["__key__"]
        return item
    return sample


def _identity(item):
    return item


OPEN_SHARDS = 4  # shards a training stream reads at once, drawing each sample from one of them


def interleaved(handler, rng: random.Random, open_shards: int = OPEN_SHARDS):
    """Pipeline stage: shard URLs in, samples out, read from `open_shards` tars at once, each
    sample from one of them drawn at random (a tar that ends is replaced by the next URL). With
    the shuffle buffer after it, a batch mixes the samples of several shards rather than of
    one or two consecutive ones."""
    def stage(src):
        urls = iter(src)
        streams: list = []
        while True:
            while len(streams) < open_shards:
                url = next(urls, None)
                if url is None:
                    break
                streams.append(iter(wds.tarfile_to_samples(handler=handler)(iter([url]))))
            if not streams:
                return
            i = rng.randrange(len(streams))
            sample = next(streams[i], None)
            if sample is None:
                streams.pop(i)
            else:
                yield sample
    return stage


def train_batches(urls: list[str], batch_size: int, seed: int, rank: int, modality,
                  skips: SkipCounter, shuffle_buffer: int = 2000, view=_identity) -> Iterator:
    """Endless shuffled Batches; a different stream per rank and seed. Raises NoSamples when the
    shards yield nothing for a bounded while (drawing with replacement would otherwise spin).
    `view` maps each Item before batching (a random crop of an utterance). Shards are drawn with
    replacement and read OPEN_SHARDS at a time, interleaved (`interleaved`), then shuffled
    in a buffer of `shuffle_buffer` samples."""
    skips.max_empty_draws = max(100, 10 * len(urls))
    return iter(wds.DataPipeline(
        wds.ResampledShards(urls, seed=seed * 7919 + rank, deterministic=True, worker_seed=lambda: rank),
        skips.drawn,
        interleaved(skips.handler, random.Random(seed * 131 + rank)),
        skips.arrived,
        wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 500), rng=random.Random(seed * 31 + rank)),
        wds.map(_decoder(modality, skips)),
        wds.select(lambda s: s is not None),
        wds.map(view),
        wds.batched(batch_size, collation_fn=modality.collate, partial=False),
    ))


def eval_batches(urls: list[str], batch_size: int, rank: int, world: int, modality,
                 skips: SkipCounter, view=_identity) -> Iterator:
    """Each sample of this rank's shards once, in a fixed order."""
    mine = urls[rank::world]
    if not mine:
        return iter(())
    return iter(wds.DataPipeline(
        wds.SimpleShardList(mine),
        wds.tarfile_to_samples(handler=skips.handler),
        wds.map(_decoder(modality, skips)),
        wds.select(lambda s: s is not None),
        wds.map(view),
        wds.batched(batch_size, collation_fn=modality.collate, partial=True),
    ))


def stream_rank(rank: int, worker: int) -> int:
    """The rank a loader worker's stream is seeded with: worker 0 reads exactly the stream the
    rank would read on its own, the others streams no rank reads."""
    return rank if worker == 0 else rank + 100_003 * worker


class TrainStream(torch.utils.data.IterableDataset):
    """`train_batches` of one rank, in as many DataLoader worker processes as it is given. Each
    item is a Batch; with `crop` (the stage-1 section), items are cropped by the modality first,
    with a random generator seeded by (crop_seed, worker)."""

    def __init__(self, urls: list[str], batch_size: int, seed: int, rank: int, modality,
                 where: str, crop=None, crop_seed: int = 0) -> None:
        self.urls, self.batch_size, self.seed, self.rank = urls, batch_size, seed, rank
        self.modality, self.where, self.crop, self.crop_seed = modality, where, crop, crop_seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        skips = SkipCounter(self.where)
        view = _identity
        if self.crop is not None:
            rng = random.Random(self.crop_seed + 1_000_003 * worker)
            view = lambda item: self.modality.crop(item, self.crop, rng)  # noqa: E731
        reported = 0
        for batch in train_batches(self.urls, self.batch_size, self.seed, stream_rank(self.rank, worker),
                                   self.modality, skips, view=view):
            batch.skipped, reported = skips.count - reported, skips.count
            yield batch


def loader(stream: TrainStream, workers: int, pin: bool, skips: SkipCounter) -> Iterator:
    """Batches of `stream` decoded in `workers` processes (0: in this one), pinned when `pin`;
    the samples they skipped are added to `skips`. NoSamples raised in a worker is raised here."""
    batches = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin,
                                          prefetch_factor=4 if workers else None)
    for batch in batches:
        skips.count += batch.skipped
        yield batch
