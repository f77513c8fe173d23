"""Build a modality's small demo dataset offline (images: photos bundled with installed packages,
in the ImageNet layout).

    python jobs/make_demo_data.py --out work/demo/raw [--modality image]
"""
import argparse

import _repo  # noqa: F401  the repository on the import path, jobs/ off it

from pipeline.stages.make_demo_data import main


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder to create (left alone when it exists)")
    p.add_argument("--modality", default="image", help="a registered modality (default: image)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--small", action="store_true", help="a few samples per class or speaker (seconds to make)")
    return p.parse_args(argv)


if __name__ == "__main__":
    a = parse()
    main(a.out, a.modality, a.seed, a.small)
