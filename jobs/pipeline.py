"""Every stage in order (demo data when the config asks for it, shard, stage 1, codes, stage 2,
sample, the report), skipping stages already done.

    python jobs/pipeline.py --config configs/demo.yaml
    ray job submit --working-dir . -- python jobs/pipeline.py --config configs/imagenet.yaml
"""
import sys
from pathlib import Path

# The repository on the path, in place of this folder: Ray gives its workers the job script's
# folder, where jobs/pipeline.py would shadow the package (`ray job submit --working-dir .` too).
_jobs = Path(__file__).resolve().parent
sys.path[:] = [str(_jobs.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _jobs]

from pipeline.cli import run_job  # noqa: E402
from pipeline.stages.pipeline import pipeline  # noqa: E402

if __name__ == "__main__":
    run_job(pipeline, __doc__)
