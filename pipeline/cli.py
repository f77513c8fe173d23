"""The shared edge of every job: `--config PATH --set key=value ...`, one-line errors, exit 2."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from pipeline.config import Settings, load_settings
from pipeline.errors import UserError


def parse_settings(description: str, argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="experiment YAML, e.g. configs/demo.yaml")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, value parsed as YAML (repeatable), e.g. --set stage1.steps=300",
    )
    args = parser.parse_args(argv)
    return load_settings(args.config, args.overrides)


def run_job(stage: Callable[[Settings], object], description: str, argv: list[str] | None = None) -> None:
    """Parse, validate, run one stage. A UserError becomes one line on stderr and exit code 2."""
    try:
        settings = parse_settings(description, argv)
        stage(settings)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
