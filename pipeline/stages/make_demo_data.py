"""A modality's small demo dataset, made offline (jobs/make_demo_data.py; jobs/pipeline.py makes it
itself when `data.make_demo` is set)."""
from __future__ import annotations

import sys
from pathlib import Path

from pipeline import modalities
from pipeline.errors import UserError


def make_demo_data(out: str, modality: str = modalities.DEFAULT, seed: int = 0, small: bool = False) -> dict:
    """The demo data of `modality` at `out` (left alone when it is there); -> its counts."""
    kind = modalities.get(modality)
    data = kind.DataConfig(name="demo", root=str(Path(out).resolve()), modality=modality, seed=seed)
    return kind.make_demo(data, small=small)


def main(out: str, modality: str = modalities.DEFAULT, seed: int = 0, small: bool = False) -> None:
    """The job: one line saying where the data is; a bad modality or a missing tool, one line and exit 2."""
    try:
        info = make_demo_data(out, modality, seed, small)
    except (ValueError, UserError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"demo data {'written to' if info['created'] else 'already at'} {info['out']}")
