"""Every stage in order (demo data when the config asks for it, shard, stage 1, ...), skipping
stages already done.

    python jobs/pipeline.py --config configs/demo.yaml
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.cli import run_job  # noqa: E402
from pipeline.run_all import run_pipeline  # noqa: E402

if __name__ == "__main__":
    run_job(run_pipeline, __doc__)
