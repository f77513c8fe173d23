"""configs/imagenet.yaml, the paper's ImageNet configuration (128x128 -> 32x32 codes of K=512,
stage 1 at the paper's size), through the pipeline job on a small tree in ImageNet's own layout
(train/<wnid>/*.JPEG, val/ flat with LOC_val_solution.csv, JPEGs of ImageNet's sizes): the path a
cluster user takes, with only the cluster's settings (workdir, data.root, GPUs, steps) and the
prior's size (which sampling on 2 CPU cores could not afford) overridden."""
from __future__ import annotations

import json
import sys
import tarfile

import pytest
from conftest import REPO, ray_address, run_job

pytestmark = [pytest.mark.slow, pytest.mark.e2e]  # the job joins the session's Ray instance


def test_the_imagenet_config_runs_end_to_end_on_an_imagenet_shaped_tree(tmp_path, ray_local):
    sys.path.insert(0, str(REPO / "bench"))
    from scale import make_image_tree

    classes = 10
    root, made = make_image_tree(tmp_path / "trees", n=140, classes=classes, pool_size=40, seed=3)
    assert made["val"] >= 5 and (root / "LOC_val_solution.csv").is_file()
    work = tmp_path / "w"
    overrides = {
        "workdir": str(work), "data.root": str(root), "data.samples_per_shard": 25,
        "ray.use_gpu": False, "ray.num_workers": 2, "ray.cpus_per_worker": 1,
        "stage1.steps": 3, "stage1.batch_size": 4, "stage1.compile": False, "stage1.val_every": 3,
        "stage1.checkpoint_every": 3, "stage1.log_every": 1,
        "stage2.steps": 3, "stage2.batch_size": 4, "stage2.hidden": 16, "stage2.num_layers": 2,
        "stage2.val_every": 3, "stage2.checkpoint_every": 3, "stage2.log_every": 1,
    }
    sets = [arg for k, v in overrides.items() for arg in ("--set", f"{k}={json.dumps(v)}")]  # JSON is YAML
    proc = run_job("pipeline.py", "--config", str(REPO / "configs" / "imagenet.yaml"), *sets,
                   timeout=1200, env={**ray_address(ray_local), "MLFLOW_TRACKING_URI": None})
    assert proc.returncode == 0, proc.stderr[-3000:]

    shards = json.loads((work / "shards" / "imagenet" / "manifest.json").read_text())
    assert shards["splits"]["train"]["samples"] == made["train"] and shards["splits"]["val"]["samples"] == made["val"]
    assert shards["cond"]["labels"]["size"] == classes
    with tarfile.open(work / "shards" / "imagenet" / shards["splits"]["train"]["shards"][0]["path"]) as tar:
        labels = {tar.extractfile(m).read() for m in tar if m.name.endswith(".cls")}
    assert len(labels) >= 8  # 25 samples of a mixed listing: most of the 10 classes, not one or two

    [codes] = list((work / "codes" / "imagenet").glob("*/manifest.json"))
    codes = json.loads(codes.read_text())
    assert codes["latent_shape"] == [32, 32] and codes["codebook_size"] == 512 and codes["dtype"] == "int16"
    assert codes["rows"] == {"train": made["train"], "val": made["val"]}
    assert sum(rows for _, rows in codes["files"]["train"]) == made["train"]

    from pipeline import tracking

    tracking.setup_tracking(f"sqlite:///{work}/mlflow.db", "imagenet")
    vqvae = tracking.load_vqvae("models:/vqvae-imagenet@champion")
    assert {k: vqvae.config[k] for k in ("hidden", "num_res_blocks", "codebook_size", "code_dim")} == \
        {"hidden": 256, "num_res_blocks": 2, "codebook_size": 512, "code_dim": 64}
    prior = tracking.resolve("models:/prior-imagenet@champion")
    assert prior["tags"]["vqvae_version"] == "1"
    from PIL import Image

    width, height = Image.open(work / "samples" / "samples-1.png").size  # one 128x128 sample per class, a row each
    assert width >= 128 and height >= classes * 128, (width, height)
