"""Build a modality's small demo dataset offline (images: photos bundled with installed packages,
in the ImageNet layout).

    python jobs/make_demo_data.py --out work/demo/raw [--modality image]
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import modalities  # noqa: E402
from pipeline.errors import UserError  # noqa: E402

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder to create (left alone when it exists)")
    p.add_argument("--modality", default="image", help="a registered modality (default: image)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--small", action="store_true", help="a few samples per class or speaker (seconds to make)")
    a = p.parse_args()
    try:
        modality = modalities.get(a.modality)
        data = modality.DataConfig(name="demo", root=str(Path(a.out).resolve()), modality=a.modality, seed=a.seed)
        info = modality.make_demo(data, small=a.small)
    except (ValueError, UserError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"demo data {'written to' if info['created'] else 'already at'} {info['out']}")
