"""Stage 0: a raw dataset folder -> webdataset tar shards + manifest.json, on Ray Data.

    python jobs/shard.py --config configs/demo.yaml [--set overwrite=true]

The driver lists the inputs (class folders listed in parallel) and cuts each split into shards of
`data.samples_per_shard` files; every shard is then one Ray Data task that reads, decodes,
preprocesses and writes its tar (temporary name, then rename). No shuffle between stages: the
pixels go from file to tar in one worker. The manifest is written last, so a folder without one
is unfinished and is redone.
"""
from __future__ import annotations

import collections
import hashlib
import io
import json
import tarfile
import time

from pipeline.config import Settings
from pipeline.data import fs as fsx
from pipeline.data.sources import RawFile, check_root, list_imagenet_layout
from pipeline.modalities import image as modality
from pipeline.runtime import init_ray

MANIFEST = "manifest.json"
SPLITS = ("train", "val")


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed metadata: same input, same sha256
    tar.addfile(info, io.BytesIO(data))


def write_shard(task: dict, *, root: str, out: str, image_size: int, min_source_size: int) -> dict:
    """One Ray Data task: decode + preprocess the shard's files and write its tar atomically."""
    fs_in, _ = fsx.filesystem(root)
    fs_out, out_base = fsx.filesystem(out)
    buf, skipped, samples = io.BytesIO(), [], 0
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path, label, key in zip(task["paths"], task["labels"], task["keys"]):
            try:
                if label < 0:
                    raise modality.SkipSample("no class label (not a train class, or not in the labels file)")
                pixels = modality.preprocess(fsx.read_bytes(fs_in, path), image_size, min_source_size)
            except modality.SkipSample as e:
                skipped.append({"path": path, "reason": str(e)})
                continue
            except OSError as e:  # unreadable file: permissions, vanished, I/O error
                skipped.append({"path": path, "reason": f"unreadable: {e}"})
                continue
            _tar_member(tar, f"{key}.{modality.SHARD_FIELD}", modality.encode(pixels))
            _tar_member(tar, f"{key}.cls", str(label).encode())
            samples += 1
    data = buf.getvalue()
    relative = f"{task['split']}/{shard_name(task['split'], task['index'])}"
    fsx.write_atomic(fs_out, f"{out_base}/{relative}", data)
    return {"split": task["split"], "index": task["index"], "path": relative, "samples": samples,
            "sha256": hashlib.sha256(data).hexdigest(), "skipped": json.dumps(skipped)}


def plan_shards(files: list[RawFile], split: str, per_shard: int) -> list[dict]:
    seen: collections.Counter = collections.Counter()
    keys = []
    for f in files:  # keys must be unique within a dataset: a.JPEG and a.png in one class
        seen[f.key] += 1
        keys.append(f.key if seen[f.key] == 1 else f"{f.key}_{seen[f.key] - 1}")
    return [
        {"split": split, "index": i // per_shard,
         "paths": [f.path for f in files[i:i + per_shard]],
         "labels": [f.label for f in files[i:i + per_shard]],
         "keys": keys[i:i + per_shard]}
        for i in range(0, len(files), per_shard)
    ]


def _clear_previous(fs, base: str) -> None:
    """Manifest first: from here on nothing in the folder looks finished."""
    if fsx.exists(fs, f"{base}/{MANIFEST}"):
        fs.delete_file(f"{base}/{MANIFEST}")
    for split in SPLITS:
        if fsx.exists(fs, f"{base}/{split}"):
            fs.delete_dir_contents(f"{base}/{split}")
        fs.create_dir(f"{base}/{split}", recursive=True)


def load_manifest(shards_dir: str) -> dict | None:
    fs, base = fsx.filesystem(shards_dir)
    path = f"{base}/{MANIFEST}"
    return json.loads(fsx.read_bytes(fs, path)) if fsx.exists(fs, path) else None


def shard_dataset(settings: Settings) -> dict:
    data, out = settings.data, settings.shards_dir
    fs, base = fsx.filesystem(out)
    finished = load_manifest(out)
    if finished is not None and not settings.overwrite:
        counts = ", ".join(f"{s} {v['samples']}" for s, v in finished["splits"].items())
        print(f"shard {data.name}: already finished at {out} ({counts}); nothing to do "
              f"(--set overwrite=true redoes it)")
        return finished
    if finished is None and fsx.exists(fs, f"{base}/train"):
        print(f"shard {data.name}: {out} holds an unfinished run (no {MANIFEST}); redoing it")
    start = time.perf_counter()
    check_root(data.root)
    init_ray(settings)
    classes, splits = list_imagenet_layout(data.root, data.val_fraction, data.seed, modality.is_candidate)
    _clear_previous(fs, base)

    import ray

    tasks = [t for s in SPLITS for t in plan_shards(splits[s], s, data.samples_per_shard)]
    ctx = ray.data.DataContext.get_current()
    reservation = ctx.op_resource_reservation_enabled
    # One operator only: Ray Data's per-operator reservation would hold it to one task at a time
    # on a 2-CPU machine (measured: 2 CPUs no faster than 1 with it, 2x without).
    ctx.op_resource_reservation_enabled = False
    try:
        results = (
            ray.data.from_items(tasks, override_num_blocks=len(tasks))
            .map(write_shard, fn_kwargs={"root": data.root, "out": out, "image_size": data.image_size,
                                         "min_source_size": data.min_source_size})
            .take_all()
        )
    finally:
        ctx.op_resource_reservation_enabled = reservation
    results.sort(key=lambda r: (r["split"], r["index"]))
    manifest = {
        "dataset": data.name,
        "modality": data.modality,
        "classes": classes,
        "image_size": data.image_size,
        "field": modality.SHARD_FIELD,
        "splits": {
            s: {"samples": sum(r["samples"] for r in results if r["split"] == s),
                "shards": [{k: r[k] for k in ("path", "samples", "sha256")} for r in results if r["split"] == s]}
            for s in SPLITS
        },
        "skipped": [item for r in results for item in json.loads(r["skipped"])],
        "inputs": sum(len(v) for v in splits.values()),
    }
    fsx.write_atomic(fs, f"{base}/{MANIFEST}", json.dumps(manifest, indent=1).encode())
    seconds = time.perf_counter() - start
    manifest_summary(manifest, data.name, seconds, out)
    return manifest


def manifest_summary(manifest: dict, name: str, seconds: float, out: str) -> None:
    reasons = collections.Counter(s["reason"].split(":")[0] for s in manifest["skipped"])
    parts = [f"{s} {v['samples']} samples in {len(v['shards'])} shards" for s, v in manifest["splits"].items()]
    why = f" ({', '.join(f'{n} {r}' for r, n in reasons.most_common())})" if reasons else ""
    print(f"shard {name}: {', '.join(parts)}; skipped {len(manifest['skipped'])}{why}; "
          f"{seconds:.1f} s -> {out}", flush=True)
