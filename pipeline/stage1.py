"""Stage 1 driver: train the VQ-VAE with Ray Train, log it in MLflow, register it.

    python jobs/stage1.py --config configs/demo.yaml [--set stage1.steps=300]

A Ray Train run is named by a hash of what shapes the model, so re-running the same config
resumes from its last checkpoint (or does nothing when it had finished), and a worker dying is
survived with FailureConfig(max_failures). The driver owns the MLflow run: it checks the server
before any training, creates the run (its id kept beside the checkpoints, so a resumed run logs
into the same MLflow run), and logs + registers the final model as safetensors + JSON.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

from pipeline.config import Settings, settings_to_params
from pipeline.data.reader import shard_urls
from pipeline.runtime import init_ray

# Keys that do not change what is trained: a change of these still resumes the same run.
_CADENCE = {"checkpoint_every", "val_every", "log_every", "max_failures"}


def run_name(settings: Settings) -> str:
    shaping = {k: v for k, v in settings.stage1.model_dump().items() if k not in _CADENCE}
    shaping.update(data=settings.data.name, image_size=settings.data.image_size,
                   num_workers=settings.ray.num_workers)
    digest = hashlib.sha1(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:8]
    return f"stage1-{settings.data.name}-{digest}"


def _read_json(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _write_json(path: str, value: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
    os.replace(tmp, path)


def use_gpu(settings: Settings) -> bool:
    import ray

    if settings.ray.use_gpu is not None:
        return settings.ray.use_gpu
    return ray.cluster_resources().get("GPU", 0) >= 1


def shard_lineage(settings: Settings) -> dict:
    manifest, _ = shard_urls(settings.shards_dir, "train")
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    return {"shards": settings.shards_dir, "shards_manifest_sha256": digest, "dataset": settings.data.name,
            "modality": settings.data.modality, "image_size": settings.data.image_size}


def train_stage1(settings: Settings) -> dict:
    from pipeline import tracking

    lineage = shard_lineage(settings)  # no shards: one-line error before anything starts
    uri = settings.tracking_uri
    experiment_id = tracking.setup_tracking(uri, settings.experiment)  # unreachable: exit 2 now
    name = run_name(settings)
    run_dir = os.path.join(settings.runs_dir, name)
    done_path = os.path.join(run_dir, "result.json")
    if settings.overwrite and os.path.isdir(run_dir):
        shutil.rmtree(run_dir)
    done = _read_json(done_path)
    if done is not None:
        print(f"stage1 {settings.data.name}: already finished ({name}, model vqvae-{settings.data.name} "
              f"v{done['version']}); nothing to do (--set overwrite=true retrains)")
        return done

    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    os.makedirs(run_dir, exist_ok=True)
    started = _read_json(os.path.join(run_dir, "mlflow.json"))
    if started is None:
        run = client.create_run(experiment_id, run_name=name, tags={"stage": "stage1", **lineage, **tracking.parent_tag()})
        for key, value in settings_to_params(settings).items():
            client.log_param(run.info.run_id, key, "" if value is None else value)
        started = {"run_id": run.info.run_id}
        _write_json(os.path.join(run_dir, "mlflow.json"), started)
    else:
        print(f"stage1 {settings.data.name}: resuming {name} (MLflow run {started['run_id']})")
    run_id = started["run_id"]

    init_ray(settings)
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipeline.train.stage1 import build_model, train_loop_per_worker

    gpu = use_gpu(settings)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"settings": settings.model_dump(), "run_id": run_id, "tracking_uri": uri},
        scaling_config=ScalingConfig(num_workers=settings.ray.num_workers, use_gpu=gpu,
                                     resources_per_worker={"CPU": settings.ray.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        run_config=RunConfig(name=name, storage_path=settings.runs_dir,
                             failure_config=FailureConfig(max_failures=settings.stage1.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    start = time.perf_counter()
    try:
        result = trainer.fit()
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    seconds = time.perf_counter() - start

    import torch

    with result.checkpoint.as_directory() as folder:
        state = torch.load(os.path.join(folder, "state.pt"), map_location="cpu", weights_only=True)
    model = build_model(settings)
    model.load_state_dict(state["model"])
    metrics = {k: result.metrics[k] for k in ("step", "val_mse", "val_psnr", "val_bits_per_dim",
                                               "perplexity", "codebook_usage") if k in result.metrics}
    with mlflow.start_run(run_id=run_id):
        tracking.log_model(model, "model", metadata={"stage": "stage1", **lineage, "run_id": run_id})
    registered = f"vqvae-{settings.data.name}"
    version, promoted = tracking.register_model(
        run_id, "model", registered, metric="val_mse", value=metrics["val_mse"],
        tags={**{k: str(v) for k, v in lineage.items()}, "ray_run": name})
    client.set_terminated(run_id, status="FINISHED")
    done = {"run_id": run_id, "name": registered, "version": version, "promoted": promoted,
            "metrics": metrics, "seconds": seconds}
    _write_json(done_path, done)
    print(f"stage1 {settings.data.name}: {metrics['step']} steps in {seconds:.0f} s; val_mse "
          f"{metrics['val_mse']:.5f}, psnr {metrics['val_psnr']:.2f} dB, perplexity {metrics['perplexity']:.1f}, "
          f"usage {metrics['codebook_usage']:.2f}; registered {registered} v{version}"
          f"{' (champion)' if promoted else ''}; MLflow run {run_id}", flush=True)
    return done
