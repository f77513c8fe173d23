"""Shard throughput (images): images/s of `shard_dataset` on 1 and 2 Ray CPUs beside a plain
single-process Pillow loop doing the same decode + resize + PNG + tar writing.

    python bench/shard.py [--train-per-class 1000] [--image-size 32]

Ray start-up is excluded (a cluster is up before a job runs); each Ray figure is the second of two
runs, so worker processes are warm as they are on a running cluster.
"""
from __future__ import annotations

import argparse
import io
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import Settings  # noqa: E402
from pipeline.modalities.image_demo import make_demo_data  # noqa: E402
from pipeline.data.shard import shard_dataset, shard_name  # noqa: E402
from pipeline.modalities import image as modality  # noqa: E402


def plain_loop(root: Path, out: Path, image_size: int, per_shard: int) -> int:
    """What a user would write without Ray: one process, one file after another."""
    n = 0
    for split in ("train", "val"):
        classes = sorted(p.name for p in (root / "train").iterdir())
        files = sorted((root / split).glob("*/*"))
        (out / split).mkdir(parents=True, exist_ok=True)
        for i in range(0, len(files), per_shard):
            with tarfile.open(out / split / shard_name(split, i // per_shard), "w") as tar:
                for f in files[i:i + per_shard]:
                    png = modality.encode_png(modality.preprocess_pixels(f.read_bytes(), image_size, 32))
                    for name, data in ((f"{f.stem}.png", png), (f"{f.stem}.cls", str(classes.index(f.parent.name)).encode())):
                        info = tarfile.TarInfo(name)
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
                    n += 1
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-per-class", type=int, default=1000)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--samples-per-shard", type=int, default=500)
    a = p.parse_args()
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="bench-shard-"))
    root = tmp / "raw"
    make_demo_data(root, a.train_per_class, a.train_per_class // 5)
    n_files = sum(1 for _ in root.glob("*/*/*"))

    t = time.perf_counter()
    plain_loop(root, tmp / "plain", a.image_size, a.samples_per_shard)
    rows = [("plain Pillow loop, 1 process", n_files / (time.perf_counter() - t))]

    for cpus in (1, 2):
        ray.init(num_cpus=cpus, logging_level="ERROR", log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        settings = Settings.model_validate({
            "workdir": str(tmp / f"ray{cpus}"), "data": {"name": "bench", "root": str(root),
            "image_size": a.image_size, "samples_per_shard": a.samples_per_shard}})
        shard_dataset(settings)  # warm-up
        settings.overwrite = True
        t = time.perf_counter()
        shard_dataset(settings)
        rows.append((f"Ray Data, {cpus} CPU", n_files / (time.perf_counter() - t)))
        ray.shutdown()

    base = rows[0][1]
    print(f"\n{n_files} images ({a.train_per_class} train per class), {a.image_size}x{a.image_size}, "
          f"{a.samples_per_shard} per shard")
    print(f"{'':32s} {'images/s':>9s} {'vs plain':>9s}")
    for name, rate in rows:
        print(f"{name:32s} {rate:9.0f} {rate / base:8.2f}x")


if __name__ == "__main__":
    main()
