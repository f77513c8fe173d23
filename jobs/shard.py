"""Shard: a raw dataset (in the layout of its modality) into webdataset tars.

    python jobs/shard.py --config configs/demo.yaml [--set overwrite=true]
    ray job submit --working-dir . -- python jobs/shard.py --config configs/imagenet.yaml
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `ray job submit --working-dir .`

from pipeline.cli import run_job  # noqa: E402
from pipeline.data.shard import shard_dataset  # noqa: E402

if __name__ == "__main__":
    run_job(shard_dataset, __doc__)
