"""Stage 3: encode every shard sample into its VQ-VAE code grid, as a Ray Data batch job.

    python jobs/dump_codes.py --config configs/demo.yaml [--set codes.model=models:/vqvae-demo/3]

Output, per model version (so the codes of two versions never mix):

    <workdir>/codes/<dataset>/v<version>/{train,val}/*.parquet   rows: key, label, codes
    <workdir>/codes/<dataset>/v<version>/manifest.json           model, K, grid shape, rows

`codes` is the flattened index grid (raster order) in the smallest integer type that holds K;
the grid shape is in the manifest. Shards are opened inside Ray Data tasks with tarfile (not
`read_webdataset`: it mis-groups members and builds a DataFrame per sample, NOTES-RAY.md), and
`codes.actors` actors each load the model once. Splits are written to a temporary folder that is
renamed into place; the manifest is written last, so a folder without one is unfinished.
A sample that does not decode, or the rest of a damaged tar, is skipped and counted (the shard
manifest's samples minus the rows written): the manifest's `skipped`, the run's `skipped_<split>`.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tarfile
import time

import numpy as np

from pipeline.config import Settings
from pipeline.data.reader import shard_urls
from pipeline.errors import UserError
from pipeline.runtime import init_ray

MANIFEST = "manifest.json"
SPLITS = ("train", "val")


def default_vqvae_uri(settings: Settings) -> str:
    return f"models:/vqvae-{settings.data.name}@champion"


def code_dtype(num_codes: int) -> np.dtype:
    """The smallest integer type that holds every index below num_codes."""
    return np.dtype(np.uint8) if num_codes <= 256 else np.dtype(np.int16) if num_codes <= 32768 else np.dtype(np.int32)


def version_dir(settings: Settings, version: str | int) -> str:
    return f"{settings.codes_dir}/v{version}"


def load_codes_manifest(folder: str) -> dict | None:
    path = os.path.join(folder, MANIFEST)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def read_codes(folder: str, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(codes (N, *grid) int64, labels (N,) int64, keys) of one split, rows sorted by key."""
    import pyarrow.parquet as pq

    manifest = load_codes_manifest(folder)
    table = pq.read_table(os.path.join(folder, split), columns=["key", "label", "codes"])
    keys = table.column("key").to_pylist()
    order = np.argsort(np.asarray(keys, dtype=object), kind="stable")
    flat = table.column("codes").combine_chunks().flatten().to_numpy()
    codes = flat.reshape(len(keys), *manifest["grid_shape"]).astype(np.int64)[order]
    labels = table.column("label").to_numpy().astype(np.int64)[order]
    return codes, labels, [keys[i] for i in order]


def read_shard(row: dict, *, field: str) -> list[dict]:
    """One Ray Data task: every sample of one tar as {key, label, data} (members grouped by key).

    A damaged tar (truncated, bad header) keeps the samples read before the damage; the others are
    skipped, counted by `dump_codes` as the shard manifest's samples minus the rows written."""
    samples: dict[str, dict] = {}
    try:
        with tarfile.open(row["path"]) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.rpartition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        print(f"codes: {row['path']}: damaged after {len(samples)} samples ({e}); the rest of it is skipped",
              file=sys.stderr, flush=True)
    return [{"key": k, "label": int(s["cls"]), "data": s[field]}
            for k, s in samples.items() if field in s and "cls" in s]


class EncoderActor:
    """Holds the VQ-VAE for the life of the actor; each call encodes one batch of samples.
    A sample that does not decode is left out (skipped, and counted by `dump_codes`)."""

    def __init__(self, uri: str, tracking_uri: str, dtype: str, grid_size: int):
        import mlflow
        import torch

        from pipeline import tracking
        from pipeline.runtime import keep_freed_memory

        keep_freed_memory()
        mlflow.set_tracking_uri(tracking_uri)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = tracking.load_vqvae(uri, self.device)
        self.dtype = np.dtype(dtype)
        self.grid_size = grid_size

    def __call__(self, batch: dict):
        import pyarrow as pa
        import torch

        from pipeline.modalities import image as modality

        tensors, keep = [], []
        for i, data in enumerate(batch["data"]):
            try:
                tensors.append(modality.to_tensor(modality.decode(bytes(data))))
                keep.append(i)
            except Exception as e:  # noqa: BLE001 - a corrupt sample is skipped, not fatal
                print(f"codes: sample {batch['key'][i]}: does not decode ({e}); skipped", file=sys.stderr, flush=True)
        indices = np.zeros((0, self.grid_size), dtype=self.dtype)
        if tensors:
            x = torch.stack(tensors).to(self.device)
            indices = self.model.encode(x).flatten(1).cpu().numpy().astype(self.dtype)
        codes = pa.FixedSizeListArray.from_arrays(pa.array(indices.reshape(-1)), self.grid_size)
        # A plain list column (not Ray's tensor extension type): any parquet reader can open it.
        return pa.table({"key": pa.array([str(batch["key"][i]) for i in keep], pa.string()),
                         "label": pa.array(np.asarray(batch["label"], dtype=np.int32)[keep]),
                         "codes": codes})


