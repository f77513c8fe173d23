"""The shared edge of every job: `--config PATH --set key=value ...`, one-line errors, exit 2."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

# MLflow's INFO lines ("Creating initial MLflow database tables...") are noise between a stage's
# own lines; set before mlflow is imported, which reads it once. A user's setting wins.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
# ... and so are its "Downloading artifacts" bars, three per model a stage loads.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
from typing import Callable

from pipeline.config import Settings, load_settings
from pipeline.errors import UserError


def parse_settings(description: str, argv: list[str] | None = None, add_arguments=None):
    """Settings from --config and --set; with `add_arguments(parser)` for a job's own flags,
    (settings, parsed args)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="experiment YAML, e.g. configs/demo.yaml")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, value parsed as YAML (repeatable), e.g. --set stage1.steps=300",
    )
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's, Ray Train's and MLflow's own info lines (off by default)")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    if args.verbose:
        os.environ["PIPELINE_VERBOSE"] = "1"
        os.environ["MLFLOW_LOGGING_LEVEL"] = "INFO"
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "true"
    settings = load_settings(args.config, args.overrides)
    return settings if add_arguments is None else (settings, args)


def check_workdir(settings: Settings) -> None:
    """A local workdir must be a folder this process can write, before any work starts; one on an
    object store a bucket that exists and takes these credentials' writes, with an MLflow server
    to log to (a SQLite file cannot live on an object store)."""
    from pipeline import fs

    workdir = settings.workdir
    if fs.is_remote(workdir):
        if settings.tracking_uri == f"sqlite:///{workdir}/mlflow.db":  # the default: a file in the workdir
            raise UserError(f"workdir {workdir} is on an object store, which cannot hold MLflow's SQLite file: set "
                            f"MLFLOW_TRACKING_URI (or mlflow.tracking_uri) to an MLflow server every node reaches, e.g. "
                            f"`mlflow server --artifacts-destination {fs.join(workdir, 'mlartifacts')}` (on one machine "
                            f"a local file does too: sqlite:////abs/path/mlflow.db)")
        fs.check_store(workdir)
        return
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write-check-"):
            pass
    except OSError as e:
        raise UserError(f"workdir {workdir} is not a writable folder: {e.strerror or e}") from None


def run_job(stage: Callable[..., object], description: str, argv: list[str] | None = None,
            add_arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """Parse, validate, run one stage. A UserError becomes one line on stderr and exit code 2.
    A job with flags of its own gives `add_arguments`; its stage is called as stage(settings, args)."""
    from pipeline import progress

    progress.enable()
    try:
        parsed = parse_settings(description, argv, add_arguments)
        settings, args = parsed if add_arguments is not None else (parsed, None)
        check_workdir(settings)
        stage(settings) if add_arguments is None else stage(settings, args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except OSError as e:  # an object store that refused (credentials expired, bucket gone) mid-run
        from pipeline.fs import store_error

        line = store_error(e)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
