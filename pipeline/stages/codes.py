"""Codes: encode every shard sample into its VQ-VAE codes, as a Ray Data batch job.

    python jobs/dump_codes.py --config configs/demo.yaml [--set codes.model=models:/vqvae-demo/3]

Output, per model version (so the codes of two versions never mix), in the format of
pipeline/formats/codes.py:

    <workdir>/codes/<dataset>/v<version>-<run id>/{train,val}/*.parquet   rows: key, codes, shape, conditioning
    <workdir>/codes/<dataset>/v<version>-<run id>/manifest.json           model, K, conditioning, rows, files

Shards are opened inside Ray Data tasks with tarfile (not `read_webdataset`, which mis-groups
members that are not stored together, ray #44068, and builds a DataFrame per sample), where the
modality also turns each sample's members into model input (`from_members`; pixels stay uint8):
decoding runs on every CPU of the cluster, in parallel, and the encoder actors, which each load
the model once, only batch (`collate`) and encode: one per GPU the cluster has (on CPUs one per
two CPUs), or `codes.actors` when set (`encoder_actors`). (Decoding in the actor capped a GPU actor at
one core's PNG decoding, ~1,800 128x128 images/s, a tenth of what its GPU encodes.) Every split
goes through one Ray Data pass (one actor pool, the model loaded once per actor), its rows
partitioned into a folder per split by `write_parquet`, locally in a temporary folder that is
renamed into place, on an object store (no rename) in place after emptying it; the manifest is
written last, so a folder without one is unfinished. The tars are streamed through the workdir's
filesystem (`pipeline.fs.open_read`). A sample that does not decode, or the rest of a damaged tar,
is skipped and counted (the shard manifest's samples minus the rows written): the manifest's `skipped`, the
run's `skipped_<split>`.
"""
from __future__ import annotations

import json
import sys
import tarfile
import time
from contextlib import nullcontext

import numpy as np

from pipeline import fs as fsx
from pipeline import modalities, progress
from pipeline.config import Settings
from pipeline.errors import UserError
from pipeline.formats import codes as codeset
from pipeline.fs import write_json_atomic
from pipeline.formats.shards import manifest_digest
from pipeline.locks import exclusive
from pipeline.runtime import check_resources, init_ray, use_gpu

SPLITS = codeset.SPLITS


def read_shard(row: dict) -> list[dict]:
    """One Ray Data task: every sample of one tar as {key, exts, payloads, split} (members grouped
    by key; `split` is the tar's).

    A damaged tar (truncated, bad header) keeps the samples read before the damage; the others are
    skipped, counted by `codes` as the shard manifest's samples minus the rows written."""
    samples: dict[str, dict] = {}
    try:  # a local path or an object-store URI
        with fsx.open_read(row["path"]) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.partition(".")  # as webdataset splits them: keys hold no dots
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        if isinstance(e, OSError) and fsx.store_error(e):  # refused by the store: not a damaged tar
            raise
        print(f"codes: {row['path']}: damaged after {len(samples)} samples ({e}); the rest of it is skipped",
              file=sys.stderr, flush=True)
    return [{"key": k, "exts": list(s), "payloads": list(s.values()), "split": row["split"]}
            for k, s in samples.items()]


