"""MLflow: tracking setup, runs, model files, the registry, aliases and lookups.

A model is logged as two plain files in its run's artifacts, never as a pickle or an MLmodel:

    <run artifacts>/<artifact_path>/weights.safetensors   the state_dict (safetensors)
    <run artifacts>/<artifact_path>/config.json           {"class", "config", **metadata}

Loading rebuilds the module from this project's code (a fixed registry of allowed classes) and
reads the weights with safetensors, so loading a model never runs code from the store.

Registered models are versions whose `source` is that artifact folder; each version carries the
tag `metric.<name>` and the alias `champion` moves to a version only when it beats the holder.

`mlflow` is imported inside the functions: `import pipeline.tracking` stays cheap.
"""

from __future__ import annotations

import contextlib

import json
import math
import os
import re
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.errors import UserError

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
METRIC_TAG_PREFIX = "metric."
HEALTH_TIMEOUT_S = 5.0

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+|latest))$")


def _model_classes() -> dict[str, type[nn.Module]]:
    """The only classes load_model builds; the name in config.json is looked up here, nothing
    is imported by a name read from a file."""
    from pipeline.models.pixelcnn import GatedPixelCNN
    from pipeline.models.vqvae import VQVAE

    return {"VQVAE": VQVAE, "GatedPixelCNN": GatedPixelCNN}


# --------------------------------------------------------------------------------------------
# Setup and runs


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
            db.parent.mkdir(parents=True, exist_ok=True)
            # Without this, new experiments store artifacts in ./mlruns of whatever directory the
            # process runs in (Ray workers chdir into their session folder): keep them by the db.
            artifact_location = (db.parent / "mlartifacts").as_uri()
    set_tracking_uri(tracking_uri)

    client = MlflowClient()
    try:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            try:
                return client.create_experiment(experiment, artifact_location=artifact_location)
            except MlflowException:  # created by a concurrent job in between
                exp = client.get_experiment_by_name(experiment)
                if exp is None:
                    raise
    except MlflowException as e:
        raise UserError(f"MLflow at {tracking_uri}: cannot open experiment {experiment!r}: {e.message}") from None
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


# --------------------------------------------------------------------------------------------
# Logging and loading model files


def _unwrap(model: nn.Module) -> nn.Module:
    """The user's module under DDP / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def save_model_files(model: nn.Module, folder: str | Path, metadata: dict | None = None) -> Path:
    """Write weights.safetensors and config.json of `model` into `folder`."""
    from safetensors.torch import save_model

    model = _unwrap(model)
    name = type(model).__name__
    if name not in _model_classes():
        raise ValueError(f"cannot log a {name}: only {sorted(_model_classes())} can be loaded back")
    metadata = dict(metadata or {})
    clash = {"class", "config"} & metadata.keys()
    if clash:
        raise ValueError(f"metadata may not set {sorted(clash)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # save_model (not save_file) drops aliases of shared tensors and makes tensors contiguous.
    save_model(model, str(folder / WEIGHTS_FILE), metadata={"class": name})
    config = {"class": name, "config": dict(model.config), **metadata}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    return folder


def log_model(model: nn.Module, artifact_path: str = "model", metadata: dict | None = None) -> str:
    """Log the model's files under `artifact_path` of the active run; returns their artifact URI."""
    import mlflow

    if mlflow.active_run() is None:
        raise RuntimeError("log_model needs an active MLflow run (use start_run)")
    with tempfile.TemporaryDirectory(prefix="model-") as tmp:
        save_model_files(model, tmp, metadata)
        mlflow.log_artifacts(tmp, artifact_path=artifact_path)
    return mlflow.get_artifact_uri(artifact_path)


