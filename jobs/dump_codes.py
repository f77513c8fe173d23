"""Codes: encode every shard sample into VQ-VAE codes with Ray Data, log the run in MLflow.

    python jobs/dump_codes.py --config configs/demo.yaml [--set codes.model=models:/vqvae-demo/2]
    ray job submit --working-dir . -- python jobs/dump_codes.py --config configs/imagenet.yaml
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `ray job submit --working-dir .`

from pipeline.cli import run_job  # noqa: E402
from pipeline.codes import dump_codes  # noqa: E402

if __name__ == "__main__":
    run_job(dump_codes, __doc__)
