"""Serve a config's MLflow store in the MLflow UI on 127.0.0.1 (what `make ui` runs).

    python jobs/ui.py --config configs/demo.yaml [--port 5000]

Prints the address of the latest pipeline run's page (its report is among its artifacts) and
runs `mlflow ui` in the foreground until Ctrl-C. A store on an MLflow server needs no UI of ours:
open the server's address.
"""
import sys
from pathlib import Path

# The repository on the path, in place of this folder: Ray gives its workers the job script's
# folder, where jobs/pipeline.py would shadow the package (`ray job submit --working-dir .` too).
_jobs = Path(__file__).resolve().parent
sys.path[:] = [str(_jobs.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _jobs]

from pipeline.cli import run_job  # noqa: E402
from pipeline.stages.ui import ui  # noqa: E402


def add_arguments(parser) -> None:
    parser.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")


if __name__ == "__main__":
    run_job(lambda settings, args: ui(settings, args.host, args.port), __doc__, add_arguments=add_arguments)
