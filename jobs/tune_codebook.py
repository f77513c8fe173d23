"""Ray Tune over the codebook size (and any other stage1.* key in `tune.space`): one stage-1
TorchTrainer run per trial, ASHA early stopping on the modality's selection metric, the best
trial registered.

    python jobs/tune_codebook.py --config configs/demo.yaml
    ray job submit --working-dir . -- python jobs/tune_codebook.py --config configs/imagenet.yaml
"""
import sys
from pathlib import Path

# The repository on the path, in place of this folder: Ray gives its workers the job script's
# folder, where jobs/pipeline.py would shadow the package (`ray job submit --working-dir .` too).
_jobs = Path(__file__).resolve().parent
sys.path[:] = [str(_jobs.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _jobs]

from pipeline.cli import run_job  # noqa: E402
from pipeline.stages.tune import tune  # noqa: E402

if __name__ == "__main__":
    run_job(tune, __doc__)
