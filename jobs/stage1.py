"""Stage 1: train the VQ-VAE on the shards with Ray Train (DDP), log and register it in MLflow.

    python jobs/stage1.py --config configs/demo.yaml [--set stage1.steps=300]
    ray job submit --working-dir . -- python jobs/stage1.py --config configs/imagenet.yaml
"""
import _repo  # noqa: F401  the repository on the import path, jobs/ off it

from pipeline.cli import run_job
from pipeline.stages.stage1 import stage1

if __name__ == "__main__":
    run_job(stage1, __doc__)
