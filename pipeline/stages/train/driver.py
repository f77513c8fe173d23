"""The driver side both training stages share: a Ray Train run that a re-run resumes, its MLflow
run, and the registration of the model it made.

A run is named by a hash of what shapes the model (`run_name`). Its folder under
`<workdir>/runs/` holds Ray's checkpoints, `mlflow.json` (the MLflow run the driver created, so a
resumed run logs into the same one) and, once finished, `result.json` (so a finished stage is not
redone).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from typing import Callable

from pipeline import fs as fsx
from pipeline import progress
from pipeline.config import Settings, settings_to_params
from pipeline.errors import UserError
from pipeline.fs import write_json_atomic
from pipeline.locks import exclusive
from pipeline.runtime import check_resources, init_ray, use_gpu
from pipeline.sections import TrainingSection


def shaping(section: TrainingSection) -> dict:
    """A training section's values that shape the model (its NOT_SHAPING fields left out)."""
    return {k: v for k, v in section.model_dump().items() if k not in section.NOT_SHAPING}


def run_name(prefix: str, settings: Settings, shaping: dict) -> str:
    """`<prefix>-<dataset>-<hash>`: the hash of `shaping`, the dataset's name and the number of
    DDP workers (which changes the batches every step sees)."""
    key = {**shaping, "dataset": settings.data.name, "num_workers": settings.ray.num_workers}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{prefix}-{settings.data.name}-{digest}"


def finished_result(settings: Settings, name: str) -> dict | None:
    """The result of a finished run of this name (None when unfinished; overwrite forgets it)."""
    run_dir = fsx.join(settings.runs_dir, name)
    if settings.overwrite:
        fsx.remove_tree(run_dir)
    return fsx.read_json(fsx.join(run_dir, "result.json"))


def mlflow_run(settings: Settings, name: str, experiment_id: str, tags: dict, stage: str) -> str:
    """The MLflow run of this Ray run: created with every config value as a param, or the one an
    interrupted attempt created."""
    from mlflow import MlflowClient
    from mlflow.entities import Param

    from pipeline import tracking

    run_dir = fsx.join(settings.runs_dir, name)
    if not fsx.is_remote(run_dir):
        os.makedirs(run_dir, exist_ok=True)
    started = fsx.read_json(fsx.join(run_dir, "mlflow.json"))
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    if started is not None:
        from mlflow.exceptions import MlflowException

        try:
            client.get_run(started["run_id"])
            print(f"{stage} {settings.data.name}: resuming {name} (MLflow run {started['run_id']})")
            return started["run_id"]
        except MlflowException:  # the store was lost or swapped since: log the rest to a new run
            print(f"{stage} {settings.data.name}: resuming {name}; its MLflow run {started['run_id']} is not in "
                  f"{settings.tracking_uri}, so a new one is created")
    tags = {k: str(v) for k, v in {"stage": stage, **tags, **tracking.parent_tag()}.items()}  # REST: strings only
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    # One batch, values as strings: the REST store refuses non-string values (lists, e.g.
    # tune.space's), and one request per param is slow against a remote server.
    params = [Param(k, "" if v is None else str(v)) for k, v in settings_to_params(settings).items()]
    for start in range(0, len(params), 100):  # MLflow's limit per batch
        client.log_batch(run.info.run_id, params=params[start:start + 100])
    write_json_atomic(fsx.join(run_dir, "mlflow.json"), {"run_id": run.info.run_id})
    return run.info.run_id


