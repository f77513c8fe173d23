"""What both training stages share at their Ray edges: device, checkpoints, rank-0 MLflow."""
from __future__ import annotations

import os
import tempfile
import time

import torch


def device_and_autocast():
    """The worker's device (a GPU when Ray gave one) and the autocast to train under (bf16 on GPU)."""
    import ray.train.torch

    from pipeline.models import autocast_on

    device = ray.train.torch.get_device()
    return device, autocast_on(device)


def save_checkpoint(state: dict, folder: str):
    """Rank 0 only: a Ray Train checkpoint of plain tensors/ints (torch.save, weights_only-loadable)
    in `folder`, a temporary folder that the caller removes once `ray.train.report` has copied it
    to the run's storage (left behind, every checkpoint of every run stayed in /tmp)."""
    from ray.train import Checkpoint

    torch.save(state, os.path.join(folder, "state.pt"))
    return Checkpoint.from_directory(folder)


def report(step: int, rank: int, val: dict, checkpoint: tuple | None) -> bool:
    """Report this step's validation metrics `val` and/or a checkpoint of `(model, optimizer)`;
    nothing when there is neither. Returns whether it reported (callers restart their clocks).
    Every rank reports (it is a barrier); only rank 0 saves the checkpoint.

    `val` holds metrics only when they were computed at this very step: stage 2 keeps its best
    checkpoint by them, so a checkpoint must never carry an earlier step's metrics. Reports at
    validation steps without a checkpoint are what Ray Tune's scheduler sees (jobs/tune_codebook.py)."""
    import ray.train

    if checkpoint is None and not val:
        return False
    if rank != 0 or checkpoint is None:
        ray.train.report({"step": step, **val}, checkpoint=None)
        return True
    model, optimizer = checkpoint
    with tempfile.TemporaryDirectory(prefix="ckpt-") as folder:
        saved = save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, folder)
        ray.train.report({"step": step, **val}, checkpoint=saved)  # copies it to storage before returning
    return True


def load_checkpoint(device) -> dict | None:
    """The latest checkpoint of this run (after a worker failure or a re-run), or None."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return torch.load(os.path.join(folder, "state.pt"), map_location=device, weights_only=True)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def all_reduce_sum(values: list[float] | torch.Tensor, device) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float64, device=device)
    if _distributed():
        torch.distributed.all_reduce(t)
    return t


def sum_over_ranks(sums: dict[str, float]) -> dict[str, float]:
    """Add up dicts of sums from every rank; a rank may lack keys (it had no validation shard)."""
    gathered = [sums]
    if _distributed():
        gathered = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, sums)
    total: dict[str, float] = {}
    for part in gathered:
        for k, v in part.items():
            total[k] = total.get(k, 0.0) + float(v)
    return total


class RankZeroMlflow:
    """Logs metrics/artifacts to the run the driver created, from rank 0 only; a no-op elsewhere."""

    def __init__(self, tracking_uri: str, run_id: str, enabled: bool):
        self.client = None
        self.run_id = run_id
        if enabled:
            from mlflow import MlflowClient

            self.client = MlflowClient(tracking_uri=tracking_uri)

    def resume(self, start: int, key: str = "samples_per_s") -> None:
        """After a resume from the checkpoint of `start`: the steps after it were logged by the
        attempt that died; they are not logged again (MLflow would show two values at one step).
        `resumed_from_step` marks where the new attempt took over."""
        if self.client is None:
            return
        logged = [m.step for m in self.client.get_metric_history(self.run_id, key)]
        self.skip_until = max(logged, default=start)
        self.metrics({"resumed_from_step": start}, start, force=True)

    skip_until = 0

    def metrics(self, values: dict, step: int, force: bool = False) -> None:
        if step <= self.skip_until and not force:
            return
        if self.client is not None:
            from mlflow.entities import Metric

            ts = int(time.time() * 1000)
            self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), ts, step) for k, v in values.items()])

    def artifact(self, path: str, folder: str | None = None) -> None:
        if self.client is not None:
            self.client.log_artifact(self.run_id, path, folder)
