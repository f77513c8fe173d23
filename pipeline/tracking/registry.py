"""The MLflow model registry: resolving models:/ URIs, registering versions, the champion alias.

Registered models are versions whose `source` is a run's model artifact folder (pipeline.tracking
.files); each version carries the tag `metric.<name>` and the alias `champion` moves to a version
only when it beats the holder.
"""
from __future__ import annotations

import math
import re

from pipeline.errors import UserError

METRIC_TAG_PREFIX = "metric."
# A version tag saying what its metric scores when settings can change that between versions of
# one model (Modality.metric_scale). A holder with another one is not comparable: the new version
# takes the alias.
METRIC_SCALE_TAG = "metric_scale"


# What versions registered before 2026-11-26 lack: a VQ-VAE then always had an MSE decoder,
# registered on val_mse, and no version named its key metrics. `upgrade_tags`, the one converter
# of version tags, derives them; `resolve` returns tags through it.
_OLD_KEY_METRICS = {"val_mse": "val_psnr,perplexity,codebook_usage",
                    "val_nll_bits_per_code": "val_bits_per_dim,uniform_bits_per_code"}


def upgrade_tags(tags: dict[str, str]) -> dict[str, str]:
    """A version's tags as this pipeline writes them: `decoder_bits_per_dim` and `key_metrics`
    derived where a version registered before 2026-11-26 lacks them."""
    from pipeline.models.metrics import gaussian_bits_per_dim

    tags = dict(tags)
    mse = tags.get(f"{METRIC_TAG_PREFIX}val_mse")
    if "decoder_bits_per_dim" not in tags and mse is not None:
        try:
            tags["decoder_bits_per_dim"] = repr(gaussian_bits_per_dim(float(mse)))
        except ValueError:
            pass
    if "key_metrics" not in tags:
        registered = [k.removeprefix(METRIC_TAG_PREFIX) for k in tags if k.startswith(METRIC_TAG_PREFIX)]
        keys = [_OLD_KEY_METRICS[m] for m in registered if m in _OLD_KEY_METRICS]
        if keys:
            tags["key_metrics"] = keys[0]
    return tags


def scale_tags(scale: str | None) -> dict:
    """The version tags saying what the metric scores (none when it is always alike)."""
    return {} if scale is None else {METRIC_SCALE_TAG: scale}


_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+|latest))$")


def parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    m = _MODELS_URI.match(uri)
    if not m:
        raise UserError(f"{uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
    return m["name"], m["alias"], m["version"]


def is_not_found(e: Exception) -> bool:
    """An MlflowException for a model, version, run or experiment that does not exist."""
    return getattr(e, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def resolve(uri: str) -> dict:
    """{"name", "version", "run_id", "tags", "aliases", "source"} of a models:/ URI."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_models_uri(uri)
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
        "tags": upgrade_tags(mv.tags or {}),
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
    A non-finite value is never promoted. Ties keep the current holder. When `tags` hold
    METRIC_SCALE_TAG, a holder whose own differs (or is missing) is not comparable and loses to
    the new version. Returns (version, promoted).

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
            held = client.get_model_version(name, str(holder)).tags
            try:
                best = float(held.get(f"{METRIC_TAG_PREFIX}{metric}", "nan"))
            except ValueError:
                pass
            if METRIC_SCALE_TAG in version_tags and held.get(METRIC_SCALE_TAG) != version_tags[METRIC_SCALE_TAG]:
                best = math.nan  # it scored another signal
        if holder is None or not math.isfinite(best):
            promoted = True
        else:
            promoted = value < best if lower_is_better else value > best
    if promoted:
        client.set_registered_model_alias(name, alias, version)
    return version, promoted
