"""Sample: draw codes from the prior champion, decode them with the VQ-VAE it was trained on, write
them as the modality's files (images: a PNG, a row per class); then the report page of the
prior's lineage, <workdir>/report-<data.name>.html, as jobs/pipeline.py writes it.

    python jobs/sample.py --config configs/demo.yaml [--set sample.per_class=4]
"""
import sys
from pathlib import Path

# The repository on the path, in place of this folder: Ray gives its workers the job script's
# folder, where jobs/pipeline.py would shadow the package (`ray job submit --working-dir .` too).
_jobs = Path(__file__).resolve().parent
sys.path[:] = [str(_jobs.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _jobs]

from pipeline.cli import run_job  # noqa: E402
from pipeline.stages.sample import sample  # noqa: E402

if __name__ == "__main__":
    run_job(sample, __doc__)
