"""Registry lookups behind jobs/models.py: the registered models, their versions, aliases, key
metrics and lineage, and moving an alias by hand.

    python jobs/models.py list [NAME] [--json]
    python jobs/models.py show models:/vqvae-demo@champion   (or models:/NAME/VERSION, /latest, NAME)
    python jobs/models.py promote vqvae-demo 3 --alias champion

Lookups return plain dicts (what `--json` prints); `format_*` turn them into text. A version's
metrics are its run's metrics at the step where the value it was registered on was logged:
stage 2 registers its best validated checkpoint, not its last, so the run's last values would
describe another model.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlparse

from pipeline import tracking
from pipeline.errors import UserError

# Version tags that say where a model came from: stage 1's shards, stage 2's VQ-VAE and codes.
LINEAGE_TAGS = ("dataset", "shards", "shards_manifest_sha256", "vqvae_name", "vqvae_version", "vqvae_run_id",
                "codes", "ray_run")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")


# --------------------------------------------------------------------------------------------
# The store


def store_uri(tracking_uri: str | None = None, config: str | None = None) -> str:
    """--tracking-uri, else the config's store (its mlflow.tracking_uri, MLFLOW_TRACKING_URI or the
    sqlite file in its workdir), else MLFLOW_TRACKING_URI: never a guessed default, which would
    silently show an empty registry."""
    if tracking_uri:
        return tracking_uri
    if config:
        from pipeline.config import load_settings

        return load_settings(config).tracking_uri
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise UserError("no MLflow store given: pass --tracking-uri URI or --config PATH, "
                        "or set MLFLOW_TRACKING_URI")
    return uri


def open_store(uri: str) -> None:
    """Point MLflow at an existing store. A lookup never creates one: MLflow would make an empty
    database at a mistyped path and report no models instead of the typo."""
    scheme = uri.split(":", 1)[0].lower() if _SCHEME.match(uri) else ""
    if scheme in ("http", "https"):
        tracking.check_server(uri)
    elif scheme.startswith("sqlite"):
        db = tracking.sqlite_path(uri)
        if db is not None and not db.is_file():
            raise UserError(f"no MLflow store at {uri}: {db} does not exist")
    elif scheme in ("", "file"):
        folder = Path(urlparse(uri).path if scheme else uri).expanduser()
        if not folder.is_dir():
            raise UserError(f"no MLflow store at {uri}: {folder} is not a folder")
    tracking.set_tracking_uri(uri)


@contextlib.contextmanager
def _mlflow_errors(what: str) -> Iterator[None]:
    """An MLflow error becomes a one-line UserError naming what was looked up."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as e:
        if tracking.is_not_found(e):
            raise UserError(f"{what} does not exist") from None
        raise UserError(f"{what}: {e.message.splitlines()[0]}") from None


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def _all_pages(search: Callable, **kwargs) -> list:
    """Every result of a paged MLflow search (search_registered_models stops at 100 per page)."""
    items, token = [], None
    while True:
        page = search(page_token=token, **kwargs)
        items.extend(page)
        token = page.token
        if not token:
            return items


# --------------------------------------------------------------------------------------------
# Lookups: plain data


def _number(text: Any) -> float | None:
    """A metric value for JSON: None for a non-number or non-finite one (strict JSON has no NaN)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _registered_metric(tags: dict[str, str]) -> dict[str, float | None]:
    """The `metric.<name>` tags register_model sets: what the champion rule compares."""
    prefix = tracking.METRIC_TAG_PREFIX
    return {k[len(prefix):]: _number(v) for k, v in tags.items() if k.startswith(prefix)}


def _history(client, run_id: str, key: str) -> list:
    """A metric's history; empty when the run is gone (deleted and garbage-collected)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_metric_history(run_id, key)
    except MlflowException as e:
        if tracking.is_not_found(e):
            return []
        raise


def _registered_step(client, run_id: str, registered: dict[str, float | None]) -> int | None:
    """The last step at which the run logged the value its version was registered with."""
    for key, value in registered.items():
        if value is None:
            continue
        steps = [m.step for m in _history(client, run_id, key) if math.isclose(m.value, value, rel_tol=1e-9)]
        if steps:
            return max(steps)
    return None


def _metrics_at(client, run_id: str, step: int, keys: tuple[str, ...]) -> dict[str, float | None]:
    values = {}
    for key in keys:
        at_step = sorted((m.timestamp, m.value) for m in _history(client, run_id, key) if m.step == step)
        if at_step:
            values[key] = _number(at_step[-1][1])  # a resumed run may log a step twice: the later
    return values


