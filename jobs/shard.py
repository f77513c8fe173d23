"""Shard: a raw dataset (in the layout of its modality) into webdataset tars.

    python jobs/shard.py --config configs/demo.yaml [--set overwrite=true]
    ray job submit --working-dir . -- python jobs/shard.py --config configs/imagenet.yaml
"""
import _repo  # noqa: F401  the repository on the import path, jobs/ off it

from pipeline.cli import run_job
from pipeline.stages.shard import shard

if __name__ == "__main__":
    run_job(shard, __doc__)
