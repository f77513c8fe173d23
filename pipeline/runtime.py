"""Joining Ray: the cluster when there is one, else a local instance."""
from __future__ import annotations

import os

from pipeline.config import Settings


def init_ray(settings: Settings) -> None:
    """`ray.address` or RAY_ADDRESS (set by `ray job submit`) joins a cluster; else start locally.

    Inside a submitted job ray.init() with no arguments connects to that job's cluster, so a job
    never starts a second local instance."""
    import ray

    if ray.is_initialized():
        return
    address = settings.ray.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict = {"log_to_driver": True, "configure_logging": True, "logging_level": "WARNING"}
    if address:
        ray.init(address=address, **kwargs)
        print(f"ray: joined the cluster at {address} ({_resources(ray)})", flush=True)
    else:
        # The dashboard stays on: Ray Train and Tune query the State API through it (NOTES-RAY.md).
        ray.init(num_cpus=settings.ray.num_cpus, **kwargs)
        print(f"ray: started a local instance ({_resources(ray)})", flush=True)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True


def _resources(ray) -> str:
    total = ray.cluster_resources()
    return ", ".join(f"{total.get(k, 0):g} {k}" for k in ("CPU", "GPU"))
