"""Sample: ancestral samples from the prior champion, decoded by the VQ-VAE it was trained on.

    python jobs/sample.py --config configs/demo.yaml [--set sample.per_class=4 --set sample.temperature=0.9]

`sample.per_class` code arrays per class (per value of the prior's class-like conditioning: an
image class, a speaker; `sample.per_class` in all when there is none) are drawn in one batched
call (raster order, the paper's section 4.2), decoded with the VQ-VAE, and written by the
modality (`write`, a group per class) as `<workdir>/samples/samples-<prior version>.*`, also
logged to an MLflow run. A prior whose codes came from another VQ-VAE version than the decoder's
is refused: its codes would index a different codebook. jobs/sample.py then writes the report
page of the prior's lineage, as jobs/pipeline.py does after every stage.
"""
from __future__ import annotations

import os
import time

from pipeline import fs as fsx
from pipeline.config import Settings
from pipeline.errors import UserError


def sample(settings: Settings, report: bool = True) -> str:
    """Draw, decode and write the samples; then (`report`) the report page of the prior's whole
    lineage (`pipeline.stages.report`), logged on the sample run: what jobs/sample.py runs, so a
    person who ran the stages one by one gets the page jobs/pipeline.py writes (which writes it
    itself, with the pipeline's results). -> the main file."""
    path, run_id, prior_uri = _sample(settings)
    if report:
        from pipeline.stages.report import results_from_registry, write_report

        page = write_report(settings, results_from_registry(settings, prior_uri), run_id=run_id)
        print(f"sample {settings.data.name}: report {page}  (open it in a browser; also on the sample's MLflow run)",
              flush=True)
    print(path, flush=True)  # last, alone: the file to open (scripts read it)
    return path


def _sample(settings: Settings) -> tuple[str, str, str]:
    """-> (the main file, the sample's MLflow run id, the prior's models:/ URI)."""
    import mlflow
    import torch

    from pipeline import tracking

    experiment_id = tracking.setup_tracking(settings.tracking_uri, settings.experiment)
    prior_info = tracking.resolve(settings.sample.prior or settings.prior_champion)
    vqvae_info = tracking.resolve(settings.vqvae_champion)
    prior_uri = f"models:/{prior_info['name']}/{prior_info['version']}"
    vqvae_uri = f"models:/{vqvae_info['name']}/{vqvae_info['version']}"
    meta = tracking.model_metadata(prior_uri)
    wanted = (meta.get("vqvae_name"), str(meta.get("vqvae_version")), meta.get("vqvae_run_id"))
    # The run id too: a version number of another MLflow store may name another model.
    if wanted != (vqvae_info["name"], vqvae_info["version"], vqvae_info["run_id"]):
        raise UserError(f"{prior_uri} was trained on the codes of {wanted[0]} v{wanted[1]}, but the decoder is "
                        f"{vqvae_uri}: train a prior on its codes (jobs/dump_codes.py, jobs/stage2.py) "
                        f"or set sample.prior")
    start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    prior = tracking.load_prior(prior_uri, device)
    vqvae = tracking.load_vqvae(vqvae_uri, device)
    s = settings.sample
    tags = {"stage": "sample", "prior_name": prior_info["name"], "prior_version": prior_info["version"],
            "vqvae_name": vqvae_info["name"], "vqvae_version": vqvae_info["version"]}
    with fsx.staged(settings.samples_dir) as folder:  # on an object store: uploaded at the end
        stem = os.path.join(folder, f"samples-{prior_info['version']}")
        paths, metrics = settings.modality.draw_samples(prior, vqvae, meta, settings.data, s, settings.shards_dir,
                                                        device, stem)
        seconds = time.perf_counter() - start
        with tracking.start_run(experiment_id, f"sample-{settings.data.name}-v{prior_info['version']}",
                                tags=tags) as run:
            mlflow.log_params({**s.model_dump(exclude_none=True), "prior_uri": prior_uri, "vqvae_uri": vqvae_uri})
            mlflow.log_metrics({"seconds": seconds, **metrics})
            for path in paths:
                mlflow.log_artifact(path, "samples")
    paths = [fsx.join(settings.samples_dir, os.path.relpath(p, folder)) for p in paths]
    for name, value in metrics.items():
        print(f"sample {settings.data.name}: {name} = {value:.4g}", flush=True)
    print(f"sample {settings.data.name}: {len(paths)} files from {prior_uri} decoded by {vqvae_uri} in "
          f"{seconds:.0f} s under {settings.samples_dir}; MLflow run {run.info.run_id}", flush=True)
    return paths[0], run.info.run_id, prior_uri