def _parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    m = _MODELS_URI.match(uri)
    if not m:
        raise UserError(f"{uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
    return m["name"], m["alias"], m["version"]


def _download(uri: str, files: tuple[str, ...], dst: str) -> Path:
    """Fetch `files` of the model at `uri` (models:/, runs:/, any artifact URI or a local folder)
    into `dst`; returns the folder holding them."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", uri):  # no scheme: a local folder
        local = Path(uri).expanduser()
        if not local.is_dir():
            raise UserError(f"model {uri}: no such folder")
        missing = [f for f in files if not (local / f).is_file()]
        if missing:
            raise UserError(f"model {uri}: missing {', '.join(missing)}")
        return local
    base = uri.rstrip("/")
    if uri.startswith("models:"):
        info = resolve(uri)  # UserError when the name/alias/version does not exist
        base = f"models:/{info['name']}/{info['version']}"  # pinned: the alias may move meanwhile
    for f in files:
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=f"{base}/{f}", dst_path=dst)
        except (MlflowException, OSError) as e:
            msg = getattr(e, "message", None) or str(e)
            raise UserError(f"model {uri}: cannot download {f}: {msg.splitlines()[0]}") from None
    return Path(dst)


def model_metadata(uri: str) -> dict:
    """config.json of the model at `uri`: class, config and the lineage logged with it."""
    with tempfile.TemporaryDirectory(prefix="model-") as tmp:
        folder = _download(uri, (CONFIG_FILE,), tmp)
        return _read_config(uri, folder)


def _read_config(uri: str, folder: Path) -> dict:
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"model {uri}: unreadable {CONFIG_FILE}: {e}") from None
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise UserError(f"model {uri}: {CONFIG_FILE} has no 'config' object")
    return config


def load_model(uri: str, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model at `uri` from its config.json and safetensors weights, in eval mode."""
    from safetensors.torch import load_model as load_weights

    with tempfile.TemporaryDirectory(prefix="model-") as tmp:
        folder = _download(uri, (CONFIG_FILE, WEIGHTS_FILE), tmp)
        meta = _read_config(uri, folder)
        cls = _model_classes().get(meta.get("class"))
        if cls is None:
            raise UserError(f"model {uri}: unknown class {meta.get('class')!r}")
        try:
            model = cls.from_config(meta["config"])
            load_weights(model, str(folder / WEIGHTS_FILE), strict=True)  # copies into params
        except (TypeError, ValueError, RuntimeError) as e:
            raise UserError(f"model {uri}: weights do not fit its config: {str(e).splitlines()[0]}") from None
    return model.to(device).eval()


def _load_checked(uri: str, class_name: str, device) -> nn.Module:
    model = load_model(uri, device)
    if type(model).__name__ != class_name:
        raise UserError(f"model {uri} is a {type(model).__name__}, expected a {class_name}")
    return model


def load_vqvae(uri: str, device: str | torch.device = "cpu") -> nn.Module:
    return _load_checked(uri, "VQVAE", device)


def load_prior(uri: str, device: str | torch.device = "cpu") -> nn.Module:
    return _load_checked(uri, "GatedPixelCNN", device)


# --------------------------------------------------------------------------------------------
# Registry


def is_not_found(e: Exception) -> bool:
    """An MlflowException for a model, version, run or experiment that does not exist."""
    return getattr(e, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def resolve(uri: str) -> dict:
    """{"name", "version", "run_id", "tags", "aliases", "source"} of a models:/ URI."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, alias, version = _parse_models_uri(uri)
    client = MlflowClient()
    try:
        rm = client.get_registered_model(name)
        if alias is not None:
            # get_model_version_by_alias reports a missing alias as INVALID_PARAMETER_VALUE
            # (SQL store), not RESOURCE_DOES_NOT_EXIST: read the alias table instead.
            version = (rm.aliases or {}).get(alias)
            if version is None:
                raise UserError(f"model {uri} does not exist (no version of {name!r} has alias {alias!r})")
        elif version == "latest":
            versions = client.search_model_versions(f"name = '{name}'")
            if not versions:
                raise UserError(f"model {uri} does not exist (no versions of {name!r})")
            version = max(int(v.version) for v in versions)
        mv = client.get_model_version(name, str(version))
    except MlflowException as e:
        if is_not_found(e):
            raise UserError(f"model {uri} does not exist") from None
        raise UserError(f"model {uri}: {e.message.splitlines()[0]}") from None
    aliases = [a for a, v in (rm.aliases or {}).items() if str(v) == str(mv.version)]
    return {
        "name": mv.name,
        "version": str(mv.version),
        "run_id": mv.run_id,
        "tags": dict(mv.tags or {}),
        "aliases": sorted(aliases),
        "source": mv.source,
    }


def set_alias(name: str, alias: str, version: str | int) -> None:
    from mlflow import MlflowClient

    MlflowClient().set_registered_model_alias(name, alias, str(version))


def register_model(
    run_id: str,
    artifact_path: str,
    name: str,
    metric: str,
    value: float,
    tags: dict | None = None,
    alias: str = "champion",
    lower_is_better: bool = True,
) -> tuple[str, bool]:
    """Register `runs:/<run_id>/<artifact_path>` as a new version of `name`; move `alias` to it
    when `value` beats the metric tag of the version holding the alias (or none holds it).
    A non-finite value is never promoted. Ties keep the current holder. Returns (version, promoted).

    Check-then-set is not atomic: two jobs registering at the same moment may both promote.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    # A plain artifact folder (no MLmodel): a version whose source is the run's artifact URI.
    # mlflow.register_model("runs:/...") only takes folders with an MLmodel file, else it looks
    # for a LoggedModel and fails with "Unable to find a logged_model": create the version here.
    source = client.get_run(run_id).info.artifact_uri.rstrip("/") + "/" + artifact_path.strip("/")
    try:
        client.get_registered_model(name)
    except MlflowException as e:
        if not is_not_found(e):
            raise
        try:
            client.create_registered_model(name)
        except MlflowException as e2:  # created concurrently
            if getattr(e2, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise
    value = float(value)
    version_tags = {f"{METRIC_TAG_PREFIX}{metric}": repr(value)}
    version_tags.update({str(k): str(v) for k, v in (tags or {}).items()})
    mv = client.create_model_version(name, source=source, run_id=run_id, tags=version_tags)
    version = str(mv.version)

    promoted = False
    if math.isfinite(value):
        holder = (client.get_registered_model(name).aliases or {}).get(alias)
        best = math.nan  # a holder without a comparable metric tag loses to the new version
        if holder is not None:
            try:
                best = float(client.get_model_version(name, str(holder)).tags.get(f"{METRIC_TAG_PREFIX}{metric}", "nan"))
            except ValueError:
                pass
        if holder is None or not math.isfinite(best):
            promoted = True
        else:
            promoted = value < best if lower_is_better else value > best
    if promoted:
        client.set_registered_model_alias(name, alias, version)
    return version, promoted