def fit(settings: Settings, name: str, run_id: str, loop: Callable, loop_config: dict, max_failures: int,
        checkpoint_config=None, callbacks: list | None = None, label: str | None = None,
        steps: int | None = None, metrics: tuple[str, ...] = ()):
    """Run `loop` on `ray.num_workers` DDP workers (GPUs when present); -> (Result, seconds).
    The MLflow run is marked FAILED when training fails. `callbacks`: Ray Train callbacks
    (Tune's TuneReportCallback inside a trial). `label`, `metrics`: the progress shown while it
    trains (pipeline.progress), with the validation metrics named in `metrics`."""
    init_ray(settings)
    from mlflow import MlflowClient
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    gpu = use_gpu(settings)
    workers = settings.ray.num_workers
    need = {"CPU": (workers * settings.ray.cpus_per_worker, "ray.num_workers or ray.cpus_per_worker")}
    if gpu:
        need["GPU"] = (workers, "ray.num_workers (or set ray.use_gpu: false)")
    # rank 0 writes its progress where the driver reads it: the run's folder, on the workdir's
    # storage (local, a shared disk, or the object store)
    progress_path = fsx.join(settings.runs_dir, name, progress.PROGRESS_FILE)
    trainer = TorchTrainer(
        loop,
        train_loop_config={"settings": settings.model_dump(), "run_id": run_id,
                           "tracking_uri": settings.tracking_uri, "progress_path": progress_path, **loop_config},
        scaling_config=ScalingConfig(num_workers=settings.ray.num_workers, use_gpu=gpu,
                                     resources_per_worker={"CPU": settings.ray.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        run_config=RunConfig(name=name, **fsx.ray_storage(settings.runs_dir),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=checkpoint_config or CheckpointConfig(num_to_keep=2),
                             callbacks=callbacks),
    )
    start = time.perf_counter()
    watching = progress.watch(progress_path, label, steps, metrics=metrics) if label and progress_path and steps \
        else contextlib.nullcontext()
    try:
        check_resources(label or name, need)  # on a local instance: fails here rather than waits for ever
        with watching:
            result = trainer.fit()
    except BaseException as e:
        MlflowClient(settings.tracking_uri).set_terminated(run_id, status="FAILED")
        known = _known_failure(str(e))
        if known:  # the workers said why in one line: no traceback of Ray's around it
            raise UserError(f"{name}: {known}; MLflow run {run_id} marked FAILED, nothing registered") from None
        raise
    return result, time.perf_counter() - start


def _check_registered(settings: Settings, stage: str, name: str, registered: str, done: dict) -> None:
    """A finished run counts only where its model is: in this MLflow store, as the version it
    registered (the store may have been lost or swapped since, and its version numbers reused)."""
    from pipeline import tracking

    uri = f"models:/{registered}/{done['version']}"
    try:
        here = tracking.resolve(uri)["run_id"]
    except UserError:
        here = None
    if here != done["run_id"]:
        raise UserError(f"{stage} {settings.data.name}: {name} finished, but its model ({uri}, MLflow run "
                        f"{done['run_id']}) is not in the MLflow store {settings.tracking_uri}; "
                        f"--set overwrite=true retrains")


def _known_failure(text: str) -> str | None:
    """The one-line reason of a failure the training loop raises on purpose, if this is one."""
    from pipeline.formats.reader import NO_SAMPLES
    from pipeline.stages.train.loop import DIVERGED

    for marker in (DIVERGED, NO_SAMPLES):
        match = re.search(re.escape(marker) + r"[^\n]*", text)
        if match:
            return match.group(0).rstrip(" .'\")")
    return None


def load_state(checkpoint) -> dict:
    import torch

    with checkpoint.as_directory() as folder:
        return torch.load(os.path.join(folder, "state.pt"), map_location="cpu", weights_only=True)


def record_result(settings: Settings, name: str, run_id: str, done: dict) -> dict:
    """Mark the MLflow run finished and the Ray run done (a re-run then does nothing)."""
    from mlflow import MlflowClient

    MlflowClient(settings.tracking_uri).set_terminated(run_id, status="FINISHED")
    write_json_atomic(fsx.join(settings.runs_dir, name, "result.json"), done)
    return done


def train_and_register(settings: Settings, *, stage: str, name: str, registered: str, lineage: dict,
                       loop: Callable, loop_config: dict, max_failures: int, build: Callable,
                       metric: str, key_metrics: tuple[str, ...], metadata: dict | None = None,
                       version_tags: Callable[[dict], dict] | None = None, best: bool = False,
                       summary: Callable[[dict], str] | None = None) -> dict:
    """One training stage from the driver: skip when finished, else train (resuming), log the
    model's files, register a version of `registered` on `metric` (champion when it beats the
    holder) and record the result. `best`: register the checkpoint whose validation scored best
    on `metric`, not the last. `version_tags(metrics)`: extra tags of the version. `summary(done)`:
    the line printed at the end."""
    from pipeline import tracking

    experiment_id = tracking.setup_tracking(settings.tracking_uri, settings.experiment)  # unreachable: exit 2 now
    with exclusive(fsx.join(settings.runs_dir, name), f"{stage} {settings.data.name}"):
        return _train_and_register(settings, experiment_id, stage, name, registered, lineage, loop, loop_config,
                                   max_failures, build, metric, key_metrics, metadata, version_tags, best, summary)


def _train_and_register(settings, experiment_id, stage, name, registered, lineage, loop, loop_config, max_failures,
                        build, metric, key_metrics, metadata, version_tags, best, summary) -> dict:
    from pipeline import tracking

    done = finished_result(settings, name)
    if done is not None:
        _check_registered(settings, stage, name, registered, done)
        print(f"{stage} {settings.data.name}: already finished ({name}, model {registered} v{done['version']}); "
              f"nothing to do (--set overwrite=true retrains)")
        return done

    import mlflow
    from ray.train import CheckpointConfig

    run_id = mlflow_run(settings, name, experiment_id, lineage, stage)
    # With `best`, the best validated checkpoint is kept beside the latest (Ray never deletes the
    # latest), and that one is registered: a prior overfits small code sets.
    keep = CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=metric, checkpoint_score_order="min") \
        if best else None
    section = getattr(settings, stage)  # stage1 / stage2: its steps
    result, seconds = fit(settings, name, run_id, loop, loop_config, max_failures, keep,
                          label=f"{stage} {settings.data.name}", steps=section.steps, metrics=(metric, *key_metrics))
    checkpoint, metrics = result.checkpoint, result.metrics
    scored = [(c, m) for c, m in (result.best_checkpoints or []) if metric in m]
    if best and scored:
        checkpoint, metrics = min(scored, key=lambda cm: cm[1][metric])
    model = build()
    model.load_state_dict(load_state(checkpoint)["model"])
    metrics = {k: v for k, v in metrics.items() if k == "step" or k.startswith("val_") or k in key_metrics}
    with mlflow.start_run(run_id=run_id):
        tracking.log_model(model, "model", metadata={"stage": stage, **lineage, "run_id": run_id, **(metadata or {})})
    version, promoted = tracking.register_model(
        run_id, "model", registered, metric=metric, value=metrics[metric],
        tags={**{k: str(v) for k, v in lineage.items()}, "ray_run": name, "key_metrics": ",".join(key_metrics),
              **(version_tags(metrics) if version_tags else {})})
    done = record_result(settings, name, run_id, {"run_id": run_id, "name": registered, "version": version,
                                                  "promoted": promoted, "metrics": metrics, "seconds": seconds,
                                                  **lineage})
    if summary is not None:
        print(summary(done), flush=True)
    return done
