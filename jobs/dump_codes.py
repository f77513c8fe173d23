"""Codes: encode every shard sample into VQ-VAE codes with Ray Data, log the run in MLflow.

    python jobs/dump_codes.py --config configs/demo.yaml [--set codes.model=models:/vqvae-demo/2]
    ray job submit --working-dir . -- python jobs/dump_codes.py --config configs/imagenet.yaml
"""
import _repo  # noqa: F401  the repository on the import path, jobs/ off it

from pipeline.cli import run_job
from pipeline.stages.codes import codes

if __name__ == "__main__":
    run_job(codes, __doc__)
