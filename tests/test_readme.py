"""The README's commands, run as written (with a temporary workdir and a tiny model), so the
README cannot rot."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, ray_address

TINY = ["--set", "stage1.steps=40", "--set", "stage1.hidden=32", "--set", "stage1.codebook_size=32",
        "--set", "stage1.code_dim=16", "--set", "stage1.num_res_blocks=1", "--set", "stage1.batch_size=32",
        "--set", "stage1.val_every=20", "--set", "stage1.checkpoint_every=20", "--set", "ray.num_cpus=4",
        "--set", "stage2.steps=30", "--set", "stage2.hidden=32", "--set", "stage2.num_layers=3",
        "--set", "stage2.val_every=15", "--set", "stage2.checkpoint_every=15", "--set", "sample.per_class=2"]


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_readme_starts_with_the_two_commands():
    first = blocks("bash")[0].strip().splitlines()
    assert [line.split("#")[0].strip() for line in first] == ["make demo", "make test"]
    makefile = (REPO / "Makefile").read_text()
    assert "\ndemo:" in makefile and "\ntest:" in makefile and "torch==2.13.0" in makefile


@pytest.mark.slow
def test_readme_stage_commands_and_snippet_run(tmp_path, ray_local):
    work = tmp_path / "demo"
    # the commands join the session's Ray instance, as under `ray job submit`, rather than each
    # starting one of its own
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db", **ray_address(ray_local)}
    commands = [line.split("#")[0].strip() for line in blocks("bash")[1].strip().splitlines()]
    assert len(commands) == 7
    for command in commands:
        args = command.replace("work/demo", str(work)).split()
        assert args[0] == ".venv/bin/python"
        args[0] = sys.executable
        if "--config" in args:
            args += ["--set", f"workdir={work}", *TINY]
        proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (command, proc.stderr[-3000:])
    assert (work / "shards" / "demo" / "manifest.json").exists()
    assert list((work / "samples").glob("samples-*.png"))
    assert proc.stdout.count("nothing to do") == 4  # shard, stage1, codes and stage2 were done

    snippet = "import torch\nx = torch.zeros(2, 3, 32, 32)\n" + blocks("python")[0] + \
        "\nassert codes.shape == (2, 8, 8), codes.shape\n"
    proc = subprocess.run([sys.executable, "-c", snippet], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
