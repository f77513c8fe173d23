"""Convert: a sample's codes decoded under other conditioning (speech: another speaker's voice),
and the modality's evaluation of a trained model, logged on its MLflow run.

    python jobs/convert.py --config configs/demo-speech.yaml --source p901_003 --speaker p905
    python jobs/convert.py --config configs/demo-speech.yaml --source my.wav --speaker p905 --seconds 2
    python jobs/convert.py --config configs/demo-speech.yaml --evaluate

The model is `codes.model`, else the VQ-VAE champion. What a conversion and an evaluation are is
the modality's (`Modality.convert`, `Modality.evaluate`; speech: pipeline/modalities/speech/
convert.py); this stage resolves and loads the model and keeps the MLflow record: a run
`convert-<source>-to-<target>` per conversion with its files, and the evaluation's scores and
files on the model's own run, tagged `evaluated_with` the settings they were made with, so that a
later evaluation with the same settings reuses them.
"""
from __future__ import annotations

import math
import os
import tempfile

from pipeline import fs as fsx
from pipeline.config import Settings
from pipeline.errors import UserError

EVALUATED_WITH = "evaluated_with"  # the tag holding what the run's evaluation scores were made with


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def evaluate(settings: Settings, model_uri: str, force: bool = False) -> dict:
    """The modality's scores of the model at `model_uri`, logged with their files on its MLflow
    run; a run that holds scores made with the same settings is not scored again unless `force`.
    {} for a modality without an evaluation."""
    modality = settings.modality
    made_with = modality.evaluation_settings(settings.sample)
    if made_with is None:
        return {}
    import mlflow
    from mlflow import MlflowClient

    from pipeline import tracking

    tracking.setup_tracking(settings.tracking_uri, settings.experiment)
    info = tracking.resolve(model_uri)
    run = MlflowClient().get_run(info["run_id"])
    held = {k: run.data.metrics[k] for k in modality.evaluation_metrics if k in run.data.metrics}
    if len(held) == len(modality.evaluation_metrics) and run.data.tags.get(EVALUATED_WITH) == made_with and not force:
        return held
    device = _device()
    model = tracking.load_vqvae(f"models:/{info['name']}/{info['version']}", device)
    with tempfile.TemporaryDirectory(prefix="evaluate-") as folder:
        metrics, files = modality.evaluate(model, settings.shards_dir, settings.data, settings.sample, device, folder)
        with mlflow.start_run(run_id=info["run_id"]) as run:
            mlflow.log_metrics(metrics)
            mlflow.set_tag(EVALUATED_WITH, made_with)
            for path in files:
                mlflow.log_artifact(path, modality.evaluation_folder)
            where = run.info.artifact_uri.removeprefix("file://")
    if files and "://" not in where:
        print(f"evaluation of {info['name']} v{info['version']}: {where}/{modality.evaluation_folder}/"
              f"{os.path.basename(files[0])} (and {len(files) - 1} files beside it)", flush=True)
    return metrics


MEDIA_SUFFIXES = (".wav", ".flac", ".ogg", ".png", ".jpg", ".jpeg", ".mp4")  # what a folder source holds


def expand_sources(sources: list[str]) -> list[str]:
    """Each source as given, a folder as the media files directly in it (sorted)."""
    out = []
    for source in sources:
        if os.path.isdir(source):
            files = sorted(os.path.join(source, n) for n in os.listdir(source)
                           if n.lower().endswith(MEDIA_SUFFIXES) and os.path.isfile(os.path.join(source, n)))
            if not files:
                raise UserError(f"--source {source}: a folder with no {'/'.join(MEDIA_SUFFIXES)} files in it")
            out += files
        else:
            out.append(source)
    return out


def convert(settings: Settings, sources: list[str] | str, target: str, out: str | None = None,
            seconds: float | None = None) -> list[str]:
    """Decode the codes of each of `sources` (val samples' keys, input files, folders of them, or
    "val": every val sample) under `target` (a name or id of the modality's `conversion_cond`: a
    speaker), write the files under `out` (default `<workdir>/conversions`) and log them in one
    MLflow run. The model loads once. `seconds`: only each source's first seconds. -> the main
    file of each."""
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):  # before any work
        raise UserError(f"--seconds {seconds}: give a positive number of seconds")
    modality = settings.modality
    if modality.conversion_cond is None:
        raise UserError(f"data.modality {settings.data.modality!r} has no conversion: its decoder takes no "
                        f"conditioning to swap (speech converts voices)")
    sources = expand_sources([sources] if isinstance(sources, str) else list(sources))
    import mlflow

    from pipeline import tracking

    experiment_id = tracking.setup_tracking(settings.tracking_uri, settings.experiment)
    device = _device()
    loaded: dict = {}

    def load_model():  # once the modality has checked the request
        if "model" not in loaded:
            loaded.update(tracking.resolve(settings.codes.model or settings.vqvae_champion))
            loaded["model"] = tracking.load_vqvae(f"models:/{loaded['name']}/{loaded['version']}", device)
        return loaded["model"]

    folder = out or fsx.join(settings.workdir, "conversions")
    with fsx.staged(folder) as local:  # on an object store: written here, uploaded at the end
        made = modality.convert(load_model, settings.shards_dir, sources, target, local, settings.data,
                                settings.sample, device, seconds)
        tags = {"stage": "convert", "vqvae_name": loaded["name"], "vqvae_version": loaded["version"]}
        run_name = f"convert-{made[0].name}" if len(made) == 1 else f"convert-{len(made)}-to-{made[0].target}"
        with tracking.start_run(experiment_id, run_name, tags=tags):
            mlflow.log_params({"source": sources[0] if len(sources) == 1 else f"{len(sources)} sources",
                               modality.conversion_cond: made[0].target,
                               "seconds": "all" if seconds is None else seconds,
                               "model": f"models:/{loaded['name']}/{loaded['version']}"})
            mlflow.log_metrics({"seconds": sum(m.seconds for m in made), "conversions": len(made)})
            if len(sources) > 1:
                mlflow.log_text("\n".join(sources) + "\n", "conversion/sources.txt")
            for m in made:
                for path in m.files:
                    mlflow.log_artifact(path, "conversion")
    for m in made:
        if local != folder:  # where the files are now, not the staging folder they were written in
            m.files = [fsx.join(folder, os.path.relpath(p, local)) for p in m.files]
            m.summary = m.summary.replace(local, folder)
        print(f"convert: {m.summary}", flush=True)
    if len(made) > 1:
        print(f"convert: {len(made)} conversions to {made[0].target} in {sum(m.seconds for m in made):.1f} s "
              f"of decoding -> {folder}", flush=True)
    return [m.files[0] for m in made]


def run(settings: Settings, sources: list[str] | None, target: str | None, out: str | None = None,
        seconds: float | None = None, scores: bool = False) -> None:
    """jobs/convert.py: conversions of one or many sources, or (`scores`) the evaluation of the
    model, printed."""
    if scores:
        if settings.modality.evaluation_settings(settings.sample) is None:
            raise UserError(f"data.modality {settings.data.modality!r} has no evaluation beyond validation's")
        metrics = evaluate(settings, settings.codes.model or settings.vqvae_champion, force=True)
        print("convert: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())), flush=True)
        return
    if not sources or not target:
        raise UserError("give --source and --speaker (or --evaluate)")
    convert(settings, sources, target, out, seconds=seconds)
