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

from pipeline.config import Settings
from pipeline.data.reader import shard_urls
from pipeline.train.driver import finished_result, fit, load_state, mlflow_run, record_result

# Keys that do not change what is trained: a change of these still resumes the same run.
_CADENCE = {"checkpoint_every", "val_every", "log_every", "max_failures"}


def run_name(settings: Settings) -> str:
    shaping = {k: v for k, v in settings.stage1.model_dump().items() if k not in _CADENCE}
    shaping.update(data=settings.data.name, image_size=settings.data.image_size,
                   num_workers=settings.ray.num_workers)
    digest = hashlib.sha1(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:8]
    return f"stage1-{settings.data.name}-{digest}"


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
    done = finished_result(settings, name)
    if done is not None:
        print(f"stage1 {settings.data.name}: already finished ({name}, model vqvae-{settings.data.name} "
              f"v{done['version']}); nothing to do (--set overwrite=true retrains)")
        return done

    import mlflow

    from pipeline.train.stage1 import build_model, train_loop_per_worker

    run_id = mlflow_run(settings, name, experiment_id, lineage, "stage1")
    result, seconds = fit(settings, name, run_id, train_loop_per_worker, {}, settings.stage1.max_failures)
    state = load_state(result.checkpoint)
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
    done = record_result(settings, name, run_id, {"run_id": run_id, "name": registered, "version": version,
                                                  "promoted": promoted, "metrics": metrics, "seconds": seconds})
    print(f"stage1 {settings.data.name}: {metrics['step']} steps in {seconds:.0f} s; val_mse "
          f"{metrics['val_mse']:.5f}, psnr {metrics['val_psnr']:.2f} dB, perplexity {metrics['perplexity']:.1f}, "
          f"usage {metrics['codebook_usage']:.2f}; registered {registered} v{version}"
          f"{' (champion)' if promoted else ''}; MLflow run {run_id}", flush=True)
    return done
