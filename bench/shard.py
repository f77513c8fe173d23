"""Shard throughput and decode throughput, for every modality, on this machine's CPUs.

    python bench/shard.py [--modality image speech video] [--repeats 3]

For each modality, the demo's own data, made offline as `make demo` makes it (images at 10x and
speech at ~4.5x the demo's size, so that Ray's fixed costs per run stay small beside the work), and
its demo config's `data:` section (configs/demo*.yaml; smaller shards, so that 2 CPUs have enough
tasks to share):

- **one process, no Ray:** the same `write_shard` the Ray tasks run, called shard after shard in
  this process (for images also a plain Pillow loop doing decode + resize + PNG + tar, what a user
  would write without the pipeline);
- **Ray Data, 1 and 2 CPUs:** `shard`, the shard job's function, on a local instance of
  that many CPUs (start-up excluded: a cluster is up before a job runs; each figure is the best of
  --repeats runs after a warm-up run, so worker processes are warm as on a running cluster);
- **decoded samples/s per input process:** the train shards read back by stage 1's own stream
  (`TrainStream`: tar reading, decoding, the stage's crop, batching) in this one process, and in
  one DataLoader worker process that hands its batches over (what each of a training worker's
  `ray.loader_workers` processes does; pixels cross as uint8 and become floats on the device).

The speed-up column is against the one-process `write_shard`; for images also against the Pillow
loop, the baseline the figures in docs/benchmarks.md started from. First it prints what two
CPU-bound processes at once get done on this machine beside one: on a VM whose two vCPUs share a
busy host that is well under 2, and it bounds every 2-CPU figure (on the 2-core VM of docs/benchmarks.md's
table: 1.06x to 1.84x from one minute to the next, so compare figures of one run).
"""
from __future__ import annotations

import argparse
import io
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import load_settings  # noqa: E402
from pipeline.stages import shard as sharding  # noqa: E402
from pipeline.formats.reader import SkipCounter, TrainStream, loader, shard_urls  # noqa: E402

CONFIGS = {"image": "demo.yaml", "speech": "demo-speech.yaml", "video": "demo-video.yaml"}
# shards small enough that 2 CPUs share 18 tasks or more (the demos' shard sizes give 5-7 here)
PER_SHARD = {"image": 500, "speech": 25, "video": 10}
UNIT = {"image": "images", "speech": "utterances", "video": "clips"}


