"""Stage 2: fit the prior over the codes with Ray Train (DDP), log and register it in MLflow.

    python jobs/stage2.py --config configs/demo.yaml [--set stage2.steps=500]
    ray job submit --working-dir . -- python jobs/stage2.py --config configs/imagenet.yaml
"""
import sys
from pathlib import Path

# The repository on the path, in place of this folder: Ray gives its workers the job script's
# folder, where jobs/pipeline.py would shadow the package (`ray job submit --working-dir .` too).
_jobs = Path(__file__).resolve().parent
sys.path[:] = [str(_jobs.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _jobs]

from pipeline.cli import run_job  # noqa: E402
from pipeline.stages.stage2 import stage2  # noqa: E402

if __name__ == "__main__":
    run_job(stage2, __doc__)