def _encode_split(urls: list[str], out: str, uri: str, tracking_uri: str, dtype: np.dtype, grid_size: int,
                  settings: Settings, field: str, gpu: bool) -> None:
    import ray

    (
        ray.data.from_items([{"path": u} for u in urls], override_num_blocks=len(urls))
        .flat_map(read_shard, fn_kwargs={"field": field})
        .map_batches(EncoderActor, fn_constructor_kwargs={"uri": uri, "tracking_uri": tracking_uri,
                                                          "dtype": dtype.name, "grid_size": grid_size},
                     compute=ray.data.ActorPoolStrategy(size=settings.codes.actors), num_gpus=1 if gpu else 0,
                     batch_size=settings.codes.batch_size, batch_format="numpy")
        .write_parquet(out)
    )


def _parquet_rows(folder: str) -> int:
    import pyarrow.parquet as pq

    if not os.path.isdir(folder):  # Ray Data writes no file when no row came out
        return 0
    return sum(pq.read_metadata(os.path.join(folder, f)).num_rows
               for f in os.listdir(folder) if f.endswith(".parquet"))


def dump_codes(settings: Settings) -> dict:
    from pipeline import tracking
    from pipeline.train.driver import use_gpu

    shards_manifest, _ = shard_urls(settings.shards_dir, "train")  # no shards: one-line error
    urls = {s: shard_urls(settings.shards_dir, s)[1] for s in SPLITS}
    uri = settings.tracking_uri
    experiment_id = tracking.setup_tracking(uri, settings.experiment)
    model_uri = settings.codes.model or default_vqvae_uri(settings)
    info = tracking.resolve(model_uri)  # UserError when there is no such model
    pinned = f"models:/{info['name']}/{info['version']}"  # the alias may move while we run
    out = version_dir(settings, info["version"])
    done = load_codes_manifest(out)
    if done is not None and not settings.overwrite:
        print(f"codes {settings.data.name}: already dumped for {info['name']} v{info['version']} at {out} "
              f"({', '.join(f'{s} {n}' for s, n in done['rows'].items())}); nothing to do "
              f"(--set overwrite=true redoes it)")
        return done

    meta = tracking.model_metadata(pinned)
    num_codes = int(meta["config"]["codebook_size"])
    dtype = code_dtype(num_codes)
    image_size = int(shards_manifest["image_size"])
    from pipeline.models.vqvae import VQVAE

    grid_shape = list(VQVAE.from_config(meta["config"]).latent_shape((image_size, image_size)))

    import mlflow

    start = time.perf_counter()
    init_ray(settings)
    gpu = use_gpu(settings)
    tmp = f"{settings.codes_dir}/.v{info['version']}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    run_name = f"codes-{settings.data.name}-v{info['version']}"
    with tracking.start_run(experiment_id, run_name, tags={"stage": "codes", "vqvae_name": info["name"],
                                                           "vqvae_version": info["version"]}):
        mlflow.log_params({"model_uri": model_uri, "vqvae_name": info["name"], "vqvae_version": info["version"],
                           "vqvae_run_id": info["run_id"], "shards": settings.shards_dir,
                           "shards_manifest": f"{settings.shards_dir}/manifest.json",
                           "batch_size": settings.codes.batch_size})
        for split in SPLITS:
            _encode_split(urls[split], f"{tmp}/{split}", pinned, uri, dtype, math.prod(grid_shape), settings,
                          shards_manifest["field"], gpu)
        rows = {split: _parquet_rows(f"{tmp}/{split}") for split in SPLITS}
        # corrupt samples and damaged tars are skipped, so they are what the shards hold beyond the rows
        skipped = {split: shards_manifest["splits"][split]["samples"] - rows[split] for split in SPLITS}
        for split in SPLITS:
            if rows[split] == 0:
                raise UserError(f"{settings.shards_dir}: no sample of split '{split}' could be read "
                                f"({skipped[split]} skipped); re-run jobs/shard.py with --set overwrite=true")
        if os.path.isdir(out):  # an unfinished folder, or overwrite
            shutil.rmtree(out)
        os.replace(tmp, out)
        manifest = {
            "dataset": settings.data.name, "model_uri": model_uri, "vqvae_name": info["name"],
            "vqvae_version": info["version"], "vqvae_run_id": info["run_id"], "num_codes": num_codes,
            "dtype": dtype.name, "grid_shape": grid_shape, "image_size": image_size,
            "num_classes": len(shards_manifest["classes"]), "rows": rows, "skipped": skipped,
            "shards": settings.shards_dir,
            "shards_used": {s: [sh["path"] for sh in shards_manifest["splits"][s]["shards"] if sh["samples"]]
                            for s in SPLITS},
        }
        with open(f"{out}/{MANIFEST}.tmp", "w") as f:
            json.dump(manifest, f, indent=1)
        os.replace(f"{out}/{MANIFEST}.tmp", f"{out}/{MANIFEST}")  # last: the folder is finished
        seconds = time.perf_counter() - start
        mlflow.log_metrics({**{f"rows_{s}": n for s, n in rows.items()},
                            **{f"skipped_{s}": n for s, n in skipped.items()}, "seconds": seconds})
        mlflow.log_artifact(f"{out}/{MANIFEST}")
        mlflow.set_tag("codes_dir", out)
    print(f"codes {settings.data.name}: {info['name']} v{info['version']} (K={num_codes}, grid "
          f"{'x'.join(map(str, grid_shape))}, {dtype.name}): {', '.join(f'{s} {n}' for s, n in rows.items())} "
          f"rows in {seconds:.1f} s; skipped {sum(skipped.values())} -> {out}", flush=True)
    return manifest
