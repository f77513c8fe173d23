"""Codes: encode every shard sample into VQ-VAE codes with Ray Data, log the run in MLflow.

    python jobs/dump_codes.py --config configs/demo.yaml [--set codes.model=models:/vqvae-demo/2]
    ray job submit --working-dir . -- python jobs/dump_codes.py --config configs/imagenet.yaml
"""
import sys
from pathlib import Path

# The repository on the path, in place of this folder: Ray gives its workers the job script's
# folder, where jobs/pipeline.py would shadow the package (`ray job submit --working-dir .` too).
_jobs = Path(__file__).resolve().parent
sys.path[:] = [str(_jobs.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _jobs]

from pipeline.cli import run_job  # noqa: E402
from pipeline.stages.codes import codes  # noqa: E402

if __name__ == "__main__":
    run_job(codes, __doc__)