def make_data(settings, images_per_class: int, per_speaker: int) -> None:
    """The demo's data at data.root: images and speech larger than the demo's (their demo makers
    take sizes), any other modality as its `make_demo` makes it."""
    root = settings.data.root
    if settings.data.modality == "image":
        from pipeline.modalities.image_demo import make_demo_data

        make_demo_data(root, images_per_class, images_per_class // 5)
    elif settings.data.modality == "speech":
        from pipeline.modalities.speech.demo import make_demo_corpus

        make_demo_corpus(root, per_speaker=per_speaker)
    else:
        settings.modality.make_demo(settings.data)


def pillow_loop(root: Path, out: Path, image_size: int, per_shard: int) -> int:
    """What a user would write without the pipeline: one process, one file after another."""
    from pipeline.modalities import image

    n = 0
    classes = sorted(p.name for p in (root / "train").iterdir())
    for split in ("train", "val"):
        files = sorted((root / split).glob("*/*"))
        (out / split).mkdir(parents=True, exist_ok=True)
        for i in range(0, len(files), per_shard):
            with tarfile.open(out / split / sharding.shard_name(split, i // per_shard), "w") as tar:
                for f in files[i:i + per_shard]:
                    png = image.encode_png(image.preprocess_pixels(f.read_bytes(), image_size, 32))
                    for name, data in ((f"{f.stem}.png", png), (f"{f.stem}.cls", str(classes.index(f.parent.name)).encode())):
                        info = tarfile.TarInfo(name)
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
                    n += 1
    return n


def _spin(n: int) -> float:
    start, x = time.perf_counter(), 0
    for i in range(n):
        x += i
    return time.perf_counter() - start


def machine_ceiling(n: int = 20_000_000) -> float:
    """What 2 CPU-bound processes at once get done beside one alone (2.0 on 2 idle physical
    cores; less where the cores are hyperthreads or a VM's host is busy): the bound for every
    2-CPU figure below, measured now, as the figures are."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        pool.map(_spin, [1000, 1000])  # the processes started
        alone = min(pool.apply(_spin, (n,)) for _ in range(2))
        together = min(max(pool.map(_spin, [n, n])) for _ in range(2))
    return 2 * alone / together


def one_process(settings, out: Path) -> tuple[int, float]:
    """write_shard over every planned shard in this process: (inputs, seconds), listing included."""
    start = time.perf_counter()
    data = settings.data
    listing = settings.modality.find(data)
    tasks = [t for s in sharding.SPLITS for t in sharding.plan_shards(listing.splits.get(s, []), s, data.samples_per_shard, data.seed)]
    for split in sharding.SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)
    fields = data.model_dump()
    for task in tasks:
        sharding.write_shard(task, data=fields, out=str(out))
    return sum(len(v) for v in listing.splits.values()), time.perf_counter() - start


def decode_rate(settings, workers: int, seconds: float = 5.0) -> tuple[float, int]:
    """Stage 1's train stream (`loader`) decoded in this process (workers 0) or in one loader
    worker process that hands its batches to this one (workers 1, what each of
    `ray.loader_workers` does): (samples/s over ~`seconds`, samples read)."""
    _, urls = shard_urls(settings.shards_dir, "train")
    s1 = settings.stage1
    stream = TrainStream(urls, s1.batch_size, s1.seed, 0, settings.modality, "bench", crop=s1, crop_seed=1)
    batches = loader(stream, workers, False, SkipCounter())
    for _ in range(1 + 4 * workers):  # the shuffle buffer's first fill (and the prefetch) is not steady state
        next(batches)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        n += next(batches).x.shape[0]
    return n / (time.perf_counter() - start), n


def bench(modality: str, tmp: Path, a) -> None:
    import logging

    import ray

    overrides = [f"workdir={tmp / modality}", f"data.root={tmp / modality / 'raw'}",
                 f"data.samples_per_shard={PER_SHARD[modality]}", "data.make_demo=false"]
    settings = load_settings(REPO / "configs" / CONFIGS[modality], overrides)
    make_data(settings, a.images_per_class, a.utterances_per_speaker)
    root = Path(settings.data.root)
    unit = UNIT[modality]

    rows = []
    if modality == "image":
        out = tmp / modality / "pillow"
        start = time.perf_counter()
        n = pillow_loop(root, out, settings.data.image_size, settings.data.samples_per_shard)
        rows.append(("plain Pillow loop, 1 process", n / (time.perf_counter() - start)))
        shutil.rmtree(out)
    best = 0.0
    for _ in range(a.repeats):
        out = tmp / modality / "plain"
        n, seconds = one_process(settings, out)
        best = max(best, n / seconds)
        shutil.rmtree(out)
    rows.append(("write_shard, 1 process, no Ray", best))
    inputs, base = n, best  # the speed-up column's baseline

    for cpus in (1, 2):
        ray.init(num_cpus=cpus, logging_level="ERROR", log_to_driver=False, include_dashboard=False)
        ray.data.DataContext.get_current().enable_progress_bars = False  # imports ray.data, its logging
        ray.data.DataContext.get_current().print_on_execution_start = False
        for handler in logging.getLogger("ray.data").handlers:  # "Execution finished ..." per run
            handler.setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "bars disabled"
        best = 0.0
        settings.overwrite = True
        for run in range(a.repeats + 1):  # the first run warms the workers up
            start = time.perf_counter()
            sharding.shard(settings)
            if run:
                best = max(best, inputs / (time.perf_counter() - start))
        rows.append((f"Ray Data (shard), {cpus} CPU", best))
        ray.shutdown()

    rate, read = decode_rate(settings, 0)
    worker_rate, _ = decode_rate(settings, 1)
    manifest = sharding.load_manifest(settings.shards_dir)
    samples = sum(v["samples"] for v in manifest["splits"].values())
    print(f"\n{modality}: {inputs} {unit} -> {samples} samples in "
          f"{sum(len(v['shards']) for v in manifest['splits'].values())} shards "
          f"({settings.data.samples_per_shard} {unit} per shard; data section of configs/{CONFIGS[modality]})")
    print(f"{'':36s} {unit + '/s':>13s} {'speed-up':>9s}" + ("  vs Pillow loop" if modality == "image" else ""))
    for name, r in rows:
        extra = f"  {r / rows[0][1]:13.2f}x" if modality == "image" else ""
        print(f"{name:36s} {r:13.1f} {r / base:8.2f}x{extra}")
    print(f"decoded by stage 1's train stream, 1 process: {rate:.1f} samples/s "
          f"({read} samples of batch {settings.stage1.batch_size}); through one loader worker "
          f"process: {worker_rate:.1f} samples/s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modality", nargs="+", choices=sorted(CONFIGS), default=sorted(CONFIGS))
    p.add_argument("--images-per-class", type=int, default=1000, help="train photos per class (val: a fifth)")
    p.add_argument("--utterances-per-speaker", type=int, default=200,
                   help="sentences per synthetic voice (the demo has 44; more keep Ray's fixed costs small)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row (the best is printed)")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-shard-"))
    print(f"this machine: 2 CPU-bound processes at once do {machine_ceiling():.2f}x the work of one "
          f"(the ceiling of every 2-CPU speed-up below)")
    try:
        for modality in a.modality:
            bench(modality, tmp, a)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
