"""MLflow tracking: which store, which experiment, runs and their nesting.

`mlflow` is imported inside the functions: importing this module stays cheap.
"""
from __future__ import annotations

import contextlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pipeline.errors import UserError

HEALTH_TIMEOUT_S = 5.0



def check_server(uri: str) -> None:
    """Fail in seconds, not after MLflow's minutes of HTTP retries, when the server is down."""
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT_S) as resp:
            status = resp.status
    except urllib.error.HTTPError as e:
        status = e.code
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise UserError(f"MLflow tracking server unreachable at {uri}: {reason}") from None
    if status != 200:
        raise UserError(f"MLflow tracking server unreachable at {uri}: GET /health gave HTTP {status}")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///...` URI (relative or absolute), None for :memory:."""
    rest = uri[len("sqlite://"):].split("?", 1)[0]
    if not rest.startswith("/") or rest in ("/", "/:memory:"):
        return None
    return Path(rest[1:]).expanduser().resolve()  # sqlite:///rel -> rel; sqlite:////abs -> /abs


def set_tracking_uri(uri: str) -> None:
    """`mlflow.set_tracking_uri`, leaving the environment as it was: MLflow also exports
    MLFLOW_TRACKING_URI, which Settings reads first, so a second workdir in the same process
    would otherwise log into the first one's store."""
    import mlflow

    exported = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if exported is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = exported


def setup_tracking(tracking_uri: str, experiment: str) -> str:
    """Point MLflow at `tracking_uri` and return the id of `experiment` (created if missing).

    Deliberately no `mlflow.set_experiment()`: it exports MLFLOW_EXPERIMENT_ID, which Ray
    workers inherit and which silently overrides the experiment they ask for. Callers pass the
    returned id to `start_run(experiment_id, ...)` instead.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    scheme = tracking_uri.split(":", 1)[0].lower()
    artifact_location = None
    if scheme in ("http", "https"):
        check_server(tracking_uri)
    elif scheme.startswith("sqlite"):
        db = sqlite_path(tracking_uri)
        if db is not None:
            try:
                db.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UserError(f"MLflow store {tracking_uri}: cannot create {db.parent}: {e.strerror}") from None
            # Without this, new experiments store artifacts in ./mlruns of whatever directory the
            # process runs in (Ray workers chdir into their session folder): keep them by the db.
            artifact_location = (db.parent / "mlartifacts").as_uri()
    set_tracking_uri(tracking_uri)

    try:
        client = MlflowClient()
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            try:
                # The MLflow UI opens an experiment of this kind in its model-training view
                # (runs, metrics, artifacts), not the GenAI view it infers for untagged ones.
                return client.create_experiment(experiment, artifact_location=artifact_location,
                                                tags={"mlflow.experimentKind": "custom_model_development"})
            except MlflowException:  # created by a concurrent job in between
                exp = client.get_experiment_by_name(experiment)
                if exp is None:
                    raise
    except MlflowException as e:
        first = (e.message.splitlines() or [""])[0].split(". See ")[0]
        raise UserError(f"MLflow at {tracking_uri}: cannot open experiment {experiment!r}: {first}") from None
    if exp.lifecycle_stage == "deleted":
        raise UserError(
            f"MLflow experiment {experiment!r} (id {exp.experiment_id}) is deleted: restore it "
            "(`mlflow experiments restore`) or choose another mlflow.experiment"
        )
    return exp.experiment_id


_parent_run_id: str | None = None  # set by `children_of` while jobs/pipeline.py runs the stages


@contextlib.contextmanager
def children_of(run_id: str):
    """Every stage run started inside this block is a child of `run_id` (the pipeline's run)."""
    global _parent_run_id
    previous, _parent_run_id = _parent_run_id, run_id
    try:
        yield
    finally:
        _parent_run_id = previous


def parent_tag() -> dict[str, str]:
    """The nesting tag for runs created with MlflowClient.create_run inside `children_of`."""
    return {"mlflow.parentRunId": _parent_run_id} if _parent_run_id else {}


def start_run(
    experiment_id: str,
    run_name: str,
    parent_run_id: str | None = None,
    tags: dict[str, Any] | None = None,
):
    """`mlflow.start_run` in an explicit experiment; with `parent_run_id` the run is a child
    (MLflow sets the tag `mlflow.parentRunId`). Use as `with start_run(...) as run:`."""
    import mlflow

    tags = {k: str(v) for k, v in (tags or {}).items()}
    parent_run_id = parent_run_id or _parent_run_id
    if parent_run_id:
        return mlflow.start_run(
            experiment_id=experiment_id, run_name=run_name, parent_run_id=parent_run_id,
            nested=True, tags=tags,
        )  # fmt: skip
    return mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags)


