"""The whole pipeline on a tiny config: every stage a child run of one MLflow run, and the chain
of lineage prior -> codes -> VQ-VAE version -> shards holds."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from mlflow import MlflowClient
from PIL import Image

from conftest import TINY_STAGE1, write_config
from pipeline import tracking
from pipeline.config import load_settings
from pipeline.run_all import run_pipeline

pytestmark = pytest.mark.slow

TINY_STAGE2 = {"steps": 60, "batch_size": 32, "hidden": 32, "num_layers": 4, "kernel_size": 3, "lr": 3e-3,
               "checkpoint_every": 30, "val_every": 30, "log_every": 10}


def test_pipeline_runs_every_stage_with_lineage(tmp_path, ray_local):
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "w", "{workdir}/raw",
                       data={"name": "t", "root": "{workdir}/raw", "make_demo": True, "image_size": 16,
                             "samples_per_shard": 200},
                       stage1=TINY_STAGE1, stage2=TINY_STAGE2, sample={"per_class": 2},
                       ray={"num_workers": 2})
    settings = load_settings(cfg)
    results = run_pipeline(settings)
    client = MlflowClient(settings.tracking_uri)

    # one parent run, each stage's run its child
    parent = results["pipeline_run_id"]
    children = client.search_runs([client.get_experiment_by_name("t").experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert {r.data.tags["stage"] for r in children} == {"stage1", "codes", "stage2", "sample"}

    # prior -> VQ-VAE version
    prior = tracking.resolve("models:/prior-t@champion")
    assert prior["tags"]["vqvae_name"] == "vqvae-t" and prior["tags"]["vqvae_version"] == "1"
    # prior -> codes -> VQ-VAE version
    codes_dir = Path(prior["tags"]["codes"])
    codes_manifest = json.loads((codes_dir / "manifest.json").read_text())
    assert codes_manifest["vqvae_version"] == "1"
    vqvae = tracking.resolve("models:/vqvae-t/1")
    assert codes_manifest["vqvae_run_id"] == vqvae["run_id"] == results["stage1"]["run_id"]
    # VQ-VAE -> the exact shards it was trained on
    shards_manifest = json.loads((Path(settings.shards_dir) / "manifest.json").read_text())
    assert vqvae["tags"]["shards"] == settings.shards_dir == codes_manifest["shards"]
    assert vqvae["tags"]["shards_manifest_sha256"] == \
        hashlib.sha256(json.dumps(shards_manifest, sort_keys=True).encode()).hexdigest()

    # samples: a row per class of per_class 16x16 images (2 px padding)
    img = Image.open(results["sample"])
    assert img.size == (2 * 18 + 2, 10 * 18 + 2)
