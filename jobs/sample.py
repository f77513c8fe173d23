"""Sample: draw codes from the prior champion, decode them with the VQ-VAE it was trained on, write
them as the modality's files (images: a PNG, a row per class); then the report page of the
prior's lineage, <workdir>/report-<data.name>.html, as jobs/pipeline.py writes it.

    python jobs/sample.py --config configs/demo.yaml [--set sample.per_class=4]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `ray job submit --working-dir .`

from pipeline.cli import run_job  # noqa: E402
from pipeline.sampling import sample_and_report  # noqa: E402

if __name__ == "__main__":
    run_job(sample_and_report, __doc__)
