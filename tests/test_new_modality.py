"""A kind of data the pipeline has never seen, defined only under tests/ (digits_modality.py), goes
through the demo-data job and the pipeline job (shard, stage 1, codes, stage 2, sample, report) with
no change under pipeline/: the proof that a new modality is one file."""
from __future__ import annotations

import json
import math
import tarfile

import pytest
import yaml
from PIL import Image

from conftest import ray_address, run_job

pytestmark = [pytest.mark.slow, pytest.mark.e2e]  # the jobs join the session's Ray instance

SPEC = "digits_modality:MODALITY"  # conftest puts tests/ on PYTHONPATH, for the jobs and Ray workers


def test_a_modality_defined_in_tests_runs_through_the_pipeline(tmp_path, ray_local):
    work = tmp_path / "w"
    config = {
        "workdir": str(work),
        "data": {"name": "digits", "root": "{workdir}/raw", "modality": SPEC, "size": 16, "samples_per_shard": 100},
        # one Train worker with the batch of two (DDP: test_stage1.py): a process less per fit
        "ray": {"num_workers": 1},
        "stage1": {"steps": 150, "batch_size": 64, "hidden": 32, "codebook_size": 16, "code_dim": 8,
                   "num_res_blocks": 1, "lr": 2e-3, "ema": True, "dead_code_steps": 20, "checkpoint_every": 75,
                   "val_every": 75},
        "stage2": {"steps": 150, "batch_size": 64, "hidden": 32, "num_layers": 4, "kernel_size": 3, "lr": 3e-3,
                   "checkpoint_every": 50, "val_every": 50},
        "sample": {"per_class": 5},
    }
    cfg = tmp_path / "digits.yaml"
    cfg.write_text(yaml.safe_dump(config))

    made = run_job("make_demo_data.py", "--modality", SPEC, "--out", str(work / "raw"))
    assert made.returncode == 0, made.stderr[-3000:]
    # every stage in one process (the stage-by-stage jobs are the same functions, run one by one
    # for images by the README test)
    proc = run_job("pipeline.py", "--config", str(cfg), timeout=900, env=ray_address(ray_local))
    assert proc.returncode == 0, proc.stderr[-3000:]

    # shard: its own tar schema, no class member, every digit kept
    shards = json.loads((work / "shards" / "digits" / "manifest.json").read_text())
    assert shards["modality"] == SPEC and shards["cond"] == {} and shards["size"] == 16
    assert shards["splits"]["train"]["samples"] == 300 and shards["splits"]["val"]["samples"] == 60
    with tarfile.open(work / "shards" / "digits" / shards["splits"]["val"]["shards"][0]["path"]) as tar:
        assert {m.name.split(".", 1)[1] for m in tar} == {"gray.npy"}

    # stage 1 learns: reconstructions well above the 11 dB of predicting mid-grey everywhere
    from mlflow import MlflowClient

    from pipeline import tracking

    uri = f"sqlite:///{work}/mlflow.db"
    tracking.setup_tracking(uri, "digits")
    vqvae = tracking.resolve("models:/vqvae-digits@champion")
    assert float(vqvae["tags"]["metric.val_mse"]) < 0.02, vqvae["tags"]
    psnr = MlflowClient(uri).get_metric_history(vqvae["run_id"], "val_psnr")
    assert max(psnr, key=lambda m: m.step).value > 17

    # codes: one 4x4 array per digit, no conditioning columns
    [codes_manifest] = (work / "codes" / "digits").glob("v1-*/manifest.json")
    codes = json.loads(codes_manifest.read_text())
    assert codes["latent_shape"] == [4, 4] and codes["cond"] == {} and codes["rows"] == {"train": 300, "val": 60}
    assert codes["input_dims_per_code"] == 16

    # stage 2: an unconditional prior, better than the uniform one
    prior = tracking.resolve("models:/prior-digits@champion")
    nll = float(prior["tags"]["metric.val_nll_bits_per_code"])
    assert nll < 0.85 * math.log2(16), nll
    assert tracking.load_prior("models:/prior-digits@champion").num_classes == 0

    # sample: the modality's own picture, one row of 5 digits
    path = work / "samples" / "samples-1.png"
    assert str(path) in proc.stdout.splitlines(), proc.stdout[-2000:]
    with Image.open(path) as img:
        assert img.mode == "L" and img.size == (5 * 16, 16)
