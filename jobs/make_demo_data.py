"""Build the demo dataset (ImageNet layout) offline from photos bundled with installed packages.

    python jobs/make_demo_data.py --out work/demo/raw
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data.demo import make_demo_data  # noqa: E402

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder to create (left alone when it exists)")
    p.add_argument("--train-per-class", type=int, default=100)
    p.add_argument("--val-per-class", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    info = make_demo_data(a.out, a.train_per_class, a.val_per_class, a.seed)
    print(f"demo data {'written to' if info['created'] else 'already at'} {info['out']}")
