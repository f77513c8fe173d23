"""Ray Tune over the codebook size (and any other stage1.* key in `tune.space`): one stage-1
TorchTrainer run per trial, ASHA early stopping on val_mse, the best trial registered.

    python jobs/tune_codebook.py --config configs/demo.yaml
    ray job submit --working-dir . -- python jobs/tune_codebook.py --config configs/imagenet.yaml
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `ray job submit --working-dir .`

from pipeline.cli import run_job  # noqa: E402
from pipeline.tuning import tune_codebook  # noqa: E402

if __name__ == "__main__":
    run_job(tune_codebook, __doc__)
