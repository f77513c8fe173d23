"""The whole pipeline in order, each stage skipping itself when already done.

    python jobs/pipeline.py --config configs/demo.yaml
"""
from __future__ import annotations

import glob
import os
import time

from pipeline.config import Settings


def _make_demo_data(settings: Settings) -> None:
    from pipeline.data.demo import make_demo_data

    if settings.data.make_demo:
        info = make_demo_data(settings.data.root, seed=settings.data.seed)
        print(f"demo data {'written to' if info['created'] else 'already at'} {info['out']}")


def stages():
    """(name, function) in order. Later stages join this list as they are built."""
    from pipeline.data.shard import shard_dataset
    from pipeline.stage1 import train_stage1

    return [("make-data", _make_demo_data), ("shard", shard_dataset), ("stage1", train_stage1)]


def run_pipeline(settings: Settings) -> dict:
    results, start = {}, time.perf_counter()
    for name, fn in stages():
        print(f"== {name}", flush=True)
        results[name] = fn(settings)
    print(f"\npipeline {settings.data.name}: done in {time.perf_counter() - start:.0f} s")
    print_where(settings, results)
    return results


def print_where(settings: Settings, results: dict) -> None:
    """Where a person finds what the run made."""
    from mlflow import MlflowClient

    print(f"  shards:          {settings.shards_dir}")
    stage1 = results.get("stage1")
    if stage1:
        run = MlflowClient(settings.tracking_uri).get_run(stage1["run_id"])
        art = run.info.artifact_uri.removeprefix("file://")
        grids = sorted(glob.glob(os.path.join(art, "reconstructions", "*.png")))
        if grids:
            print(f"  reconstructions: {grids[-1]}  (top: originals, bottom: reconstructions)")
        print(f"  model:           models:/{stage1['name']}/{stage1['version']}")
    if settings.tracking_uri.startswith("sqlite:"):
        print(f"  see it all:      mlflow ui --backend-store-uri {settings.tracking_uri}")
    else:
        print(f"  see it all:      {settings.tracking_uri}")
