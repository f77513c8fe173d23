"""Sampling for video (jobs/sample.py): continue real val windows in latent space, and show that
the actions steer what the prior generates.

For `sample.windows` val windows (spread over the val split), the VQ-VAE encodes each window; the
prior is given the codes of the first `sample.given_frames` frames and the window's actions and
generates the codes of the rest (ancestral sampling, raster order over time, row, column); the
decoder turns them into frames. The same runs with the actions shuffled between the windows
(each window gets the next one's), and the PSNR of the generated frames against the real ones
is logged for both: with true actions it must be clearly higher if the prior uses them, so the
window-by-window gap is logged too, with its standard error and the fraction of windows where
the true actions did better (each window's PSNR averaged over `sample.draws` continuations, so
the gap is the prior's, not one draw's luck). A
counterfactual continues the first window under two constant action sequences.

Files, at `<workdir>/samples/samples-<prior version>`:
- `.gif` / `.mp4`: a row per window: real | generated with its actions | generated with shuffled actions
- `.png`: the first windows frame by frame: generated (the given frames are the reconstruction
  of their codes) above real
- `-counterfactual.png` / `.gif`: real, then generated with the true actions, then under
  "always <action a>" and "always <action b>" (the two actions most frequent in the windows)
"""
from __future__ import annotations

import os

import time

import numpy as np
import torch

from pipeline import progress
from pipeline.errors import UserError
from pipeline.formats import cond_specs
from pipeline.formats.reader import SkipCounter, eval_batches, shard_urls
from pipeline.media import write_gif, write_picture
from pipeline.modalities.video.layout import ACTIONS
from pipeline.modalities.video.pictures import animate, strip, write_clips
from pipeline.modalities.video.windows import video_pixels


