"""Stage 2: fit the PixelCNN prior over the codes with Ray Train (DDP), log and register it in MLflow.

    python jobs/stage2.py --config configs/demo.yaml [--set stage2.steps=500]
    ray job submit --working-dir . -- python jobs/stage2.py --config configs/imagenet.yaml
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `ray job submit --working-dir .`

from pipeline.cli import run_job  # noqa: E402
from pipeline.train.fit_prior import train_prior  # noqa: E402

if __name__ == "__main__":
    run_job(train_prior, __doc__)
