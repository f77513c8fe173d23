"""Stage 1: train the VQ-VAE on the shards with Ray Train (DDP), log and register it in MLflow.

    python jobs/stage1.py --config configs/demo.yaml [--set stage1.steps=300]
    ray job submit --working-dir . -- python jobs/stage1.py --config configs/imagenet.yaml
"""
import sys
from pathlib import Path

# The repository on the path, in place of this folder: Ray gives its workers the job script's
# folder, where jobs/pipeline.py would shadow the package (`ray job submit --working-dir .` too).
_jobs = Path(__file__).resolve().parent
sys.path[:] = [str(_jobs.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _jobs]

from pipeline.cli import run_job  # noqa: E402
from pipeline.stages.stage1 import stage1  # noqa: E402

if __name__ == "__main__":
    run_job(stage1, __doc__)