def _plain(value):
    """A conditioning value as the modality made it (an int, a list of ints), from Ray Data's numpy."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value.item() if isinstance(value, np.generic) else value


def decode_shard(row: dict, modality: str, cond: list[str]) -> list[dict]:
    """One Ray Data task: every sample of one tar (`read_shard`) as the model's input `x` (a
    numpy array: uint8 pixels, float audio), its conditioning (`cond/<name>` columns: every
    sample has the shard manifest's `cond`), key and split. A sample that does not decode is
    left out (skipped, and counted by `codes`)."""
    kind = modalities.get(modality)
    rows = []
    for sample in read_shard(row):
        try:
            item = kind.from_members(dict(zip(sample["exts"], sample["payloads"])))
            missing = sorted(set(cond) - set(item.cond))
            if missing:
                raise ValueError(f"no {', '.join(missing)} conditioning")
        except Exception as e:  # noqa: BLE001 - a corrupt sample is skipped, not fatal
            print(f"codes: sample {sample['key']} of {row['path']}: does not decode ({e}); skipped",
                  file=sys.stderr, flush=True)
            continue
        rows.append({"key": sample["key"], "split": sample["split"], "x": item.x.numpy(),
                     **{f"cond/{name}": item.cond[name] for name in cond}})
    return rows


# Rows per Parquet row group: a stage-2 rank reads whole row groups, so one at a rank's boundary
# costs it at most this many rows beyond its share (8 MB of 32x32 int16 grids); Arrow's default
# (1Mi rows) would make each rank read most of ImageNet's split.
ROWS_PER_GROUP = 4096
MAX_PADDED_INPUT = 2**22  # input elements of one encoder call when sample shapes vary (~16 MB)


def _chunks(items: list) -> list[list]:
    """Items in encoder calls: all at once when they share a shape (images), else in order,
    as many as fit MAX_PADDED_INPUT once padded to the longest (utterances of 1 to 20 s would
    otherwise pad a batch of 256 to its longest). Padding is zeros, as the encoder's own is, so
    a sample's codes do not depend on its neighbours."""
    if len({tuple(it.x.shape) for it in items}) <= 1:
        return [items] if items else []
    chunks, current, longest = [], [], 0
    for item in items:
        size = item.x.numel()
        if current and max(longest, size) * (len(current) + 1) > MAX_PADDED_INPUT:
            chunks.append(current)
            current, longest = [], 0
        current.append(item)
        longest = max(longest, size)
    return chunks + [current]


class EncoderActor:
    """Holds the VQ-VAE for the life of the actor; each call encodes one batch of decoded samples
    (`decode_shard`'s rows)."""

    def __init__(self, uri: str, tracking_uri: str, dtype: str, modality: str, cond: list[str], bf16: bool):
        import mlflow
        import torch

        from pipeline import tracking
        from pipeline.models import autocast_on, runs_channels_last
        from pipeline.runtime import keep_freed_memory

        keep_freed_memory()
        mlflow.set_tracking_uri(tracking_uri)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = tracking.load_vqvae(uri, self.device)
        # as stage 1 runs it on a GPU: channels-last 2-D convs, bf16 autocast unless codes.bf16 is off
        self.channels_last = runs_channels_last(self.model, self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.autocast = autocast_on(self.device) if bf16 else nullcontext()
        self.dtype = np.dtype(dtype)
        self.modality = modalities.get(modality)
        self.cond = cond

    def __call__(self, rows: dict):
        import pyarrow as pa
        import torch

        from pipeline.modalities import Item

        xs = rows["x"]  # (B, *shape) when every sample has one shape, else an array of arrays
        xs = torch.from_numpy(np.array(xs)) if xs.dtype != object else [torch.from_numpy(np.array(x)) for x in xs]
        items = [Item(x, {name: _plain(rows[f"cond/{name}"][i]) for name in self.cond}, str(key))
                 for i, (key, x) in enumerate(zip(rows["key"], xs))]
        splits = [str(split) for split in rows["split"]]
        encoded: list[np.ndarray] = []
        for chunk in _chunks(items):
            batch = self.modality.collate(chunk).to(self.device)
            x = batch.x.contiguous(memory_format=torch.channels_last) if self.channels_last else batch.x
            with self.autocast:
                indices = self.model.encode(x, batch.cond).cpu().numpy()
            for i, item in enumerate(chunk):  # each sample's own codes, without the batch's padding
                shape = self.model.latent_shape(tuple(item.x.shape[1:]))
                encoded.append(indices[(i, *(slice(0, n) for n in shape))])
        cond = {name: [item.cond[name] for item in items] for name in (items[0].cond if items else {})}
        table = codeset.to_table([item.key for item in items], encoded, cond, self.dtype)
        return table.append_column("split", pa.array(splits, pa.string()))  # write_parquet's partition


def _encode_splits(urls: dict[str, list[str]], out: str, uri: str, tracking_uri: str, dtype: np.dtype,
                   settings: Settings, gpu: bool, cond_names: list[str], actors: int, label: str = "codes",
                   total: int | None = None) -> None:
    """Encode every sample of `urls` ({split: shard paths}; its conditioning `cond_names`) into
    Parquet files under `out/<split>/`, showing samples encoded."""
    counted: dict[str, int] = {}
    fs, base = fsx.filesystem(out)
    listed = [0.0]  # when the folders were last listed: on an object store a request each, every 2 s

    def encoded() -> int:  # rows in the Parquet files written so far (a file being written: later)
        import pyarrow.parquet as pq

        if fsx.is_remote(out) and time.monotonic() - listed[0] < 2.0:
            return sum(counted.values())
        listed[0] = time.monotonic()
        for split in urls:
            for name in fsx.names(fsx.join(out, split)):
                path = f"{base}/{split}/{name}"
                if name.endswith(".parquet") and path not in counted:
                    with fs.open_input_file(path) as f:
                        counted[path] = pq.ParquetFile(f).metadata.num_rows
        return sum(counted.values())

    with progress.polled(encoded, label, total, "samples"):
        _encode(urls, out, uri, tracking_uri, dtype, settings, gpu, cond_names, actors)


def encoder_actors(setting: int | None, resources: dict, gpu: bool) -> int:
    """How many encoder actors the codes job runs: `codes.actors` when set; else what the cluster
    has now: one per GPU on GPUs, on CPUs one per two CPUs (each actor takes one, and the shards'
    decoding tasks the others), at least one."""
    if setting is not None:
        return setting
    if gpu:
        return max(1, int(resources.get("GPU", 0)))
    return max(1, int(resources.get("CPU", 1)) // 2)


def _encode(urls, out, uri, tracking_uri, dtype, settings, gpu, cond_names, actors) -> None:
    import ray

    tars = [{"path": u, "split": split} for split, paths in urls.items() for u in paths]
    fs, path = fsx.filesystem(out)
    (
        ray.data.from_items(tars, override_num_blocks=len(tars))
        .flat_map(decode_shard, fn_kwargs={"modality": settings.data.modality, "cond": cond_names})
        .map_batches(EncoderActor, fn_constructor_kwargs={"uri": uri, "tracking_uri": tracking_uri,
                                                          "dtype": dtype.name, "modality": settings.data.modality,
                                                          "cond": cond_names, "bf16": settings.codes.bf16},
                     compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=1 if gpu else 0,
                     batch_size=settings.codes.batch_size, batch_format="numpy")
        # out/train/*.parquet, out/val/*.parquet: folders named by the split alone (the column
        # leaves the files), as stage 2 reads them; on an object store through this project's
        # filesystem (its endpoint and credentials)
        .write_parquet(path, filesystem=fs, partition_cols=["split"],
                       partitioning_flavor=None, row_group_size=ROWS_PER_GROUP)
    )


def _files(folder: str, split: str) -> list[list]:
    """[name, rows] of each Parquet file of a split just written, in name order (none when Ray
    Data wrote no file: no row came out)."""
    return [[path.rsplit("/", 1)[1], rows] for path, rows in codeset.split_files(folder, split)]


def codes(settings: Settings) -> dict:
    """The codes of every shard sample under the VQ-VAE `codes.model` (default its champion), made
    or reused; -> their manifest."""
    from pipeline import tracking
    from pipeline.formats.reader import shard_urls  # here: the reading tasks (read_shard) need no torch

    shards_manifest, _ = shard_urls(settings.shards_dir, "train")  # no shards: one-line error
    urls = {s: shard_urls(settings.shards_dir, s)[1] for s in SPLITS}
    uri = settings.tracking_uri
    experiment_id = tracking.setup_tracking(uri, settings.experiment)
    model_uri = settings.codes.model or settings.vqvae_champion
    info = tracking.resolve(model_uri)  # UserError when there is no such model
    pinned = f"models:/{info['name']}/{info['version']}"  # the alias may move while we run
    out = settings.codes_dir_for(info["version"], info["run_id"])
    with exclusive(out, f"codes {settings.data.name}"):
        return _dump(settings, info, model_uri, pinned, out, shards_manifest, urls, experiment_id)


def _dump(settings: Settings, info: dict, model_uri: str, pinned: str, out: str, shards_manifest: dict,
          urls: dict, experiment_id: str) -> dict:
    from pipeline import tracking

    uri = settings.tracking_uri
    # What the codes are made from: the exact model (run and weights), the exact shards, and the
    # autocast the encoder runs under on a GPU (codes.bf16).
    identity = {"vqvae_run_id": info["run_id"], "weights_sha256": tracking.weights_digest(pinned),
                "shards_manifest_sha256": manifest_digest(shards_manifest),
                "gpu_autocast": "bf16" if settings.codes.bf16 else "none"}
    done = codeset.load_manifest(out)
    if done is not None and not settings.overwrite:
        if done.get("identity") == identity:
            print(f"codes {settings.data.name}: already dumped for {info['name']} v{info['version']} at {out} "
                  f"({', '.join(f'{s} {n}' for s, n in done['rows'].items())}); nothing to do "
                  f"(--set overwrite=true redoes it)")
            return done
        changed = [k for k in identity if (done.get("identity") or {}).get(k) != identity[k]]
        print(f"codes {settings.data.name}: {out} was made from another {' and '.join(changed)}; redoing it")

    vqvae = tracking.load_vqvae(pinned)  # malformed files: one-line error here, not in every actor
    codebook_size = int(vqvae.config["codebook_size"])
    dtype = codeset.code_dtype(codebook_size)
    sample_shape = settings.modality.sample_shape(settings.data)
    latent_shape = list(vqvae.latent_shape(sample_shape)) if sample_shape else None

    import mlflow

    start = time.perf_counter()
    init_ray(settings)
    gpu = use_gpu(settings)
    import ray

    actors = encoder_actors(settings.codes.actors, ray.cluster_resources(), gpu)
    check_resources(f"codes {settings.data.name}", {"CPU": (actors, "codes.actors"),
                                                    **({"GPU": (actors, "codes.actors")} if gpu else {})})
    run_name = f"codes-{settings.data.name}-v{info['version']}"
    with tracking.start_run(experiment_id, run_name, tags={"stage": "codes", "vqvae_name": info["name"],
                                                           "vqvae_version": info["version"]}) as run:
        mlflow.log_params({"model_uri": model_uri, "vqvae_name": info["name"], "vqvae_version": info["version"],
                           "vqvae_run_id": info["run_id"], "shards": settings.shards_dir,
                           "shards_manifest": f"{settings.shards_dir}/manifest.json",
                           "batch_size": settings.codes.batch_size, "actors": actors})
        with fsx.building_output(out) as tmp:  # replaces an unfinished folder, or one overwritten
            _encode_splits({s: urls[s] for s in SPLITS}, tmp, pinned, uri, dtype, settings, gpu,
                           list(shards_manifest["cond"]), actors,
                           label=f"codes {settings.data.name}",
                           total=sum(shards_manifest["splits"][s]["samples"] for s in SPLITS))
            files = {split: _files(tmp, split) for split in SPLITS}
            rows = {split: sum(n for _, n in files[split]) for split in SPLITS}
            # corrupt samples and damaged tars are skipped, so they are what the shards hold beyond the rows
            skipped = {split: shards_manifest["splits"][split]["samples"] - rows[split] for split in SPLITS}
            for split in SPLITS:
                if rows[split] == 0:
                    raise UserError(f"{settings.shards_dir}: no sample of split '{split}' could be read "
                                    f"({skipped[split]} skipped); re-run jobs/shard.py with --set overwrite=true")
        manifest = {
            "format": codeset.FORMAT, "identity": identity, "dataset": settings.data.name,
            "modality": settings.data.modality,
            "model_uri": model_uri, "vqvae_name": info["name"], "vqvae_version": info["version"],
            "vqvae_run_id": info["run_id"], "codebook_size": codebook_size, "dtype": dtype.name,
            "latent_shape": latent_shape, "input_dims_per_code": vqvae.input_dims_per_code,
            "cond": shards_manifest["cond"], "rows": rows, "files": files, "skipped": skipped,
            "shards": settings.shards_dir,
            "shards_used": {s: [sh["path"] for sh in shards_manifest["splits"][s]["shards"] if sh["samples"]]
                            for s in SPLITS},
        }
        write_json_atomic(f"{out}/{codeset.MANIFEST}", manifest)  # last: the folder is finished
        seconds = time.perf_counter() - start
        mlflow.log_metrics({**{f"rows_{s}": n for s, n in rows.items()},
                            **{f"skipped_{s}": n for s, n in skipped.items()}, "seconds": seconds})
        mlflow.log_text(json.dumps(manifest, indent=1), codeset.MANIFEST)
        mlflow.set_tag("codes_dir", out)
    shape = "x".join(map(str, latent_shape)) if latent_shape else "varying"
    print(f"codes {settings.data.name}: {info['name']} v{info['version']} (K={codebook_size}, codes "
          f"{shape}, {dtype.name}): {', '.join(f'{s} {n}' for s, n in rows.items())} "
          f"rows in {seconds:.1f} s; skipped {sum(skipped.values())} -> {out}; MLflow run {run.info.run_id}",
          flush=True)
    return manifest
