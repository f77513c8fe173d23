"""One self-contained HTML page per pipeline run: what a person would rather look at (or listen
to) than read in logs.

`<workdir>/report-<data.name>.html`, also an artifact of the pipeline's MLflow run (the MLflow UI
shows HTML artifacts). jobs/sample.py writes the same page for a person who ran the stages one by
one, from what the registry records of the prior's lineage (`results_from_registry`). Every
picture, sound and video is embedded (data: URIs), so the page opens anywhere, from the file or
from MLflow. At the top the lineage: shards -> VQ-VAE version -> codes
-> prior version; then the metrics beside the uniform prior's and the paper's reference numbers
(with the sample job's own scores of its samples, e.g. video's PSNR under true and shuffled
actions), the reconstructions of the last validation, the codebook usage, and the samples.
"""
from __future__ import annotations

import base64
import html
import math
import os
import re
import tempfile
import time

from pipeline.config import Settings
from pipeline import fs as fsx
from pipeline.fs import write_atomic

MEDIA = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".wav": "audio/wav",
         ".mp4": "video/mp4"}
# Per file stem, the one view a page shows of a clip: its video when there is one.
PREFERENCE = (".mp4", ".gif", ".png", ".jpg")


def _uri(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    with open(path, "rb") as f:
        return f"data:{MEDIA[ext]};base64,{base64.b64encode(f.read()).decode()}"


def _media(path: str, caption: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    name = html.escape(caption)
    if ext == ".wav":
        body = f'<audio controls preload="none" src="{_uri(path)}"></audio>'
    elif ext == ".mp4":
        body = f'<video controls loop muted playsinline src="{_uri(path)}"></video>'
    else:
        body = f'<img alt="{name}" src="{_uri(path)}"{_enlarged(path)}>'
    return f"<figure>{body}<figcaption>{name}</figcaption></figure>"


def _enlarged(path: str) -> str:
    """A width that shows a small picture (16x16 crops, 32x32 frames) at a whole multiple of its
    pixels, up to 480 px wide."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            width = img.size[0]
    except OSError:
        return ""
    scale = max(1, min(4, 480 // max(width, 1)))
    return f' width="{width * scale}"' if scale > 1 else ""


def pick_views(paths: list[str]) -> list[str]:
    """One view per picture or clip (mp4 over gif over png of the same stem; a png beside its own
    WAVs is a spectrogram and stays), then every sound."""
    by_stem: dict[str, list[str]] = {}
    for p in paths:
        stem, ext = os.path.splitext(p)
        if ext.lower() in MEDIA:
            by_stem.setdefault(stem, []).append(p)
    views = []
    for stem, group in sorted(by_stem.items()):
        exts = {os.path.splitext(p)[1].lower(): p for p in group}
        for ext in PREFERENCE:
            if ext in exts:
                views.append(exts[ext])
                break
        views += sorted(p for p in group if p.lower().endswith(".wav"))
    return views


def _artifacts(client, run_id: str, path: str, into: str, last_step: bool = False) -> list[str]:
    """The run's artifact `path` (a file, or a folder's files; with `last_step` only those of its
    last validation step, `step_0000600.*` and friends), downloaded from any store, a server's
    too; [] when there are none."""
    try:
        listed = [a.path for a in client.list_artifacts(run_id, path) if not a.is_dir]
    except Exception:  # noqa: BLE001 - a run without them shows none
        return []
    if not listed:
        listed = [path]  # a single file lists as nothing under its own name
    if last_step:
        steps = {int(m.group(1)) for p in listed for m in [re.search(r"step_(\d+)", os.path.basename(p))] if m}
        if steps:
            listed = [p for p in listed if f"step_{max(steps):07d}" in os.path.basename(p)]
    local = []
    for name in listed:
        try:
            local.append(client.download_artifacts(run_id, name, into))
        except Exception:  # noqa: BLE001
            continue
    return sorted(p for p in local if os.path.isfile(p))


def _fmt(value) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def metric_rows(settings: Settings, results: dict) -> list[tuple[str, str, object, object, str]]:
    """(stage, metric, ours, the uniform prior's, the paper's with its setting) for the table."""
    references = settings.modality.paper_references
    rows = []
    stage1 = results.get("stage1") or {}
    for key, value in sorted((stage1.get("metrics") or {}).items()):
        if key != "step":
            rows.append(("stage 1 (VQ-VAE)", key, value, None, references.get(key, "")))
    for key, value in sorted((results.get("evaluation_metrics") or {}).items()):
        rows.append(("stage 1 (evaluation)", key, value, None, references.get(key, "")))
    stage2 = results.get("stage2") or {}
    metrics = stage2.get("metrics") or {}
    codes = results.get("codes") or {}
    size = codes.get("codebook_size")
    for key, value in sorted(metrics.items()):
        if key in ("step", "uniform_bits_per_code"):  # that one is the uniform column itself
            continue
        uniform = None
        if key.endswith("bits_per_code") and size:
            uniform = math.log2(size)  # a prior that has learnt nothing: log2 K bits per code
        elif key == "val_bits_per_dim":
            uniform = (stage1.get("metrics") or {}).get("val_bits_per_dim")  # stage 1 scores with a uniform prior
        rows.append(("stage 2 (prior)", key, value, uniform, references.get(key, "")))
    for key, value in sorted((results.get("sample_metrics") or {}).items()):
        rows.append(("sample", key, value, None, references.get(key, "")))
    return rows


def sample_metrics(client, settings: Settings, stage2: dict) -> dict:
    """The metrics of the newest finished sample run of this prior version (the modality's own
    scores of its samples, e.g. video's PSNR under true and shuffled actions), without the
    job's wall time; {} when none ran."""
    experiment = client.get_experiment_by_name(settings.experiment)
    if experiment is None or not stage2.get("name"):
        return {}
    runs = client.search_runs(
        [experiment.experiment_id],
        f"tags.stage = 'sample' and tags.prior_name = '{stage2['name']}' and "
        f"tags.prior_version = '{stage2['version']}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return {k: v for k, v in runs[0].data.metrics.items() if k != "seconds"} if runs else {}


def _registered(client, info: dict) -> dict:
    """{name, version, run_id, metrics} of a registered model (`tracking.resolve`'s info), as a
    training stage returns it: its run's validation and key metrics at the step of the registered
    checkpoint (a prior's best validation, not its last), else their last values."""
    from pipeline import tracking

    run = client.get_run(info["run_id"])
    keys = [k for k in run.data.metrics
            if k.startswith("val_") or k in info["tags"].get("key_metrics", "").split(",")]
    history = {k: {m.step: m.value for m in client.get_metric_history(info["run_id"], k)} for k in keys}
    # the version's metric.<name> tag holds the registered value, which names its step
    [(metric, value)] = [(tag.removeprefix(tracking.METRIC_TAG_PREFIX), v) for tag, v in info["tags"].items()
                         if tag.startswith(tracking.METRIC_TAG_PREFIX)] or [(None, None)]
    step = next((st for st, v in sorted(history.get(metric, {}).items()) if repr(float(v)) == value), None)
    metrics = {k: h[step] if step in h else run.data.metrics[k] for k, h in history.items()}
    if step is not None:
        metrics["step"] = step
    return {"name": info["name"], "version": info["version"], "run_id": info["run_id"], "metrics": metrics}


def results_from_registry(settings: Settings, prior_uri: str) -> dict:
    """What jobs/pipeline.py hands `write_report`, found from a registered prior's lineage (prior
    -> its VQ-VAE version and codes -> the shards), for a person who ran the stages one by one."""
    from mlflow import MlflowClient

    from pipeline import tracking
    from pipeline.formats import codes as codeset
    from pipeline.formats.shards import load_manifest

    client = MlflowClient(settings.tracking_uri)
    prior = tracking.resolve(prior_uri)
    tags = prior["tags"]
    results = {"stage2": _registered(client, prior)}
    if tags.get("vqvae_name") and tags.get("vqvae_version"):
        vqvae = tracking.resolve(f"models:/{tags['vqvae_name']}/{tags['vqvae_version']}")
        results["stage1"] = _registered(client, vqvae)
    if tags.get("codes"):
        results["codes"] = codeset.load_manifest(tags["codes"]) or {}
    results["shard"] = load_manifest(settings.shards_dir) or {}
    return results


def write_report(settings: Settings, results: dict, run_id: str | None = None) -> str:
    """Write the page, log it on the pipeline's MLflow run (or `run_id`), return its path."""
    from mlflow import MlflowClient

    client = MlflowClient(settings.tracking_uri)
    stage1, stage2 = results.get("stage1") or {}, results.get("stage2") or {}
    codes, shards = results.get("codes") or {}, results.get("shard") or {}
    name = settings.data.name
    parts = [f"<h1>{html.escape(name)}: VQ-VAE pipeline report</h1>",
             f"<p class=when>{time.strftime('%Y-%m-%d %H:%M')} &middot; modality {html.escape(settings.data.modality)}"
             f" &middot; MLflow {html.escape(settings.tracking_uri)}</p>"]

    lineage = []
    if shards:
        counts = ", ".join(f"{s} {v['samples']}" for s, v in shards.get("splits", {}).items())
        lineage.append(f"shards <code>{html.escape(settings.shards_dir)}</code> ({counts})")
    if stage1:
        lineage.append(f"VQ-VAE <code>models:/{stage1['name']}/{stage1['version']}</code>")
    if codes:
        rows = ", ".join(f"{s} {n}" for s, n in (codes.get("rows") or {}).items())
        lineage.append(f"codes K={codes.get('codebook_size')} ({rows} rows)")
    if stage2:
        lineage.append(f"prior <code>models:/{stage2['name']}/{stage2['version']}</code>")
    parts.append("<p class=lineage>" + " &rarr; ".join(lineage) + "</p>")

    if stage1 and "evaluation_metrics" not in results:  # the modality's scores logged after training
        try:
            logged = client.get_run(stage1["run_id"]).data.metrics
        except Exception:  # noqa: BLE001 - a run the store no longer has: no scores to show
            logged = {}
        wanted = (*settings.modality.evaluation_metrics, *settings.modality.evaluation_extra)
        results = {**results, "evaluation_metrics": {k: logged[k] for k in wanted if k in logged}}
    if stage2 and "sample_metrics" not in results:
        results = {**results, "sample_metrics": sample_metrics(client, settings, stage2)}
    rows = metric_rows(settings, results)
    if rows:
        body = "".join(f"<tr><td>{html.escape(stage)}</td><td>{html.escape(key)}</td><td>{_fmt(ours)}</td>"
                       f"<td>{_fmt(uniform)}</td><td>{html.escape(paper)}</td></tr>"
                       for stage, key, ours, uniform, paper in rows)
        parts.append("<h2>Metrics</h2><table><tr><th>stage</th><th>metric</th><th>ours</th>"
                     "<th>uniform prior</th><th>paper (van den Oord et al. 2017)</th></tr>" + body + "</table>")

    with tempfile.TemporaryDirectory() as tmp:
        if stage1:
            reconstructions = _artifacts(client, stage1["run_id"], "reconstructions", tmp, last_step=True)
            if reconstructions:
                parts.append("<h2>Reconstructions (last validation)</h2><p>Originals, then their "
                             "reconstructions.</p><div class=row>"
                             + "".join(_media(p, os.path.basename(p)) for p in pick_views(reconstructions)) + "</div>")
            usage = _artifacts(client, stage1["run_id"], "codebook_usage.png", tmp)
            if usage:
                parts.append("<h2>Codebook usage</h2><div class=row>" + _media(usage[0], "codes by use") + "</div>")
        if stage2:
            drawn = _samples(settings.samples_dir, stage2["version"], tmp)
            if drawn:
                parts.append("<h2>Samples from the prior</h2><div class=row>"
                             + "".join(_media(p, os.path.basename(p)) for p in pick_views(drawn)) + "</div>")
        page = _PAGE.format(title=html.escape(f"{name} report"), body="\n".join(parts))
        local = os.path.join(tmp, f"report-{name}.html")
        write_atomic(local, page.encode())
        path = fsx.join(settings.workdir, f"report-{name}.html")
        fs, where = fsx.filesystem(path)
        write_atomic(where, page.encode(), fs)
        run_id = run_id or results.get("pipeline_run_id")
        if run_id:
            client.log_artifact(run_id, local)
    return path


def _samples(folder: str, version, into: str) -> list[str]:
    """The files the sample job drew from prior `version` (samples-<version>.* and -*), as local
    paths: downloaded into `into` when `folder` is on an object store."""
    pattern = re.compile(rf"samples-{re.escape(str(version))}[.-]")
    found = [n for n in fsx.names(folder) if pattern.match(n)]
    if not fsx.is_remote(folder):
        return [os.path.join(folder, n) for n in found]
    fs, base = fsx.filesystem(folder)
    local = []
    for n in found:
        local.append(os.path.join(into, n))
        with open(local[-1], "wb") as f:
            f.write(fsx.read_bytes(fs, f"{base}/{n}"))
    return local


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; padding: 0 1em; color: #222; }}
h1 {{ font-size: 1.5em; }} h2 {{ font-size: 1.15em; margin-top: 1.6em; }}
.when, figcaption {{ color: #666; font-size: 0.85em; }}
.lineage {{ background: #f4f4f4; padding: 0.6em 0.8em; border-radius: 4px; }}
table {{ border-collapse: collapse; }} td, th {{ border-bottom: 1px solid #ddd; padding: 0.3em 0.8em; text-align: left; }}
.row {{ display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }}
figure {{ margin: 0; }} img, video {{ max-width: 100%; image-rendering: pixelated; }}
</style></head>
<body>
{body}
</body></html>
"""
