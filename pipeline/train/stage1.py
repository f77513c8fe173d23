"""Stage 1's per-worker loop: the VQ-VAE trained with DDP, as Ray Train runs it on every rank.

The loop reads like single-process PyTorch; Ray appears only at the edges (prepare_model,
get_checkpoint, report). Loss (paper eq. 3, MSE decoder): ||x - D(z_q)||^2 + ||sg[z_e] - e||^2
+ beta ||z_e - sg[e]||^2.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time

import torch
import torch.nn.functional as F

from pipeline.config import Settings
from pipeline.data.reader import SkipCounter, eval_batches, shard_urls, train_batches
from pipeline.modalities import image as modality
from pipeline.models.vqvae import VQVAE
from pipeline.runtime import keep_freed_memory
from pipeline.train.common import (RankZeroMlflow, all_reduce_sum, device_and_autocast,
                                   gaussian_bits_per_dim, load_checkpoint, report)

REPORT_KEYS = ("val_mse", "val_psnr", "val_bits_per_dim", "perplexity", "codebook_usage")


def build_model(settings: Settings) -> VQVAE:
    s1 = settings.stage1
    return VQVAE(in_channels=modality.CHANNELS, spatial_dims=modality.SPATIAL_DIMS, hidden=s1.hidden,
                 num_res_blocks=s1.num_res_blocks, num_downsamples=s1.num_downsamples,
                 codebook_size=s1.codebook_size, code_dim=s1.code_dim, beta=s1.beta, ema=s1.ema,
                 decay=s1.decay, dead_code_steps=s1.dead_code_steps)


@torch.no_grad()
def validate(model: VQVAE, urls, settings: Settings, rank: int, world: int, device) -> tuple[dict, tuple]:
    """The paper's metrics over the whole val split, shards divided between ranks, sums all-reduced."""
    model.eval()
    k = model.vq.num_codes
    skips = SkipCounter()
    sq_err, elems, samples, hist = 0.0, 0, 0, torch.zeros(k, device=device, dtype=torch.float64)
    shown: dict[int, tuple] = {}  # one (original, reconstruction) per class, for the picture
    for x, labels in eval_batches(urls, settings.stage1.batch_size, rank, world, modality.SHARD_FIELD,
                             modality.decode, modality.to_tensor, skips):
        x = x.to(device)
        x_recon, vq = model(x)
        sq_err += F.mse_loss(x_recon.float(), x, reduction="sum").item()
        elems += x.numel()
        samples += x.shape[0]
        hist += torch.bincount(vq.indices.flatten(), minlength=k).double()
        for i, label in enumerate(labels.tolist()):
            if len(shown) < 8 and label not in shown:
                shown[label] = (x[i].cpu(), x_recon[i].float().cpu())
    totals = all_reduce_sum([sq_err, elems, samples], device)
    hist = all_reduce_sum(hist, device)
    model.train()
    mse = (totals[0] / totals[1]).item()
    p = hist / hist.sum()
    dims_per_sample = totals[1].item() / totals[2].item()
    latents_per_sample = hist.sum().item() / totals[2].item()
    return {
        "val_mse": mse,
        "val_psnr": 10 * math.log10(1.0 / max(mse, 1e-12)),  # pixels in [0, 1]
        # the paper's bound: decoder NLL + log K per latent (uniform prior, KL = log K), per dim
        "val_bits_per_dim": gaussian_bits_per_dim(mse) + latents_per_sample * math.log2(k) / dims_per_sample,
        "perplexity": math.exp(-(p[p > 0] * p[p > 0].log()).sum().item()),
        "codebook_usage": (hist > 0).double().mean().item(),
    }, (_stack_shown(shown), hist.cpu())


def _stack_shown(shown: dict) -> tuple | None:
    if not shown:
        return None
    pairs = [shown[c] for c in sorted(shown)]
    return torch.stack([a for a, _ in pairs]), torch.stack([b for _, b in pairs])


