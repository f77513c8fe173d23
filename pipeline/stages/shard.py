"""Shard: a raw dataset folder -> webdataset tar shards + manifest.json, on Ray Data.

    python jobs/shard.py --config configs/demo.yaml [--set overwrite=true]

The driver asks the modality for the raw inputs of each split (`find`), mixes each split in a
seeded order (`mixed`: listings come in class, speaker or clip order) and cuts it into shards of
`data.samples_per_shard` inputs; every shard is then one Ray Data task that reads,
preprocesses and writes its tar (temporary name, then rename), the modality saying what becomes
of each input (`preprocess`, `to_members`). No shuffle between stages: a sample goes from file to
tar in one worker. The manifest is written last, so a folder without one is unfinished and is
redone.
"""
from __future__ import annotations

import collections
import hashlib
import io
import json
import tarfile
import time

from pipeline import fs as fsx
from pipeline import modalities, progress
from pipeline.config import Settings
from pipeline.errors import UserError
from pipeline.formats.shards import FORMAT, MANIFEST, SPLITS, check_format, read_manifest, shard_name
from pipeline.locks import exclusive
from pipeline.modalities import RawItem, SkipSample
from pipeline.runtime import init_ray, keep_freed_memory

def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed metadata: same input, same sha256
    tar.addfile(info, io.BytesIO(data))


def write_shard(task: dict, *, data: dict, out: str) -> dict:
    """One Ray Data task: read + preprocess the shard's inputs and write its tar atomically."""
    # Resampling and decoding allocate blocks over glibc's 128 KiB mmap threshold, each mapped
    # and unmapped again: sharding the speech demo took 165,000 page faults and ~25 % longer
    # in a Ray worker without this (bench/shard.py). Process-wide and idempotent: every task sets it.
    keep_freed_memory()
    modality = modalities.get(data["modality"])
    config = modality.DataConfig.model_validate(data)
    fs_in, _ = fsx.filesystem(config.root)
    fs_out, out_base = fsx.filesystem(out)
    buf, skipped, samples, notes, stats = io.BytesIO(), [], 0, collections.Counter(), collections.Counter()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for raw in json.loads(task["items"]):
            item = RawItem(**raw)
            try:
                if item.skip:
                    raise SkipSample(item.skip)
                example = modality.preprocess(fsx.read_bytes(fs_in, item.path), item, config)
                made = [(key, modality.to_members(sample)) for key, sample in modality.samples_of(example, item.key, config)]
                notes.update(modality.notes(example))
                stats.update(modality.tally(example))
            except SkipSample as e:
                skipped.append({"path": item.path, "reason": str(e)})
                continue
            except OSError as e:  # unreadable file: permissions, vanished, I/O error
                skipped.append({"path": item.path, "reason": f"unreadable: {e}"})
                continue
            for key, members in made:
                for ext, payload in members.items():
                    _tar_member(tar, f"{key}.{ext}", payload)
            samples += len(made)
    data = buf.getvalue()
    relative = f"{task['split']}/{shard_name(task['split'], task['index'])}"
    fsx.write_atomic(f"{out_base}/{relative}", data, fs_out)
    return {"split": task["split"], "index": task["index"], "path": relative, "samples": samples,
            "sha256": hashlib.sha256(data).hexdigest(), "skipped": json.dumps(skipped), "notes": json.dumps(notes),
            "stats": json.dumps(stats)}


def unique_keys(items: list[RawItem]) -> list[str]:
    """Every item's key, unique within the split and the same on every run: a key already taken
    (x.jpg and x.png; "x 2.jpg" and x_2.jpg, which sanitise alike) gets a digest of the item's
    path, which no other item shares."""
    taken: set[str] = set()
    keys = []
    for item in items:
        key = item.key
        if key in taken:
            base = key = f"{item.key}-{hashlib.sha1(item.path.encode()).hexdigest()[:10]}"
            n = 1
            while key in taken:  # only when a dataset holds a name that looks like a digest
                key, n = f"{base}-{n}", n + 1
        taken.add(key)
        keys.append(key)
    return keys


# How items are ordered into shards; recorded in the manifest, so shards cut otherwise (in class
# order, before 2026-12-06) are not taken for these.
ORDER = "sha256(seed/key)"


