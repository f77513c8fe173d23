"""Stage 2: fit the prior over the codes with Ray Train (DDP), log and register it in MLflow.

    python jobs/stage2.py --config configs/demo.yaml [--set stage2.steps=500]
    ray job submit --working-dir . -- python jobs/stage2.py --config configs/imagenet.yaml
"""
import _repo  # noqa: F401  the repository on the import path, jobs/ off it

from pipeline.cli import run_job
from pipeline.stages.stage2 import stage2

if __name__ == "__main__":
    run_job(stage2, __doc__)
