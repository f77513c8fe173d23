"""Shared fixtures: one real local Ray instance per test session, small real data made offline."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Ray workers (of the session's instance and of the jobs the tests start) import the modality that
# only the tests define (digits_modality.py) from here.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")]))
# Ray turns token auth on when ~/.ray/auth_token exists; tests start their own instances without one.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Ray Train's controller polls its workers every 2 s by default, so every fit() ended up to 2 s
# after the loop returned and started in steps of 2 s; at 0.2 s a tiny stage's fit() takes 21 s
# instead of 27 (the tests run ~45 of them). The Ray instances the tests start inherit it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
# Two of the processes every fit() starts watch for node preemption and export Prometheus metrics:
# neither matters on one machine, and each costs a Python process's start on the 2 test cores.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")


def _share_the_cores() -> None:
    """Under pytest-xdist each test process gets its share of the cores for the torch work it does
    itself: two processes of two threads each on two cores spin against each other (a small prior's
    training took 26 s instead of ~10). Ray workers and jobs the tests start set their own."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


_share_the_cores()


@pytest.fixture(autouse=True)
def _no_mlflow_env_between_tests(monkeypatch):
    """Each test picks its own MLflow store; nothing set by an earlier test leaks in."""
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray instance with 4 logical CPUs on 2 cores, so Train workers and Ray Data
    tasks fit side by side (with 2 one-CPU workers on 2 CPUs, Ray Data gets no CPU and a stage
    waits forever for resources)."""
    import ray

    from pipeline.runtime import start_local

    if not ray.is_initialized():
        # Its actors ask this instance's State API, not the other test process's (see start_local);
        # the address is not left to the jobs and Ray heads the tests start from this process.
        before = os.environ.get("RAY_API_SERVER_ADDRESS")
        try:
            # Workers' output stays in the instance's log files, as the jobs keep it (runtime.init_ray):
            # streamed here it interleaved Ray's lines with pytest's.
            start_local(4, include_dashboard=True, logging_level="WARNING", log_to_driver=False)
        finally:
            if before is None:
                os.environ.pop("RAY_API_SERVER_ADDRESS", None)
            else:
                os.environ["RAY_API_SERVER_ADDRESS"] = before
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def demo_raw(tmp_path_factory) -> Path:
    """A small demo dataset: 10 classes of real photo crops, 12 train + 4 val per class."""
    from pipeline.modalities.image_demo import make_demo_data

    out = tmp_path_factory.mktemp("raw") / "demo"
    make_demo_data(out, train_per_class=12, val_per_class=4, seed=1)
    return out


def write_config(path: Path, workdir: Path, root: Path | str, **sections) -> Path:
    """A config YAML for tests: the demo's settings, overridden per test."""
    import yaml

    tree = {"workdir": str(workdir), "data": {"name": "t", "root": str(root), "image_size": 16,
                                              "samples_per_shard": 20}}
    for section, values in sections.items():
        if isinstance(values, dict):
            tree.setdefault(section, {}).update(values)
        else:
            tree[section] = values
    path.write_text(yaml.safe_dump(tree))
    return path


def ray_address(ray) -> dict:
    """The environment that makes a job join the session's Ray instance, as a job submitted to a
    cluster joins it, instead of starting (and stopping) an instance of its own."""
    return {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}


def run_job(script: str, *args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a job as a user would: a child process, its own exit code and output. `env` adds to
    the environment; a None value removes that variable."""
    merged = {key: value for key, value in {**os.environ, **(env or {})}.items() if value is not None}
    return subprocess.run(
        [sys.executable, str(REPO / "jobs" / script), *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO, env=merged,
    )


TINY_STAGE1 = {"steps": 60, "batch_size": 32, "hidden": 32, "codebook_size": 32, "code_dim": 16,
               "num_res_blocks": 1, "lr": 1e-3, "checkpoint_every": 20, "val_every": 30, "log_every": 5,
               "ema": True, "dead_code_steps": 20}


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory, ray_local, demo_raw) -> Path:
    """The small demo set sharded once (16x16); tests copy it into their own workdir."""
    from pipeline.config import load_settings
    from pipeline.stages.shard import shard

    tmp = tmp_path_factory.mktemp("shards")
    shard(load_settings(write_config(tmp / "c.yaml", tmp / "w", demo_raw)))
    return tmp / "w" / "shards" / "t"


def workdir_with_shards(tmp_path: Path, demo_shards: Path) -> Path:
    import shutil

    work = tmp_path / "w"
    shutil.copytree(demo_shards, work / "shards" / "t")
    return work


def pytest_collection_modifyitems(config, items):
    """The tests that start Ray first, each module's in its order: the two pytest-xdist workers
    then end on short tests they share out, rather than one of them idling through the last long
    one. Each module's tests stay together, so a module-scoped fixture is built once."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # a stable sort
