"""Stage 2's per-worker loop: the Gated PixelCNN prior over code grids, trained with DDP.

The code datasets are small (one int8/int16 grid per sample), so each worker reads the parquet
files with pyarrow and keeps them in memory; rank r takes rows r, r+world, ... and draws batches
with replacement from a seeded RNG. The loop runs a fixed number of steps, so every rank does the
same number of forward/backward passes and DDP stays in step.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.codes import read_codes
from pipeline.config import Settings
from pipeline.models.pixelcnn import GatedPixelCNN
from pipeline.runtime import keep_freed_memory
from pipeline.train.common import (RankZeroMlflow, all_reduce_sum, device_and_autocast,
                                   gaussian_bits_per_dim, load_checkpoint, report)

REPORT_KEYS = ("val_nll_bits_per_code", "val_bits_per_dim", "uniform_bits_per_code")


def build_prior(settings: Settings, num_codes: int, num_classes: int) -> GatedPixelCNN:
    s2 = settings.stage2
    return GatedPixelCNN(num_codes=num_codes, num_classes=num_classes, hidden=s2.hidden,
                         num_layers=s2.num_layers, kernel_size=s2.kernel_size)


@torch.no_grad()
def validate(model: GatedPixelCNN, codes: torch.Tensor, labels: torch.Tensor, batch_size: int,
             device, info: dict) -> dict:
    """NLL over this rank's val rows, summed over ranks; bits per dim as in the paper's bound:
    prior bits for the latents plus the decoder's Gaussian term, both per input dimension."""
    model.eval()
    nats, positions = 0.0, 0
    for i in range(0, len(codes), batch_size):
        c, y = codes[i:i + batch_size].to(device), labels[i:i + batch_size].to(device)
        nats += F.cross_entropy(model(c, y).float(), c, reduction="sum").item()
        positions += c.numel()
    totals = all_reduce_sum([nats, positions], device)
    model.train()
    bits_per_code = (totals[0] / totals[1]).item() / math.log(2)
    latents = math.prod(info["grid_shape"])
    return {
        "val_nll_bits_per_code": bits_per_code,
        "val_bits_per_dim": bits_per_code * latents / info["input_dims"] + gaussian_bits_per_dim(info["vqvae_val_mse"]),
        "uniform_bits_per_code": math.log2(info["num_codes"]),
    }


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    keep_freed_memory()  # no page faults on every step's activations (pipeline/runtime.py)
    settings = Settings.model_validate(config["settings"])
    info = config["codes"]
    s2 = settings.stage2
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device, autocast = device_and_autocast()

    train_codes, train_labels, _ = read_codes(info["dir"], "train")
    val_codes, val_labels, _ = read_codes(info["dir"], "val")
    train_codes, train_labels = torch.from_numpy(train_codes[rank::world]), torch.from_numpy(train_labels[rank::world])
    val_codes, val_labels = torch.from_numpy(val_codes[rank::world]), torch.from_numpy(val_labels[rank::world])
    if len(train_codes) == 0:
        raise RuntimeError(f"rank {rank}: no training rows ({info['dir']} has fewer rows than workers)")

    torch.manual_seed(s2.seed)  # same initial weights on every rank
    model = build_prior(settings, info["num_codes"], info["num_classes"]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=s2.lr)
    start = 0
    state = load_checkpoint(device)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
    ddp = ray.train.torch.prepare_model(model)

    mlf = RankZeroMlflow(config["tracking_uri"], config["run_id"], enabled=rank == 0)
    if state is not None:
        mlf.metrics({"resumed_from_step": start}, start)
    # Seeded by step too: a resumed run draws fresh batches rather than replaying the first ones.
    rng = np.random.default_rng([s2.seed, rank, start])
    clock, timed_steps = time.perf_counter(), 0
    for step in range(start + 1, s2.steps + 1):
        idx = torch.from_numpy(rng.integers(0, len(train_codes), s2.batch_size))
        codes, labels = train_codes[idx].to(device), train_labels[idx].to(device)
        with autocast:
            logits = ddp(codes, labels)
        loss = F.cross_entropy(logits.float(), codes) / math.log(2)  # bits per code
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        timed_steps += 1
        val: dict = {}

        final = step == s2.steps
        if step % s2.log_every == 0 or final:
            elapsed = time.perf_counter() - clock
            mlf.metrics({"nll_bits_per_code": loss.item(),
                         "samples_per_s": timed_steps * s2.batch_size * world / max(elapsed, 1e-9)}, step)
            clock, timed_steps = time.perf_counter(), 0
        if step % s2.val_every == 0 or final:
            val = validate(model, val_codes, val_labels, s2.batch_size, device, info)
            mlf.metrics(val, step)
            clock, timed_steps = time.perf_counter(), 0
        checkpoint = (model, optimizer) if step % s2.checkpoint_every == 0 or final else None
        if report(step, rank, val, checkpoint):  # validation steps reach Ray Tune even without a checkpoint
            clock, timed_steps = time.perf_counter(), 0
