"""Ray Tune over the codebook size (and any other stage1.* key in `tune.space`): one stage-1
TorchTrainer run per trial, ASHA early stopping on the modality's selection metric, the best
trial registered.

    python jobs/tune_codebook.py --config configs/demo.yaml
    ray job submit --working-dir . -- python jobs/tune_codebook.py --config configs/imagenet.yaml
"""
import _repo  # noqa: F401  the repository on the import path, jobs/ off it

from pipeline.cli import run_job
from pipeline.stages.tune import tune

if __name__ == "__main__":
    run_job(tune, __doc__)
