"""The MLflow UI over a config's store (jobs/ui.py, `make ui`): the address of the latest pipeline
run's page, then `mlflow ui` in the foreground, quiet, on 127.0.0.1 by default."""
from __future__ import annotations

import os
import sys

from pipeline.config import Settings
from pipeline.errors import UserError


def ui(settings: Settings, host: str = "127.0.0.1", port: int = 5000) -> None:
    """Print where the latest pipeline run is, then become `mlflow ui` on host:port."""
    uri = settings.tracking_uri
    if not uri.startswith("sqlite:"):
        raise UserError(f"mlflow.tracking_uri {uri} is a server: open it in a browser (it serves its own UI)")
    from mlflow import MlflowClient

    from pipeline import tracking

    db = tracking.sqlite_path(uri)
    if db is not None and not db.is_file():  # one line now, not a UI that shows nothing
        raise UserError(f"no MLflow store at {db}: run the pipeline first (make demo)")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(settings.experiment)
    address = f"http://{host}:{port}"
    print(f"MLflow UI of {uri} at {address} (Ctrl-C stops it)", flush=True)
    if experiment is not None:
        runs = client.search_runs([experiment.experiment_id], filter_string="tags.stage = 'pipeline'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        if runs:
            run = runs[0].info
            print(f"  latest pipeline run: {address}/#/experiments/{experiment.experiment_id}/runs/{run.run_id}"
                  f"  (its report: Artifacts tab, report-{settings.data.name}.html)", flush=True)
    # MLflow 3's server also runs a job queue (huey consumers: GenAI evaluation jobs, trace
    # roll-ups) in processes of their own; a UI over a pipeline's store needs none of it.
    # MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true in the environment turns it back on.
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    quiet = []
    if not os.environ.get("PIPELINE_VERBOSE"):
        # uvicorn's INFO lines (start-up, every worker) and the deprecation warning each of its
        # workers prints for MLflow's own import of starlette's WSGI middleware: --verbose has them
        quiet = ["--uvicorn-opts", "--log-level warning"]
        os.environ.setdefault("PYTHONWARNINGS", "ignore:starlette.middleware.wsgi is deprecated")
    os.execv(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                              "--host", host, "--port", str(port), *quiet])
