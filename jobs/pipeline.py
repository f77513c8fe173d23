"""Every stage in order (demo data when the config asks for it, shard, stage 1, codes, stage 2,
sample, the report), skipping stages already done.

    python jobs/pipeline.py --config configs/demo.yaml
    ray job submit --working-dir . -- python jobs/pipeline.py --config configs/imagenet.yaml
"""
import _repo  # noqa: F401  the repository on the import path, jobs/ off it

from pipeline.cli import run_job
from pipeline.stages.pipeline import pipeline

if __name__ == "__main__":
    run_job(pipeline, __doc__)
