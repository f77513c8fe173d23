"""The per-worker training loop both stages share, as Ray Train runs it on every rank.

The loop reads like single-process PyTorch; Ray appears only at its edges (the rank, the device,
the checkpoint to resume from, prepare_model, report). What differs between stage 1 and stage 2
is a `Task`: the model, the stream of batches, and validation. The model owns its loss: its
forward takes (x, cond, mask) and returns an output with `.loss` and `.logs(model)`.
"""
from __future__ import annotations

import time
from typing import Callable, Iterator

import torch
from torch import nn

from pipeline.config import Settings
from pipeline.modalities import Batch
from pipeline.models import runs_channels_last
from pipeline.progress import StepFile
from pipeline.runtime import keep_freed_memory
from pipeline.stages.train.common import RankZeroMlflow, device_and_autocast, load_checkpoint, report


DIVERGED = "training diverged"  # the driver finds this in the workers' error


class Diverged(RuntimeError):
    """A non-finite loss: training stops before the weights reach a checkpoint."""


class Task:
    """What one stage gives the loop. `section` holds steps, batch_size, lr, seed and the cadence
    (checkpoint_every, val_every, log_every)."""
    section = None
    ddp_kwargs: dict = {}

    def build(self) -> nn.Module:
        raise NotImplementedError

    def batches(self, start: int) -> Iterator[Batch]:
        """Endless training batches of this rank, drawn afresh after a resume at `start`."""
        raise NotImplementedError

    def validate(self, model: nn.Module, step: int, final: bool, mlf: RankZeroMlflow) -> dict[str, float]:
        """Validation metrics, the same on every rank (it is collective); may log artifacts."""
        raise NotImplementedError

    def train_logs(self) -> dict[str, float]:
        """Extra scalars for the training log (e.g. samples skipped so far)."""
        return {}


def train_loop(config: dict, make_task: Callable[[Settings, dict, int, int, torch.device], Task]) -> None:
    """The body of a Ray Train worker: `make_task(settings, config, rank, world, device)`."""
    import ray.train
    import ray.train.torch

    keep_freed_memory()  # ~20 % more samples/s on CPU: no page faults on every step's activations
    settings = Settings.model_validate(config["settings"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device, autocast = device_and_autocast()
    task = make_task(settings, config, rank, world, device)
    s = task.section

    torch.manual_seed(s.seed)  # same initial weights (and codebook) on every rank
    model = task.build().to(device)
    channels_last = runs_channels_last(model, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=s.lr)
    start = 0
    state = load_checkpoint(device)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
    ddp = ray.train.torch.prepare_model(model, parallel_strategy_kwargs=task.ddp_kwargs)
    if s.compile:
        ddp = torch.compile(ddp)

    mlf = RankZeroMlflow(config["tracking_uri"], config["run_id"], enabled=rank == 0)
    if state is not None:
        mlf.resume(start)
    batches = task.batches(start)
    steps_file = StepFile(config.get("progress_path") if rank == 0 else None)  # the driver shows it
    clock, timed_steps = time.perf_counter(), 0
    for step in range(start + 1, s.steps + 1):
        batch = next(batches).to(device)
        x = batch.x.contiguous(memory_format=torch.channels_last) if channels_last else batch.x
        with autocast:
            out = ddp(x, batch.cond, batch.mask)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        timed_steps += 1
        val: dict = {}

        final = step == s.steps
        checkpointing = step % s.checkpoint_every == 0 or final
        # A non-finite loss poisons every later step: stop before it reaches a checkpoint. Checked
        # on log and checkpoint steps only, since reading the loss waits for the device.
        if (step % s.log_every == 0 or checkpointing) and not torch.isfinite(out.loss.detach()).item():
            raise Diverged(f"{DIVERGED}: the loss is {out.loss.item()} at step {step}")
        if step % s.log_every == 0 or final:
            elapsed = time.perf_counter() - clock
            mlf.metrics({**out.logs(model), **task.train_logs(),
                         "samples_per_s": timed_steps * s.batch_size * world / max(elapsed, 1e-9)}, step)
            clock, timed_steps = time.perf_counter(), 0
        if step % s.val_every == 0 or final:
            val = task.validate(model, step, final, mlf)
            mlf.metrics(val, step)
            clock, timed_steps = time.perf_counter(), 0
        if steps_file.due() or val or final:
            steps_file.write(step, force=True, loss=out.loss.item(), **val)
        checkpoint = (model, optimizer) if checkpointing else None
        if report(step, rank, val, checkpoint):  # validation steps reach Ray Tune even without a checkpoint
            clock, timed_steps = time.perf_counter(), 0
