"""Stage 5: ancestral samples from the prior champion, decoded by the VQ-VAE it was trained on.

    python jobs/sample.py --config configs/demo.yaml [--set sample.per_class=4 --set sample.temperature=0.9]

`sample.per_class` code grids per class are drawn in one batched call (raster order, the paper's
section 4.2), decoded with the VQ-VAE champion, and written as one PNG, a row per class, to
`<workdir>/samples/samples-<prior version>.png`, also logged to an MLflow run. A prior whose
codes came from another VQ-VAE version than the decoder's is refused: its codes would index a
different codebook.
"""
from __future__ import annotations

import os
import time

from pipeline.codes import default_vqvae_uri
from pipeline.config import Settings
from pipeline.errors import UserError
from pipeline.modalities import image as modality


def default_prior_uri(settings: Settings) -> str:
    return f"models:/prior-{settings.data.name}@champion"


def sample(settings: Settings) -> str:
    import mlflow
    import torch

    from pipeline import tracking

    experiment_id = tracking.setup_tracking(settings.tracking_uri, settings.experiment)
    prior_info = tracking.resolve(settings.sample.prior or default_prior_uri(settings))
    vqvae_info = tracking.resolve(default_vqvae_uri(settings))
    prior_uri = f"models:/{prior_info['name']}/{prior_info['version']}"
    vqvae_uri = f"models:/{vqvae_info['name']}/{vqvae_info['version']}"
    meta = tracking.model_metadata(prior_uri)
    wanted = (meta.get("vqvae_name"), str(meta.get("vqvae_version")))
    if wanted != (vqvae_info["name"], vqvae_info["version"]):
        raise UserError(f"{prior_uri} was trained on the codes of {wanted[0]} v{wanted[1]}, but the decoder is "
                        f"{vqvae_uri}: train a prior on its codes (jobs/dump_codes.py, jobs/stage2.py) "
                        f"or set sample.prior")

    start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    prior = tracking.load_prior(prior_uri, device)
    vqvae = tracking.load_vqvae(vqvae_uri, device)
    s = settings.sample
    num_classes = max(prior.num_classes, 1)
    labels = torch.arange(num_classes).repeat_interleave(s.per_class) if prior.conditional else None
    generator = torch.Generator().manual_seed(s.seed)
    codes = prior.sample(labels, shape=tuple(meta["grid_shape"]), temperature=s.temperature,
                         generator=generator, num_samples=num_classes * s.per_class)
    with torch.no_grad():
        pixels = modality.to_pixels(vqvae.decode_indices(codes.to(device)))
    rows = [pixels[c * s.per_class:(c + 1) * s.per_class] for c in range(num_classes)]

    os.makedirs(settings.samples_dir, exist_ok=True)
    path = os.path.join(settings.samples_dir, f"samples-{prior_info['version']}.png")
    tmp = f"{path}.tmp.png"
    modality.grid(rows).save(tmp)
    os.replace(tmp, path)
    seconds = time.perf_counter() - start
    tags = {"stage": "sample", "prior_name": prior_info["name"], "prior_version": prior_info["version"],
            "vqvae_name": vqvae_info["name"], "vqvae_version": vqvae_info["version"]}
    with tracking.start_run(experiment_id, f"sample-{settings.data.name}-v{prior_info['version']}", tags=tags):
        mlflow.log_params({"per_class": s.per_class, "temperature": s.temperature, "seed": s.seed,
                           "prior_uri": prior_uri, "vqvae_uri": vqvae_uri})
        mlflow.log_metric("seconds", seconds)
        mlflow.log_artifact(path, "samples")
    print(path, flush=True)
    return path
