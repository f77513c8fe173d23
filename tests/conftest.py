"""Shared fixtures: one real local Ray instance per test session, small real data made offline."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token file in tests (NOTES-RAY.md)


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray instance with 4 logical CPUs on 2 cores, so Train workers and Ray Data
    tasks fit side by side (NOTES-RAY.md)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=True, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def demo_raw(tmp_path_factory) -> Path:
    """A small demo dataset: 10 classes of real photo crops, 12 train + 4 val per class."""
    from pipeline.data.demo import make_demo_data

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


def run_job(script: str, *args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a job as a user would: a child process, its own exit code and output."""
    return subprocess.run(
        [sys.executable, str(REPO / "jobs" / script), *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO,
        env={**os.environ, **(env or {})},
    )
