"""Video through the pipeline job on a small set of ViZDoom clips with their actions: demo
data, shard, stage 1, codes, stage 2, sample (continuations under true and shuffled actions, a
counterfactual), the report with its players, and the registry CLI."""
from __future__ import annotations

import base64
import io
import json
import math
import re

import av
import pytest
import torch
import yaml

from conftest import ray_address, run_job

pytestmark = [pytest.mark.slow, pytest.mark.e2e]  # the jobs join the session's Ray instance


def test_video_runs_through_the_pipeline_job_with_a_report(tmp_path, ray_local):
    from pipeline.modalities.video.demo import make_demo_data

    work = tmp_path / "w"
    made = make_demo_data(work / "raw", train_clips=12, val_clips=4, frames=12, size=32)
    assert made["created"] and made["train"] == 12 and made["val"] == 4
    config = {
        "workdir": str(work),
        "data": {"name": "doom", "root": "{workdir}/raw", "modality": "video", "frame_size": 16, "frames": 4,
                 "window_stride": 2, "samples_per_shard": 4},
        "ray": {"num_workers": 1},
        "stage1": {"steps": 60, "batch_size": 8, "lr": 2e-3, "codebook_size": 32, "code_dim": 8, "hidden": 16,
                   "num_res_blocks": 1, "num_downsamples": 2, "temporal_downsamples": 1, "ema": True,
                   "checkpoint_every": 30, "val_every": 30},
        "stage2": {"steps": 40, "batch_size": 8, "hidden": 32, "num_layers": 2, "num_heads": 2,
                   "checkpoint_every": 20, "val_every": 20},
        "sample": {"given_frames": 2, "windows": 3},
    }
    cfg = tmp_path / "doom.yaml"
    cfg.write_text(yaml.safe_dump(config))
    # the pipeline job: every stage in one process, each a child run of the pipeline's MLflow run
    proc = run_job("pipeline.py", "--config", str(cfg), timeout=900, env=ray_address(ray_local))
    assert proc.returncode == 0, proc.stderr[-3000:]

    # shards: 12-frame clips make windows starting at 0, 2, 4, 6, 8: 5 a clip
    shards = json.loads((work / "shards" / "doom" / "manifest.json").read_text())
    assert shards["cond"]["actions"] == {"kind": "sequence", "size": 4,
                                         "names": ["forward", "backward", "turn_left", "turn_right"]}
    assert shards["splits"]["train"]["samples"] == 12 * 5 and shards["splits"]["val"]["samples"] == 4 * 5
    assert shards["splits"]["train"]["stats"]["clips"] == 12 and shards["splits"]["train"]["stats"]["frames"] == 144
    assert shards["skipped"] == []

    from mlflow import MlflowClient

    from pipeline import tracking

    uri = f"sqlite:///{work}/mlflow.db"
    tracking.setup_tracking(uri, "doom")
    vqvae = tracking.resolve("models:/vqvae-doom@champion")
    run = MlflowClient(uri).get_run(vqvae["run_id"])
    assert run.data.metrics["val_psnr"] > 12, run.data.metrics  # a constant grey guess scores ~9 dB here
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(vqvae["run_id"], "reconstructions")}
    assert {p.rsplit(".", 1)[-1] for p in artifacts} >= {"gif", "mp4", "png"}

    # codes: one row per window, (2 time steps, 4, 4) with its 4 actions
    [codes_manifest] = (work / "codes" / "doom").glob("v1-*/manifest.json")
    codes = json.loads(codes_manifest.read_text())
    assert codes["latent_shape"] == [2, 4, 4] and codes["rows"] == {"train": 60, "val": 20}
    prior = tracking.resolve("models:/prior-doom@champion")
    assert float(prior["tags"]["metric.val_nll_bits_per_code"]) < math.log2(32)

    client = MlflowClient(uri)
    [parent] = [r for r in client.search_runs([run.info.experiment_id]) if r.data.tags.get("stage") == "pipeline"]
    assert parent.info.status == "FINISHED"
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.data.tags["stage"] for r in children) == ["codes", "sample", "stage1", "stage2"]
    assert all(r.info.status == "FINISHED" for r in children)

    # sample: continuations scored under true and shuffled actions, files a person opens
    lines = proc.stdout.strip().splitlines()
    assert any(line.endswith("samples-1.gif") for line in lines), proc.stdout[-2000:]
    scores = {line.split()[2]: float(line.split()[-1]) for line in lines if " = " in line}
    assert {"sample_psnr_true_actions", "sample_psnr_shuffled_actions", "sample_psnr_reconstruction",
            "sample_psnr_action_gap", "sample_psnr_action_gap_stderr", "sample_true_actions_better_fraction"} <= set(scores)
    assert all(5 < scores[f"sample_psnr_{k}"] < 60 for k in ("true_actions", "shuffled_actions", "reconstruction"))
    # the window-by-window gap's mean is the difference of the means (printed to 4 digits)
    assert scores["sample_psnr_action_gap"] == pytest.approx(
        scores["sample_psnr_true_actions"] - scores["sample_psnr_shuffled_actions"], abs=0.02)
    assert scores["sample_psnr_action_gap_stderr"] > 0 and 0 <= scores["sample_true_actions_better_fraction"] <= 1
    for name in ("samples-1.gif", "samples-1.mp4", "samples-1.png", "samples-1-counterfactual.png",
                 "samples-1-counterfactual.gif"):
        assert (work / "samples" / name).stat().st_size > 0, name
    with av.open(str(work / "samples" / "samples-1.mp4")) as clip:
        assert sum(1 for _ in clip.decode(video=0)) == 4  # a frame per window frame

    # the report plays the reconstructions and the samples in the page, and is on the pipeline's run
    page = (work / "report-doom.html").read_text()
    videos = re.findall(r'<video [^>]*src="data:video/mp4;base64,([^"]+)"', page)
    assert len(videos) >= 2, len(videos)
    with av.open(io.BytesIO(base64.b64decode(videos[-1]))) as clip:
        assert sum(1 for _ in clip.decode(video=0)) == 4
    assert "report-doom.html" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    # with the sample job's scores in its metrics table
    gap = re.search(r"<td>sample</td><td>sample_psnr_action_gap</td><td>(-?[0-9.e-]+)</td>", page)
    assert gap and float(gap.group(1)) == pytest.approx(scores["sample_psnr_action_gap"], abs=1e-3), page[:3000]

    models = run_job("models.py", "list", "--config", str(cfg))
    assert models.returncode == 0 and "vqvae-doom" in models.stdout and "prior-doom" in models.stdout, models.stderr

    # Ray Tune's codebook search runs on video as on images: one trial of K=16 on the same shards,
    # its model registered as the VQ-VAE's v2, scored by val_mse, with the config's video model
    tune = run_job("tune_codebook.py", "--config", str(cfg), "--set", 'tune.space={"stage1.codebook_size": [16]}',
                   "--set", 'tune.overrides={"stage1.steps": 20, "stage1.val_every": 10, "stage1.checkpoint_every": 10}',
                   "--set", "tune.grace_period=10", timeout=600, env=ray_address(ray_local))
    assert tune.returncode == 0, tune.stderr[-3000:]
    assert "tune doom: 1/1 trials (100%)" in tune.stdout and "best val_mse" in tune.stdout, tune.stdout[-2000:]
    tuned = tracking.resolve("models:/vqvae-doom/2")
    assert tuned["tags"].get("tune_trial"), tuned["tags"]
    model = tracking.load_vqvae("models:/vqvae-doom/2")
    assert model.vq.codebook_size == 16
    clip = torch.rand(1, 3, 4, 16, 16) - 0.5
    assert model.encode(clip).shape == (1, 2, 4, 4)  # the config's temporal halving, 16x16 -> 4x4