def window_psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Each window's mean over its frames of the frame's PSNR, (N,); a, b (N, 3, T, H, W) in
    [-0.5, 0.5] (a is clamped to that range first, as its pixels would be)."""
    mse = (a.float().clamp(-0.5, 0.5) - b.float()).square().mean(dim=(1, 3, 4)).clamp(min=1e-12)
    return (10 * torch.log10(1.0 / mse)).mean(dim=1)


def paired_gap(true: torch.Tensor, shuffled: torch.Tensor) -> dict:
    """How much closer the continuations with the true actions come to the real frames than the
    same windows' continuations with shuffled actions, window by window (per-window PSNRs, dB):
    the mean gap, its standard error (so "clearly higher" is a number: a gap of several standard
    errors is not the sampling noise of a few windows) and the fraction of windows where the
    true actions did better."""
    gap = (true - shuffled).double()
    n = len(gap)
    stderr = gap.std(unbiased=True).item() / n ** 0.5 if n > 1 else float("nan")
    return {"sample_psnr_action_gap": gap.mean().item(), "sample_psnr_action_gap_stderr": stderr,
            "sample_true_actions_better_fraction": (gap > 0).double().mean().item()}


def _val_windows(modality, shards_dir: str, count: int):
    """`count` val windows spread over the split (x, cond, keys)."""
    _, urls = shard_urls(shards_dir, "val")
    skips = SkipCounter(f"the val shards of {shards_dir}")
    items = []
    for batch in eval_batches(urls, 64, 0, 1, modality, skips):
        batch = batch.to("cpu")  # pixels as floats
        items += [(batch.x[i], {k: v[i] for k, v in batch.cond.items()}, batch.keys[i]) for i in range(len(batch))]
        if len(items) >= 64 * count:
            break
    if len(items) < count:
        raise UserError(f"{shards_dir}: the val split has {len(items)} windows; sample.windows={count}")
    picked = [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]
    x = torch.stack([x for x, _, _ in picked])
    cond = {k: torch.stack([c[k] for _, c, _ in picked]) for k in picked[0][1]}
    return x, cond, [key for _, _, key in picked]


def continue_windows(modality, prior, vqvae, meta: dict, data, s, shards_dir: str, device,
                     stem: str) -> tuple[list[str], dict]:
    """The files and scores of the module's doc: `s` is the sample section, `meta` the prior's
    config.json, `shards_dir` where the val windows are read."""
    frames = data.frames
    per_step = frames // meta["latent_shape"][0]  # input frames per latent time step
    if s.given_frames % per_step or not 0 < s.given_frames < frames:  # before any work
        raise UserError(f"sample.given_frames={s.given_frames} must be a multiple of {per_step} (frames per latent "
                        f"step) below data.frames={frames}")
    x, cond, _ = _val_windows(modality, shards_dir, s.windows)
    n = len(x)
    with torch.no_grad():
        codes = vqvae.encode(x.to(device)).cpu()
    given = codes[:, : s.given_frames // per_step]
    runs = {"true": cond}  # name -> conditioning of n windows
    has_actions = ACTIONS in cond
    if has_actions:
        runs["shuffled"] = {**cond, ACTIONS: cond[ACTIONS].roll(1, 0)}
        counts = torch.bincount(cond[ACTIONS].flatten(), minlength=2)
        a, b = counts.argsort(descending=True)[:2].tolist()
        first = {k: v[:1] for k, v in cond.items()}
        for name, action in (("always_a", a), ("always_b", b)):
            acts = first[ACTIONS].clone()
            acts[:, s.given_frames - 1:] = action  # from the action that drives the first generated frame
            runs[name] = {**first, ACTIONS: acts}
    names = list(runs)
    cond_all = {k: torch.cat([runs[r][k] for r in names]) for k in cond}
    sizes = [len(next(iter(runs[r].values()))) if runs[r] else n for r in names]
    given_all = torch.cat([given[:size] for size in sizes])
    generator = torch.Generator().manual_seed(s.seed)
    bounds = np.cumsum([0, *sizes])
    later = slice(s.given_frames, None)
    scores: dict[str, list[torch.Tensor]] = {"true": [], "shuffled": []}  # per draw, each window's PSNR
    seconds = 0.0
    for draw in range(s.draws):  # the files show the first draw; the scores average every draw's
        start = time.perf_counter()
        drawn = prior.sample({k: v.to(device) for k, v in cond_all.items()} or None, shape=tuple(codes.shape[1:]),
                             temperature=s.temperature, generator=generator, num_samples=len(given_all),
                             given=given_all.to(device), track=progress.track)
        seconds += time.perf_counter() - start
        with torch.no_grad():
            out = vqvae.decode_indices(drawn.to(device)).float().cpu()
        runs_out = {r: out[bounds[i]:bounds[i + 1]] for i, r in enumerate(names)}
        if draw == 0:
            made = runs_out
        for r in scores if has_actions else ("true",):
            scores[r].append(window_psnr(runs_out[r][:, :, later], x[:, :, later]))
    with torch.no_grad():
        recon = vqvae.decode_indices(codes.to(device)).float().cpu()
    true = torch.stack(scores["true"]).mean(0)
    metrics = {"sample_psnr_true_actions" if has_actions else "sample_psnr": true.mean().item(),
               "sample_psnr_reconstruction": window_psnr(recon[:, :, later], x[:, :, later]).mean().item(),
               "sample_seconds_per_window": seconds / (len(given_all) * s.draws), "windows": float(n)}
    if has_actions:
        shuffled = torch.stack(scores["shuffled"]).mean(0)
        metrics["sample_psnr_shuffled_actions"] = shuffled.mean().item()
        metrics.update(paired_gap(true, shuffled))

    real = [video_pixels(v) for v in x]
    rows = [[real[i], video_pixels(made["true"][i])] + ([video_pixels(made["shuffled"][i])] if has_actions else [])
            for i in range(n)]
    # the strip: the first two windows, generated above real
    stripped = [video_pixels(made["true"][i]) if j == 0 else real[i] for i in range(min(2, n)) for j in (0, 1)]
    paths = write_clips(rows, stem, data.display_fps, stripped)
    if has_actions:
        counter = [real[0], video_pixels(made["true"][0]), video_pixels(made["always_a"][0]),
                   video_pixels(made["always_b"][0])]
        paths.append(write_picture(strip(counter), f"{stem}-counterfactual.png"))
        paths.append(write_gif(animate([counter]), f"{stem}-counterfactual.gif", data.display_fps))
        vocabulary = cond_specs(meta.get("cond"))[ACTIONS].names or tuple(map(str, range(max(a, b) + 1)))
        print(f"sample {data.name}: counterfactual rows: real, true actions, always {vocabulary[a]!r}, "
              f"always {vocabulary[b]!r} -> {os.path.basename(stem)}-counterfactual.png beside the samples", flush=True)
    return paths, metrics
