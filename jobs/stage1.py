"""Stage 1: train the VQ-VAE on the shards with Ray Train (DDP), log and register it in MLflow.

    python jobs/stage1.py --config configs/demo.yaml [--set stage1.steps=300]
    ray job submit --working-dir . -- python jobs/stage1.py --config configs/imagenet.yaml
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `ray job submit --working-dir .`

from pipeline.cli import run_job  # noqa: E402
from pipeline.train.fit_vqvae import train_vqvae  # noqa: E402

if __name__ == "__main__":
    run_job(train_vqvae, __doc__)