def _log_pictures(mlf: RankZeroMlflow, step: int, first, hist, final: bool) -> None:
    if mlf.client is None or first is None:
        return
    folder = tempfile.mkdtemp(prefix="stage1-art-")
    x, x_recon = first
    path = os.path.join(folder, f"step_{step:07d}.png")
    # top row: originals; bottom row: their reconstructions
    modality.grid([modality.to_pixels(x), modality.to_pixels(x_recon)]).save(path)
    mlf.artifact(path, "reconstructions")
    if final:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        counts = hist.numpy()
        fig, ax = plt.subplots(figsize=(8, 3))
        ax.bar(range(len(counts)), sorted(counts, reverse=True), width=1.0)
        ax.set(xlabel="code (sorted by use)", ylabel="val latents", title="codebook usage")
        fig.tight_layout()
        fig.savefig(os.path.join(folder, "codebook_usage.png"), dpi=80)
        plt.close(fig)
        with open(os.path.join(folder, "codebook_counts.json"), "w") as f:
            json.dump([int(c) for c in counts], f)
        mlf.artifact(os.path.join(folder, "codebook_usage.png"))
        mlf.artifact(os.path.join(folder, "codebook_counts.json"))


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    keep_freed_memory()  # ~20 % more samples/s on CPU: no page faults on every step's activations
    settings = Settings.model_validate(config["settings"])
    s1 = settings.stage1
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device, autocast = device_and_autocast()
    _, train_urls = shard_urls(settings.shards_dir, "train")
    _, val_urls = shard_urls(settings.shards_dir, "val")

    torch.manual_seed(s1.seed)  # same initial weights and codebook on every rank
    model = build_model(settings).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=s1.lr)
    start = 0
    state = load_checkpoint(device)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
    # The quantizer keeps its buffers identical across ranks itself (all-reduce + broadcast).
    ddp = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"broadcast_buffers": False})

    mlf = RankZeroMlflow(config["tracking_uri"], config["run_id"], enabled=rank == 0)
    if state is not None:
        mlf.metrics({"resumed_from_step": start}, start)
    skips = SkipCounter()
    batches = train_batches(train_urls, s1.batch_size, s1.seed + start, rank, modality.SHARD_FIELD,
                            modality.decode, modality.to_tensor, skips)
    clock, timed_steps = time.perf_counter(), 0
    for step in range(start + 1, s1.steps + 1):
        x, _ = next(batches)
        x = x.to(device, non_blocking=True)
        with autocast:
            x_recon, vq = ddp(x)
        recon_loss = F.mse_loss(x_recon.float(), x)
        loss = recon_loss + vq.loss.float()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        timed_steps += 1
        val: dict = {}

        final = step == s1.steps
        if step % s1.log_every == 0 or final:
            elapsed = time.perf_counter() - clock
            mlf.metrics({"loss": loss.item(), "recon_mse": recon_loss.item(), "vq_loss": vq.loss.item(),
                         "commitment_loss": vq.commitment_loss.item(), "train_perplexity": vq.perplexity.item(),
                         "train_usage": vq.usage.item(), "window_usage": model.vq.window_usage(),
                         "samples_per_s": timed_steps * s1.batch_size * world / max(elapsed, 1e-9),
                         "skipped_samples": skips.count}, step)
            clock, timed_steps = time.perf_counter(), 0
        if step % s1.val_every == 0 or final:
            val, (first, hist) = validate(model, val_urls, settings, rank, world, device)
            mlf.metrics(val, step)
            _log_pictures(mlf, step, first, hist, final)
            clock, timed_steps = time.perf_counter(), 0
        checkpoint = (model, optimizer) if step % s1.checkpoint_every == 0 or final else None
        if report(step, rank, val, checkpoint):  # validation steps reach Ray Tune even without a checkpoint
            clock, timed_steps = time.perf_counter(), 0
