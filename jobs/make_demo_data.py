"""Build a modality's small demo dataset offline (images: photos bundled with installed packages,
in the ImageNet layout).

    python jobs/make_demo_data.py --out work/demo/raw [--modality image]
"""
import argparse
import sys
from pathlib import Path

# The repository on the path, in place of this folder: Ray gives its workers the job script's
# folder, where jobs/pipeline.py would shadow the package (`ray job submit --working-dir .` too).
_jobs = Path(__file__).resolve().parent
sys.path[:] = [str(_jobs.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _jobs]

from pipeline.stages.make_demo_data import main  # noqa: E402

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder to create (left alone when it exists)")
    p.add_argument("--modality", default="image", help="a registered modality (default: image)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--small", action="store_true", help="a few samples per class or speaker (seconds to make)")
    a = p.parse_args()
    main(a.out, a.modality, a.seed, a.small)
