"""Sample: ancestral samples from the prior champion, decoded by the VQ-VAE it was trained on.

    python jobs/sample.py --config configs/demo.yaml [--set sample.per_class=4 --set sample.temperature=0.9]

`sample.per_class` code arrays per class (per value of the prior's class-like conditioning: an
image class, a speaker; `sample.per_class` in all when there is none) are drawn in one batched
call (raster order, the paper's section 4.2), decoded with the VQ-VAE, and written by the
modality (`write`, a group per class) as `<workdir>/samples/samples-<prior version>.*`, also
logged to an MLflow run. A prior whose codes came from another VQ-VAE version than the decoder's
is refused: its codes would index a different codebook. jobs/sample.py then writes the report
page of the prior's lineage (`sample_and_report`), as jobs/pipeline.py does after every stage.
"""
from __future__ import annotations

import os
import time

from pipeline.config import Settings
from pipeline.errors import UserError
from pipeline.modalities import CondSpec


def prior_cond(meta: dict) -> dict[str, CondSpec]:
    """The conditioning a registered prior takes, from its config.json."""
    if "cond" in meta:
        return {k: CondSpec.from_json(v) for k, v in meta["cond"].items()}
    # priors registered before 2026-11-26: class ids only, under the model's cond_key
    config = meta["config"]
    size = int(config.get("num_classes", 0))
    return {config.get("cond_key", "labels"): CondSpec("class", size)} if size else {}


def sampling_plan(cond: dict[str, CondSpec], per_class: int):
    """-> (cond tensors for one batch, number of samples, group sizes): `per_class` samples of
    every id of the first class-like conditioning, else `per_class` unconditional ones."""
    import torch

    classes = next(((k, spec) for k, spec in cond.items() if spec.kind == "class" and spec.size), None)
    if classes is None:
        return None, per_class, [per_class]
    key, spec = classes
    return {key: torch.arange(spec.size).repeat_interleave(per_class)}, spec.size * per_class, [per_class] * spec.size


def sample(settings: Settings) -> str:
    """Draw, decode and write the samples; -> the main file."""
    path = _sample(settings)[0]
    print(path, flush=True)  # last, alone: the file to open (scripts read it)
    return path


def sample_and_report(settings: Settings) -> str:
    """`sample`, then the report page of the prior's whole lineage (`pipeline.report`), logged on
    the sample run: what jobs/sample.py runs, so a person who ran the stages one by one gets the
    page jobs/pipeline.py writes."""
    from pipeline.report import results_from_registry, write_report

    path, run_id, prior_uri = _sample(settings)
    results = results_from_registry(settings, prior_uri)
    report = write_report(settings, results, run_id=run_id)
    print(f"sample {settings.data.name}: report {report}  (open it in a browser; also on the sample's MLflow run)",
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
    os.makedirs(settings.samples_dir, exist_ok=True)
    stem = os.path.join(settings.samples_dir, f"samples-{prior_info['version']}")
    paths, metrics = settings.modality.draw_samples(settings, prior, vqvae, meta, device, stem)
    seconds = time.perf_counter() - start
    tags = {"stage": "sample", "prior_name": prior_info["name"], "prior_version": prior_info["version"],
            "vqvae_name": vqvae_info["name"], "vqvae_version": vqvae_info["version"]}
    with tracking.start_run(experiment_id, f"sample-{settings.data.name}-v{prior_info['version']}", tags=tags) as run:
        mlflow.log_params({**s.model_dump(exclude_none=True), "prior_uri": prior_uri, "vqvae_uri": vqvae_uri})
        mlflow.log_metrics({"seconds": seconds, **metrics})
        for path in paths:
            mlflow.log_artifact(path, "samples")
    for name, value in metrics.items():
        print(f"sample {settings.data.name}: {name} = {value:.4g}", flush=True)
    print(f"sample {settings.data.name}: {len(paths)} files from {prior_uri} decoded by {vqvae_uri} in "
          f"{seconds:.0f} s under {settings.samples_dir}; MLflow run {run.info.run_id}", flush=True)
    return paths[0], run.info.run_id, prior_uri


def draw_per_class(settings: Settings, prior, vqvae, meta: dict, device, stem: str) -> list[str]:
    """`sample.per_class` code arrays per class (or unconditional ones), drawn in one batch,
    decoded and written by the modality a group per class; -> the files, the main one first."""
    import torch

    s = settings.sample
    shape = meta.get("latent_shape") or meta.get("grid_shape")  # grid_shape: priors before 2026-11-26
    if not shape:  # codes of varying shape (utterances): the modality says how long a sample is
        shape = settings.modality.sample_latent_shape(settings.data, s, vqvae.input_dims_per_code)
    if not shape:
        raise UserError("the prior's codes vary in shape and its config.json gives no latent_shape to sample")
    cond, count, groups = sampling_plan(prior_cond(meta), s.per_class)
    generator = torch.Generator().manual_seed(s.seed)
    codes = prior.sample(cond, shape=tuple(shape), temperature=s.temperature, generator=generator,
                         num_samples=count)
    torch.manual_seed(s.seed)  # decoders that sample (WaveNet) draw from the global generator
    with torch.no_grad():
        cond_dev = None if cond is None else {k: v.to(device) for k, v in cond.items()}
        x = vqvae.decode_indices(codes.to(device), cond_dev, **settings.modality.decoder_options(s)).float().cpu()
    bounds = [sum(groups[:i]) for i in range(len(groups) + 1)]
    rows = [list(x[bounds[i]:bounds[i + 1]]) for i in range(len(groups))]
    return settings.modality.write(rows, stem, settings.data)