def _created(timestamp_ms: int | None) -> str | None:
    if timestamp_ms is None:
        return None
    return datetime.fromtimestamp(timestamp_ms / 1000, tz=timezone.utc).astimezone().isoformat(timespec="seconds")


def _describe(client, mv, aliases: dict[str, list[str]], keys: tuple[str, ...] | None = None) -> dict:
    """One version as plain data; `keys`: run metrics to read at its registered step (default:
    the key metrics of the metric it was registered on)."""
    tags = dict(mv.tags or {})
    registered = _registered_metric(tags)
    step = _registered_step(client, mv.run_id, registered) if mv.run_id else None
    if keys is None:  # the run metrics shown beside the registered one
        keys = tuple(filter(None, tracking.upgrade_tags(tags).get("key_metrics", "").split(",")))
    metrics = _metrics_at(client, mv.run_id, step, keys) if step is not None else {}
    return {
        "name": mv.name,
        "version": str(mv.version),
        "aliases": aliases.get(str(mv.version), []),
        "created": _created(mv.creation_timestamp),
        "registered_metric": registered,
        "step": step,
        "metrics": metrics,
        "lineage": {k: tags[k] for k in LINEAGE_TAGS if k in tags},
        "run_id": mv.run_id,
        "source": mv.source,
        "status": mv.status,
        "tags": tags,
    }


def _aliases_by_version(aliases: dict[str, Any]) -> dict[str, list[str]]:
    """{alias: version} of a registered model as {version: [aliases]}. Versions from a search
    carry no aliases (SQL store), the registered model does."""
    by_version: dict[str, list[str]] = {}
    for alias, version in sorted((aliases or {}).items()):
        by_version.setdefault(str(version), []).append(alias)
    return by_version


def _model_aliases(client, name: str) -> dict[str, list[str]]:
    with _mlflow_errors(f"registered model {name!r}"):
        return _aliases_by_version(client.get_registered_model(name).aliases)


def _versions_of(client, name: str) -> list:
    with _mlflow_errors(f"registered model {name!r}"):
        versions = _all_pages(client.search_model_versions, filter_string=f"name = '{name}'")
    return sorted(versions, key=lambda mv: int(mv.version))


def list_versions(name: str | None = None) -> list[dict]:
    """Every registered version (of `name`, or of every model), by model name then version."""
    client = _client()
    if name is not None:
        aliases = {name: _model_aliases(client, name)}  # an unknown name: UserError, not an empty list
        versions = _versions_of(client, name)
    else:
        with _mlflow_errors("registered models"):
            aliases = {rm.name: _aliases_by_version(rm.aliases)
                       for rm in _all_pages(client.search_registered_models)}
            versions = _all_pages(client.search_model_versions)
    versions = sorted(versions, key=lambda mv: (mv.name, int(mv.version)))
    return [_describe(client, mv, aliases.get(mv.name, {})) for mv in versions]


def _last_metrics(client, run_id: str | None) -> dict[str, float | None]:
    """The run's last logged value of every metric; empty when the run is gone."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return {}
    try:
        return {k: _number(v) for k, v in sorted(client.get_run(run_id).data.metrics.items())}
    except MlflowException as e:
        if tracking.is_not_found(e):
            return {}
        raise


def show(target: str) -> list[dict]:
    """Everything about one version (a models:/ URI) or every version of a model (a bare name):
    its list row with all run metrics at its registered step, the run's last metrics, and the
    config.json logged with the weights."""
    client = _client()
    if target.startswith("models:"):
        info = tracking.resolve(target)  # one-line UserError for an unknown name, alias or version
        name, versions = info["name"], [client.get_model_version(info["name"], info["version"])]
    elif "/" in target or "@" in target:
        raise UserError(f"{target}: expected models:/<name>@<alias>, models:/<name>/<version> or a model name")
    else:
        name, versions = target, None
    aliases = _model_aliases(client, name)  # an unknown name: UserError
    rows = []
    for mv in versions if versions is not None else _versions_of(client, name):
        last = _last_metrics(client, mv.run_id)
        rows.append({**_describe(client, mv, aliases, keys=tuple(last)), "run_metrics": last,
                     "config": tracking.model_metadata(f"models:/{mv.name}/{mv.version}")})
    return rows


def promote(name: str, version: str, alias: str = "champion") -> dict:
    """Move `alias` of `name` to `version` by hand. Later registrations compare their metric
    with the new holder's, so this also resets the bar the champion rule measures against."""
    if not re.fullmatch(r"\d+|latest", version):
        raise UserError(f"promote {name}: version must be a number or 'latest', got {version!r}")
    new = tracking.resolve(f"models:/{name}/{version}")  # one-line UserError when either is unknown
    client = _client()
    old = _model_aliases(client, name)
    old_version = next((v for v, names in old.items() if alias in names), None)
    old_tags = client.get_model_version(name, old_version).tags if old_version else {}
    with _mlflow_errors(f"alias {alias!r} of {name}"):
        client.set_registered_model_alias(name, alias, new["version"])
    return {"name": name, "alias": alias, "old": old_version, "new": new["version"],
            "old_metric": _registered_metric(old_tags), "new_metric": _registered_metric(new["tags"])}


