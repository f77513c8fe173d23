"""Serve a config's MLflow store in the MLflow UI on 127.0.0.1 (what `make ui` runs).

    python jobs/ui.py --config configs/demo.yaml [--port 5000]

Prints the address of the latest pipeline run's page (its report is among its artifacts) and
runs `mlflow ui` in the foreground until Ctrl-C. A store on an MLflow server needs no UI of ours:
open the server's address.
"""
import _repo  # noqa: F401  the repository on the import path, jobs/ off it

from pipeline.cli import run_job
from pipeline.stages.ui import ui


def add_arguments(parser) -> None:
    parser.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")


if __name__ == "__main__":
    run_job(lambda settings, args: ui(settings, args.host, args.port), __doc__, add_arguments=add_arguments)