def mixed(items: list[dict], seed: int) -> list[dict]:
    """The items in a seeded pseudo-random order (each item's rank is the digest of the seed and its
    key, unique in its split): a listing in class (speaker, clip) order comes out mixed, so every
    shard, and every batch stage 1 draws from a few shards, holds about as many classes as a uniform
    draw would. The same listing gives the same order on every machine and Python, and a file
    added moves no other file's place relative to the rest."""
    return sorted(items, key=lambda item: hashlib.sha256(f"{seed}/{item['key']}".encode()).digest())


def plan_shards(items: list[RawItem], split: str, per_shard: int, seed: int = 0) -> list[dict]:
    planned = mixed([{**item.__dict__, "key": key} for item, key in zip(items, unique_keys(items))], seed)
    # Items travel as JSON text: Ray Data's Arrow blocks would otherwise reshape their dicts.
    return [{"split": split, "index": i // per_shard, "items": json.dumps(planned[i:i + per_shard])}
            for i in range(0, len(planned), per_shard)]


def _clear_previous(fs, base: str) -> None:
    """Manifest first: from here on nothing in the folder looks finished."""
    if fsx.exists(fs, f"{base}/{MANIFEST}"):
        fs.delete_file(f"{base}/{MANIFEST}")
    for split in SPLITS:
        if fsx.exists(fs, f"{base}/{split}"):
            fs.delete_dir_contents(f"{base}/{split}")
        fs.create_dir(f"{base}/{split}", recursive=True)


def source_identity(listing, data) -> dict:
    """What the shards are made from: the raw listing (every input's split, key, path,
    conditioning and known skip reason) and the data config."""
    digest = hashlib.sha256()
    for split in SPLITS:
        for item in listing.splits.get(split, []):
            fields = [split, item.key, item.path, item.cond, item.skip] + ([item.meta] if item.meta else [])
            digest.update(json.dumps(fields).encode() + b"\n")
    return {"listing_sha256": digest.hexdigest(), "data": _data_identity(data), "order": ORDER}


def _data_identity(data) -> dict:
    return data.model_dump(exclude={"name", "make_demo"})


def _is_default(data, key: str) -> bool:
    field = type(data).model_fields.get(key)
    return field is not None and not field.is_required() and getattr(data, key) == field.get_default(
        call_default_factory=True)


def _check_finished(settings: Settings, finished: dict) -> None:
    """Reuse finished shards only when they were made from exactly this listing and config."""
    data, out = settings.data, settings.shards_dir
    check_format(finished, out)
    made = finished["source"]
    redo = "--set overwrite=true replaces them"
    if made.get("order") != ORDER:
        raise UserError(f"shard {data.name}: the shards at {out} were cut in listing (class) order, before "
                        f"2026-12-06, so a training batch would hold one or two classes; {redo}")
    now = _data_identity(data)
    # a field added since the shards were made counts as its default (what they were made with)
    was = {**{k: now[k] for k in now if k not in (made.get("data") or {}) and _is_default(data, k)},
           **(made.get("data") or {})}
    if was != now:
        changed = sorted(k for k in {*was, *now} if was.get(k) != now.get(k))
        raise UserError(f"shard {data.name}: the shards at {out} were made with another data config "
                        f"(differs in {', '.join('data.' + k for k in changed)}); {redo}")
    root_fs, root_path = fsx.filesystem(data.root)
    if root_fs.get_file_info(root_path).type != fsx.pafs.FileType.Directory:
        print(f"shard {data.name}: data.root {data.root} is gone; the finished shards cannot be checked "
              f"against it and are kept")
        return
    init_ray(settings)
    if source_identity(settings.modality.find(data), data)["listing_sha256"] != made.get("listing_sha256"):
        raise UserError(f"shard {data.name}: the shards at {out} were made from other files than data.root "
                        f"{data.root} holds now; {redo}")


def shard(settings: Settings) -> dict:
    """The shards of `settings.data` at `settings.shards_dir` and their manifest, made or reused."""
    with exclusive(settings.shards_dir, f"shard {settings.data.name}"):
        return _shard(settings)


def _shard(settings: Settings) -> dict:
    data, out = settings.data, settings.shards_dir
    fs, base = fsx.filesystem(out)
    finished = read_manifest(out)
    if finished is not None and not settings.overwrite:
        _check_finished(settings, finished)
        counts = ", ".join(f"{s} {v['samples']}" for s, v in finished["splits"].items())
        print(f"shard {data.name}: already finished at {out} ({counts}); nothing to do "
              f"(--set overwrite=true redoes it)")
        return finished
    if finished is None and fsx.exists(fs, f"{base}/train"):
        print(f"shard {data.name}: {out} holds an unfinished run (no {MANIFEST}); redoing it")
    start = time.perf_counter()
    modality = settings.modality
    root_fs, root_path = fsx.filesystem(data.root)
    if root_fs.get_file_info(root_path).type != fsx.pafs.FileType.Directory:
        raise UserError(f"data.root does not exist or is not a folder: {data.root}")
    init_ray(settings)  # before listing: a layout of many class folders is listed with Ray Data
    listing = modality.find(data)
    _clear_previous(fs, base)

    import ray

    tasks = [t for s in SPLITS for t in plan_shards(listing.splits.get(s, []), s, data.samples_per_shard, data.seed)]
    ctx = ray.data.DataContext.get_current()
    reservation = ctx.op_resource_reservation_enabled
    # One operator only: Ray Data's per-operator reservation would hold it to one task at a time
    # on a 2-CPU machine (measured: 2 CPUs no faster than 1 with it, 2x without).
    ctx.op_resource_reservation_enabled = False
    try:
        written = (ray.data.from_items(tasks, override_num_blocks=len(tasks))
                   .map(write_shard, fn_kwargs={"data": data.model_dump(), "out": out}))
        results, samples = [], 0
        with progress.Progress(f"shard {data.name}", len(tasks), "shards") as bar:
            for row in written.iter_rows():  # as each shard is written
                results.append(row)
                samples += row["samples"]
                bar.update(advance=1, samples=samples)
    finally:
        ctx.op_resource_reservation_enabled = reservation
    results.sort(key=lambda r: (r["split"], r["index"]))
    manifest = {
        "format": FORMAT,
        "dataset": data.name,
        "modality": data.modality,
        **listing.manifest,
        "cond": {k: v.to_json() for k, v in listing.cond.items()},
        "source": source_identity(listing, data),
        "splits": {
            s: {"samples": sum(r["samples"] for r in results if r["split"] == s),
                "shards": [{k: r[k] for k in ("path", "samples", "sha256")} for r in results if r["split"] == s],
                # the modality's additive figures (hours, per speaker, ...), when it has any
                **_summed_stats([r for r in results if r["split"] == s])}
            for s in SPLITS
        },
        "skipped": listing.skipped + [item for r in results for item in json.loads(r["skipped"])],
        "inputs": sum(len(v) for v in listing.splits.values()) + len(listing.skipped),
        "notes": dict(sum((collections.Counter(json.loads(r["notes"])) for r in results), collections.Counter())),
    }
    fsx.write_atomic(f"{base}/{MANIFEST}", json.dumps(manifest, indent=1).encode(), fs)
    seconds = time.perf_counter() - start
    manifest_summary(manifest, data.name, seconds, out)
    return manifest


def _summed_stats(results: list[dict]) -> dict:
    total: collections.Counter = collections.Counter()
    for r in results:
        total.update(json.loads(r["stats"]))
    return {"stats": {k: round(v, 6) for k, v in sorted(total.items())}} if total else {}


def manifest_summary(manifest: dict, name: str, seconds: float, out: str) -> None:
    reasons = collections.Counter(s["reason"].split(":")[0] for s in manifest["skipped"])
    parts = [f"{s} {v['samples']} samples in {len(v['shards'])} shards" for s, v in manifest["splits"].items()]
    why = f" ({', '.join(f'{n} {r}' for r, n in reasons.most_common())})" if reasons else ""
    print(f"shard {name}: {', '.join(parts)}; skipped {len(manifest['skipped'])}{why}; "
          f"{seconds:.1f} s -> {out}", flush=True)
    for note, count in sorted(manifest.get("notes", {}).items()):
        print(f"shard {name}: warning: {count} inputs {note}", flush=True)