# --------------------------------------------------------------------------------------------
# Text


def _fmt_value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _fmt_metrics(metrics: dict[str, float | None]) -> str:
    return " ".join(f"{k}={_fmt_value(v)}" for k, v in metrics.items())


def _fmt_lineage(lineage: dict[str, str]) -> str:
    parts = []
    if "vqvae_name" in lineage:
        parts.append(f"codes of {lineage['vqvae_name']} v{lineage.get('vqvae_version', '?')}")
    if "shards" in lineage:
        digest = lineage.get("shards_manifest_sha256", "")[:12]
        parts.append(f"shards {lineage['shards']}" + (f" (sha256 {digest})" if digest else ""))
    return "; ".join(parts) or "-"


def _fmt_created(created: str | None) -> str:
    return created[:16].replace("T", " ") if created else "-"


def format_list(rows: list[dict]) -> str:
    """A table, one row per version; columns sized to their contents."""
    if not rows:
        return "no registered model versions"
    table = [("MODEL", "VERSION", "ALIASES", "METRICS", "LINEAGE", "CREATED")]
    table += [(r["name"], r["version"], ",".join(r["aliases"]) or "-",
               _fmt_metrics({**r["registered_metric"], **r["metrics"]}) or "-", _fmt_lineage(r["lineage"]),
               _fmt_created(r["created"])) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table)


def _fmt_mapping(title: str, mapping: dict[str, Any]) -> list[str]:
    if not mapping:
        return [f"  {title}: -"]
    width = max(len(k) for k in mapping)
    return [f"  {title}:"] + [f"    {k.ljust(width)}  {v if isinstance(v, str) else _fmt_value(v)}"
                              for k, v in sorted(mapping.items())]


def format_show(rows: list[dict]) -> str:
    if not rows:
        return "no registered model versions"
    blocks = []
    for r in rows:
        at_step = "metrics at the registered step" + (f" {r['step']}" if r["step"] is not None else " (not found)")
        lines = [f"{r['name']} v{r['version']}" + (f"  [{', '.join(r['aliases'])}]" if r["aliases"] else ""),
                 f"  created: {_fmt_created(r['created'])}", f"  status: {r['status']}",
                 f"  run: {r['run_id']}", f"  source: {r['source']}",
                 f"  registered on: {_fmt_metrics(r['registered_metric']) or '-'}",
                 f"  lineage: {_fmt_lineage(r['lineage'])}",
                 *_fmt_mapping("tags", r["tags"]), *_fmt_mapping(at_step, r["metrics"]),
                 *(["  run metrics, last logged: the same"] if r["run_metrics"] == r["metrics"]
                   else _fmt_mapping("run metrics, last logged", r["run_metrics"])),
                 "  config.json:", *("    " + line for line in json.dumps(r["config"], indent=2,
                                                                        sort_keys=True).splitlines())]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def format_promote(result: dict) -> str:
    def held(version: str | None, metric: dict) -> str:
        if version is None:
            return "(none)"
        return f"v{version}" + (f" ({_fmt_metrics(metric)})" if metric else "")

    where = f"{result['name']}@{result['alias']}"
    if result["old"] == result["new"]:
        return f"{where}: already {held(result['new'], result['new_metric'])}"
    return f"{where}: {held(result['old'], result['old_metric'])} -> {held(result['new'], result['new_metric'])}"


COMMANDS: dict[str, tuple[Callable[..., Any], Callable[[Any], str]]] = {
    "list": (list_versions, format_list),
    "show": (show, format_show),
    "promote": (promote, format_promote),
}


def run(command: str, args: dict, *, tracking_uri: str | None, config: str | None, as_json: bool) -> None:
    """jobs/models.py's one call: find the store, look up, print text or JSON. A UserError is one
    line on stderr and exit code 2, as for every job (pipeline/cli.py)."""
    lookup, fmt = COMMANDS[command]
    try:
        open_store(store_uri(tracking_uri, config))
        result = lookup(**args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    print(json.dumps(result, indent=2) if as_json else fmt(result), flush=True)
