"""Stage 1 on a real local Ray instance: 2 DDP workers, a real MLflow store and registry."""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from conftest import TINY_STAGE1, run_job, workdir_with_shards, write_config
from pipeline.config import load_settings
from pipeline.formats.reader import SkipCounter, eval_batches, shard_urls
from pipeline.stages.stage1 import build_model, run_name, stage1

pytestmark = pytest.mark.slow  # every test here trains on Ray or runs a job


def stage1_settings(tmp_path, demo_raw, demo_shards, **stage1):
    work = workdir_with_shards(tmp_path, demo_shards)
    cfg = write_config(tmp_path / "c.yaml", work, demo_raw, stage1={**TINY_STAGE1, **stage1},
                       ray={"num_workers": 2, "cpus_per_worker": 1})
    return load_settings(cfg)


def history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_trains_logs_registers_and_reloads(tmp_path, ray_local, demo_raw, demo_shards, capsys):
    from pipeline import tracking

    settings = stage1_settings(tmp_path, demo_raw, demo_shards)
    settings.ray.loader_workers = 1  # batches decoded in a process forked from each Ray Train worker
    started = time.time()
    done = stage1(settings)
    # the checkpoint folders written for Ray Train are gone once reported, and the pictures' folders
    # once logged (both used to stay in /tmp: ~430 picture folders after one run of the suite)
    tmp = Path(tempfile.gettempdir())
    left = [p for p in [*tmp.glob("ckpt-*"), *tmp.glob("stage1-art-*")] if p.stat().st_mtime >= started - 1]
    time.sleep(1)  # a concurrent test's report may hold one for a moment
    assert [p for p in left if p.exists()] == []
    client = MlflowClient(settings.tracking_uri)
    run = client.get_run(done["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["stage1.codebook_size"] == "32"

    recon = history(client, done["run_id"], "recon_mse")
    assert recon[-1][0] == 60
    assert recon[-1][1] < 0.6 * recon[0][1], recon  # it learns
    for key in ("val_mse", "val_psnr", "val_bits_per_dim", "val_recon_bits_per_dim", "perplexity", "codebook_usage"):
        assert [s for s, _ in history(client, done["run_id"], key)] == [30, 60], key
    # the metrics are the formulas of pipeline/models/metrics.py over the val MSE and the codes
    val = {k: history(client, done["run_id"], k)[-1][1] for k in ("val_mse", "val_psnr", "val_bits_per_dim")}
    assert val["val_psnr"] == pytest.approx(10 * math.log10(1 / val["val_mse"]), rel=1e-6)
    latent_bits = 16 * math.log2(32) / (16 * 16 * 3)  # 4x4 codes of 5 bits for 16x16x3 pixels
    gaussian = 0.5 * math.log2(2 * math.pi * math.e * val["val_mse"]) + 8
    assert val["val_bits_per_dim"] == pytest.approx(gaussian + latent_bits, rel=1e-6)
    artifacts = {a.path for a in client.list_artifacts(done["run_id"])}
    assert {"reconstructions", "codebook_usage.png", "model"} <= artifacts
    assert {Path(a.path).name for a in client.list_artifacts(done["run_id"], "model")} >= \
        {"weights.safetensors", "config.json"}

    # the registry: version 1, champion
    assert done["version"] == "1" and done["promoted"]
    info = tracking.resolve("models:/vqvae-t@champion")
    assert info["version"] == "1" and info["run_id"] == done["run_id"]

    # the registered model reproduces the trained one's reconstructions exactly
    loaded = tracking.load_vqvae("models:/vqvae-t@champion")
    ckpt_dirs = sorted(p for p in (Path(settings.runs_dir) / run_name(settings)).glob("checkpoint_*") if p.is_dir())
    state = torch.load(ckpt_dirs[-1] / "state.pt", weights_only=True)
    trained = build_model(settings)
    trained.load_state_dict(state["model"])
    trained.eval()
    _, urls = shard_urls(settings.shards_dir, "val")
    batch = next(eval_batches(urls, 16, 0, 1, settings.modality, SkipCounter())).to("cpu")
    with torch.no_grad():
        assert torch.equal(loaded(batch.x).recon, trained(batch.x).recon)
    # the version tells stage 2 the decoder's bits per dim
    assert float(info["tags"]["decoder_bits_per_dim"]) == pytest.approx(done["metrics"]["val_recon_bits_per_dim"])
    assert info["tags"]["key_metrics"] == "val_psnr,perplexity,codebook_usage"

    # a re-run with the same config does nothing
    capsys.readouterr()
    assert stage1(settings) == done
    assert "nothing to do" in capsys.readouterr().out


def _committed_checkpoints(run_dir: Path) -> list:
    """Checkpoints the Train controller has registered (a folder alone may still be in a queue)."""
    try:
        return json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())["checkpoint_results"]
    except (OSError, ValueError, KeyError):
        return []


def _kill_a_worker_after_a_checkpoint(run_dir: Path, killed: list, address: str) -> None:
    from ray.util.state import list_actors

    deadline = time.time() + 240
    while time.time() < deadline and not _committed_checkpoints(run_dir):
        time.sleep(0.1)
    # the session's instance by its address: the state API cannot pick one when, as under
    # pytest-xdist, another test process runs its own beside it
    workers = list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    if workers:
        pid = workers[-1]["pid"]
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)


@pytest.mark.e2e  # a second worker group started after the kill: make test-all
def test_killed_worker_resumes_from_last_checkpoint(tmp_path, ray_local, demo_raw, demo_shards):
    settings = stage1_settings(tmp_path, demo_raw, demo_shards, steps=200, checkpoint_every=20,
                               val_every=100, seed=3)
    killed: list = []
    killer = threading.Thread(target=_kill_a_worker_after_a_checkpoint,
                              args=(Path(settings.runs_dir) / run_name(settings), killed,
                                    ray_local.get_runtime_context().gcs_address))
    killer.start()
    done = stage1(settings)
    killer.join()
    assert killed, "no worker was killed"
    client = MlflowClient(settings.tracking_uri)
    resumed = history(client, done["run_id"], "resumed_from_step")
    assert resumed and all(v % 20 == 0 and v >= 20 for _, v in resumed), resumed
    assert done["metrics"]["step"] == 200
    assert history(client, done["run_id"], "recon_mse")[-1][0] == 200
    # the steps between the checkpoint and the kill are not logged twice by the resumed attempt
    for key in ("recon_mse", "samples_per_s"):
        steps = [s for s, _ in history(client, done["run_id"], key)]
        assert len(steps) == len(set(steps)), (key, sorted(s for s in steps if steps.count(s) > 1))


def test_unreachable_tracking_server_exits_2_before_training(tmp_path, demo_raw, demo_shards):
    work = workdir_with_shards(tmp_path, demo_shards)
    cfg = write_config(tmp_path / "c.yaml", work, demo_raw, stage1=TINY_STAGE1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    start = time.time()
    proc = run_job("stage1.py", "--config", str(cfg), timeout=120,
                   env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unreachable" in lines[0] and str(port) in lines[0], proc.stderr
    assert time.time() - start < 60
    assert not (work / "runs").exists()  # nothing started


def test_missing_shards_is_a_one_line_error(tmp_path, demo_raw):
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "w", demo_raw, stage1=TINY_STAGE1)
    proc = run_job("stage1.py", "--config", str(cfg), timeout=120)
    assert proc.returncode == 2 and "run jobs/shard.py first" in proc.stderr, proc.stderr
