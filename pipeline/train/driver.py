"""The driver side both training stages share: a Ray Train run that a re-run resumes.

A run is named by a hash of what shapes the model. Its folder under `<workdir>/runs/` holds
Ray's checkpoints, `mlflow.json` (the MLflow run the driver created, so a resumed run logs into
the same one) and, once finished, `result.json` (so a finished stage is not redone).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from typing import Callable

from pipeline.config import Settings, settings_to_params
from pipeline.runtime import init_ray


def read_json(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_json(path: str, value: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
    os.replace(tmp, path)


def use_gpu(settings: Settings) -> bool:
    import ray

    if settings.ray.use_gpu is not None:
        return settings.ray.use_gpu
    return ray.cluster_resources().get("GPU", 0) >= 1


def finished_result(settings: Settings, name: str) -> dict | None:
    """The result of a finished run of this name (None when unfinished; overwrite forgets it)."""
    run_dir = os.path.join(settings.runs_dir, name)
    if settings.overwrite and os.path.isdir(run_dir):
        shutil.rmtree(run_dir)
    return read_json(os.path.join(run_dir, "result.json"))


def mlflow_run(settings: Settings, name: str, experiment_id: str, tags: dict, stage: str) -> str:
    """The MLflow run of this Ray run: created with every config value as a param, or the one an
    interrupted attempt created."""
    from mlflow import MlflowClient
    from mlflow.entities import Param

    from pipeline import tracking

    run_dir = os.path.join(settings.runs_dir, name)
    os.makedirs(run_dir, exist_ok=True)
    started = read_json(os.path.join(run_dir, "mlflow.json"))
    if started is not None:
        print(f"{stage} {settings.data.name}: resuming {name} (MLflow run {started['run_id']})")
        return started["run_id"]
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    tags = {k: str(v) for k, v in {"stage": stage, **tags, **tracking.parent_tag()}.items()}  # REST: strings only
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    # One batch, values as strings: the REST store refuses non-string values (lists, e.g.
    # tune.space's), and one request per param is slow against a remote server.
    params = [Param(k, "" if v is None else str(v)) for k, v in settings_to_params(settings).items()]
    for start in range(0, len(params), 100):  # MLflow's limit per batch
        client.log_batch(run.info.run_id, params=params[start:start + 100])
    write_json(os.path.join(run_dir, "mlflow.json"), {"run_id": run.info.run_id})
    return run.info.run_id


def fit(settings: Settings, name: str, run_id: str, loop: Callable, loop_config: dict, max_failures: int,
        checkpoint_config=None, callbacks: list | None = None):
    """Run `loop` on `ray.num_workers` DDP workers (GPUs when present); -> (Result, seconds).
    The MLflow run is marked FAILED when training fails. `callbacks`: Ray Train callbacks
    (Tune's TuneReportCallback inside a trial)."""
    init_ray(settings)
    from mlflow import MlflowClient
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    gpu = use_gpu(settings)
    trainer = TorchTrainer(
        loop,
        train_loop_config={"settings": settings.model_dump(), "run_id": run_id,
                           "tracking_uri": settings.tracking_uri, **loop_config},
        scaling_config=ScalingConfig(num_workers=settings.ray.num_workers, use_gpu=gpu,
                                     resources_per_worker={"CPU": settings.ray.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        run_config=RunConfig(name=name, storage_path=settings.runs_dir,
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=checkpoint_config or CheckpointConfig(num_to_keep=2),
                             callbacks=callbacks),
    )
    start = time.perf_counter()
    try:
        result = trainer.fit()
    except BaseException:
        MlflowClient(settings.tracking_uri).set_terminated(run_id, status="FAILED")
        raise
    return result, time.perf_counter() - start


def load_state(checkpoint) -> dict:
    import torch

    with checkpoint.as_directory() as folder:
        return torch.load(os.path.join(folder, "state.pt"), map_location="cpu", weights_only=True)


def record_result(settings: Settings, name: str, run_id: str, done: dict) -> dict:
    """Mark the MLflow run finished and the Ray run done (a re-run then does nothing)."""
    from mlflow import MlflowClient

    MlflowClient(settings.tracking_uri).set_terminated(run_id, status="FINISHED")
    write_json(os.path.join(settings.runs_dir, name, "result.json"), done)
    return done
