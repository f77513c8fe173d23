"""The shared edge of every job: `--config PATH --set key=value ...`, one-line errors, exit 2."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

# MLflow's INFO lines ("Creating initial MLflow database tables...") are noise between a stage's
# own lines; set before mlflow is imported, which reads it once. A user's setting wins.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
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


def check_workdir(settings: Settings) -> None:
    """A local workdir must be a folder this process can write, before any work starts."""
    workdir = settings.workdir
    if "://" in workdir:
        return  # a pyarrow filesystem: its own errors name it
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write-check-"):
            pass
    except OSError as e:
        raise UserError(f"workdir {workdir} is not a writable folder: {e.strerror or e}") from None


def run_job(stage: Callable[[Settings], object], description: str, argv: list[str] | None = None) -> None:
    """Parse, validate, run one stage. A UserError becomes one line on stderr and exit code 2."""
    try:
        settings = parse_settings(description, argv)
        check_workdir(settings)
        stage(settings)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
