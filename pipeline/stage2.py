"""Stage 2 driver: fit the PixelCNN prior over a VQ-VAE's codes with Ray Train, register it.

    python jobs/stage2.py --config configs/demo.yaml [--set stage2.steps=500]

The codes are those dumped (jobs/dump_codes.py) for `stage2.vqvae`, by default the VQ-VAE
champion. Same shape as stage 1 (pipeline/stage1.py): a Ray Train run named by a hash of what
shapes the model resumes when re-run, the driver owns the MLflow run, and the final prior is
registered as `prior-<dataset>`, champion by val_nll_bits_per_code. The prior records which
VQ-VAE version its codes came from, so sampling can refuse a decoder it was not trained for.
"""
from __future__ import annotations

import hashlib
import json

from pipeline.codes import default_vqvae_uri, load_codes_manifest, version_dir
from pipeline.config import Settings
from pipeline.errors import UserError
from pipeline.modalities import image as modality
from pipeline.train.driver import finished_result, fit, load_state, mlflow_run, record_result

_CADENCE = {"checkpoint_every", "val_every", "log_every", "max_failures", "vqvae"}


def run_name(settings: Settings, vqvae_version: str) -> str:
    shaping = {k: v for k, v in settings.stage2.model_dump().items() if k not in _CADENCE}
    shaping.update(data=settings.data.name, vqvae_version=vqvae_version, num_workers=settings.ray.num_workers)
    digest = hashlib.sha1(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:8]
    return f"stage2-{settings.data.name}-{digest}"


def codes_info(settings: Settings, vqvae: dict) -> dict:
    """What the workers need to know about the codes, from the codes manifest and the VQ-VAE."""
    folder = version_dir(settings, vqvae["version"])
    manifest = load_codes_manifest(folder)
    if manifest is None:
        raise UserError(f"no codes for {vqvae['name']} v{vqvae['version']} at {folder} "
                        f"(run jobs/dump_codes.py first)")
    try:
        val_mse = float(vqvae["tags"]["metric.val_mse"])
    except (KeyError, ValueError):
        raise UserError(f"{vqvae['name']} v{vqvae['version']} has no 'metric.val_mse' tag") from None
    return {"dir": folder, "num_codes": manifest["num_codes"], "num_classes": manifest["num_classes"],
            "grid_shape": manifest["grid_shape"], "vqvae_val_mse": val_mse,
            "input_dims": manifest["image_size"] ** modality.SPATIAL_DIMS * modality.CHANNELS}


def train_stage2(settings: Settings) -> dict:
    from pipeline import tracking

    uri = settings.tracking_uri
    experiment_id = tracking.setup_tracking(uri, settings.experiment)
    vqvae = tracking.resolve(settings.stage2.vqvae or default_vqvae_uri(settings))
    info = codes_info(settings, vqvae)
    lineage = {"vqvae_name": vqvae["name"], "vqvae_version": vqvae["version"], "vqvae_run_id": vqvae["run_id"],
               "codes": info["dir"], "dataset": settings.data.name}
    name = run_name(settings, vqvae["version"])
    done = finished_result(settings, name)
    if done is not None:
        print(f"stage2 {settings.data.name}: already finished ({name}, model prior-{settings.data.name} "
              f"v{done['version']}); nothing to do (--set overwrite=true retrains)")
        return done

    import mlflow
    from ray.train import CheckpointConfig

    from pipeline.train.stage2 import REPORT_KEYS, build_prior, train_loop_per_worker

    run_id = mlflow_run(settings, name, experiment_id, lineage, "stage2")
    # The best validated checkpoint is kept beside the latest (Ray never deletes the latest), and
    # that best one is registered: a prior overfits small code sets.
    keep_best = CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="val_nll_bits_per_code",
                                 checkpoint_score_order="min")
    result, seconds = fit(settings, name, run_id, train_loop_per_worker, {"codes": info},
                          settings.stage2.max_failures, keep_best)
    scored = [(c, m) for c, m in result.best_checkpoints if "val_nll_bits_per_code" in m]
    best, best_metrics = min(scored, key=lambda cm: cm[1]["val_nll_bits_per_code"]) if scored \
        else (result.checkpoint, result.metrics)
    state = load_state(best)
    model = build_prior(settings, info["num_codes"], info["num_classes"])
    model.load_state_dict(state["model"])
    metrics = {k: best_metrics[k] for k in ("step", *REPORT_KEYS) if k in best_metrics}
    with mlflow.start_run(run_id=run_id):
        tracking.log_model(model, "model", metadata={"stage": "stage2", **lineage, "run_id": run_id,
                                                     "grid_shape": info["grid_shape"]})
    registered = f"prior-{settings.data.name}"
    version, promoted = tracking.register_model(
        run_id, "model", registered, metric="val_nll_bits_per_code", value=metrics["val_nll_bits_per_code"],
        tags={**lineage, "ray_run": name})
    done = record_result(settings, name, run_id, {"run_id": run_id, "name": registered, "version": version,
                                                  "promoted": promoted, "metrics": metrics, "seconds": seconds,
                                                  **lineage})
    print(f"stage2 {settings.data.name}: {settings.stage2.steps} steps in {seconds:.0f} s, best at step "
          f"{metrics['step']}: val "
          f"{metrics['val_nll_bits_per_code']:.3f} bits/code (uniform {metrics['uniform_bits_per_code']:.3f}), "
          f"{metrics['val_bits_per_dim']:.3f} bits/dim; registered {registered} v{version}"
          f"{' (champion)' if promoted else ''} on {vqvae['name']} v{vqvae['version']}; MLflow run {run_id}",
          flush=True)
    return done
