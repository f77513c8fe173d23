"""Sample: draw codes from the prior champion, decode them with the VQ-VAE it was trained on, write
them as the modality's files (images: a PNG, a row per class); then the report page of the
prior's lineage, <workdir>/report-<data.name>.html, as jobs/pipeline.py writes it.

    python jobs/sample.py --config configs/demo.yaml [--set sample.per_class=4]
"""
import _repo  # noqa: F401  the repository on the import path, jobs/ off it

from pipeline.cli import run_job
from pipeline.stages.sample import sample

if __name__ == "__main__":
    run_job(sample, __doc__)
