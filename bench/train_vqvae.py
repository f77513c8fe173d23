"""Stage 1 throughput: training samples/s of `stage1` (Ray Train + MLflow) on the demo data
beside a plain single-process PyTorch loop with the same model, optimizer, batch, reader and loss
(the model's own: neither side rebuilds eq. 3).

    python bench/train_vqvae.py [--steps 300] [--workers 1] [--threads 1] [--repeats 2]

With --workers 1 both sides do the same single-process compute, so the gap is Ray's and MLflow's
overhead (target: under 10 %). The plain loop runs in a fresh process each time, twice: with
glibc's malloc defaults, and with `pipeline.runtime.keep_freed_memory()`, which the stage's
workers call. The gap between those two is the allocator's (a fresh process unmaps and faults in
every activation over 128 KiB on every step), not Ray's; the overhead is measured against the
second, the same allocator the workers have. A third row runs that same plain loop inside a Ray
Train worker: its gap belongs to the worker process, the rest is the stage's own loop. The plain
loop runs with torch.set_num_threads(--threads), the intra-op threads a Ray Train worker gets (Ray
sets OMP_NUM_THREADS to its CPUs, cpus_per_worker); it is also shown at 1 thread. --workers 2 adds
a DDP run, compared with the plain loop given the same number of cores.

Ray's samples/s is the stage's own `samples_per_s` metric read back from MLflow (validation and
checkpoint time excluded, first point dropped as warm-up); the plain loop's excludes its first
log_every steps the same way. Wall-clock is the whole call: for Ray, stage1 (MLflow run,
Ray Train start-up, the checkpoints, the final validation, model logging and registration; the
ray.init before it is shown apart), for the plain loop model build + every step. The median of
the log_every-step windows is shown too: it shrugs off bursts of load from other processes. Each
measurement is repeated (--repeats), plain and Ray interleaved, and the best run kept.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pipeline.config import Settings, load_settings  # noqa: E402
from pipeline.formats.reader import SkipCounter, shard_urls, train_batches  # noqa: E402
from pipeline.stages.shard import shard  # noqa: E402
from pipeline.runtime import keep_freed_memory  # noqa: E402
from pipeline.stages.stage1 import build_model  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def plain_loop(settings: Settings, threads: int, warmup: int, keep_freed: bool = True) -> tuple[float, float, float]:
    """What a user would write without Ray or MLflow: the worker loop's compute, one process.
    Returns (samples/s after `warmup` steps, median of log_every-step windows, wall seconds for
    model build + all steps)."""
    if keep_freed:
        keep_freed_memory()
    s1 = settings.stage1
    torch.set_num_threads(threads)
    start = time.perf_counter()
    _, urls = shard_urls(settings.shards_dir, "train")
    torch.manual_seed(s1.seed)
    model = build_model(settings)
    optimizer = torch.optim.Adam(model.parameters(), lr=s1.lr)
    batches = train_batches(urls, s1.batch_size, s1.seed, 0, settings.modality, SkipCounter())
    clock = window = start
    rates = []  # samples/s per log_every-step window after warm-up, as the stage logs them
    for step in range(1, s1.steps + 1):
        if step == warmup + 1:
            clock = window = time.perf_counter()
        batch = next(batches).to("cpu")  # as the stage does: uint8 pixels become floats
        loss = model(batch.x, batch.cond, batch.mask).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step > warmup and ((step - warmup) % s1.log_every == 0 or step == s1.steps):
            now = time.perf_counter()
            rates.append(((step - warmup - 1) % s1.log_every + 1) * s1.batch_size / (now - window))
            window = now
    end = time.perf_counter()
    return (s1.steps - warmup) * s1.batch_size / (end - clock), statistics.median(rates), end - start


def plain_in_fresh_process(settings: Settings, threads: int, warmup: int, keep_freed: bool) -> tuple:
    """`plain_loop` in a new interpreter: the allocator state a user's script starts with (this
    process has run Ray Data, whose large frees have already raised glibc's mmap threshold)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(plain_loop, settings, threads, warmup, keep_freed).result()


def plain_in_train_worker(settings: Settings, threads: int, warmup: int) -> tuple[float, float, float]:
    """`plain_loop` run inside a 1-worker Ray Train worker (no MLflow, no checkpoints): splits the
    gap into what the worker process costs and what the stage's own loop adds (reports, MLflow,
    timers)."""
    import json

    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    out = Path(tempfile.mkdtemp(prefix="bench-worker-")) / "rate.json"

    def fn(config):
        sys.path.insert(0, str(Path(config["bench"]).parent))
        from train_vqvae import plain_loop as loop  # this file, imported in the worker

        out.write_text(json.dumps(loop(Settings.model_validate(config["settings"]), threads, warmup)))

    TorchTrainer(fn, train_loop_config={"settings": settings.model_dump(), "bench": __file__},
                 scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": threads}),
                 run_config=RunConfig(name=out.parent.name, storage_path=str(out.parent))).fit()
    return tuple(json.loads(out.read_text()))


def ray_run(settings: Settings) -> tuple[float, float, float, float]:
    """stage1 end to end; returns (steady samples/s, median of the windows, wall s, fit s)."""
    from mlflow import MlflowClient

    from pipeline.stages.stage1 import stage1

    start = time.perf_counter()
    done = stage1(settings)
    wall = time.perf_counter() - start
    history = MlflowClient(settings.tracking_uri).get_metric_history(done["run_id"], "samples_per_s")
    rates = [m.value for m in sorted(history, key=lambda m: m.step)][1:]  # first window: warm-up
    # Windows are log_every steps each, so the harmonic mean is total samples / total time.
    return statistics.harmonic_mean(rates), statistics.median(rates), wall, done["seconds"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--workers", type=int, default=1, help="1, or more to add a DDP run beside the 1-worker one")
    p.add_argument("--threads", type=int, default=1, help="CPUs (= torch threads) per Ray worker")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2, help="runs of each, interleaved; the best is shown")
    p.add_argument("--workdir", default=None, help="default: a new temporary folder")
    a = p.parse_args()
    import ray

    from pipeline.runtime import init_ray

    tmp = Path(a.workdir or tempfile.mkdtemp(prefix="bench-stage1-")).resolve()
    base = [f"workdir={tmp}", f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db", "overwrite=true",
            f"stage1.steps={a.steps}", f"stage1.log_every={a.log_every}",
            f"stage1.val_every={a.steps}",  # validation only at the end, as the last step always does
            f"stage1.checkpoint_every={max(1, a.steps // 2)}", f"ray.cpus_per_worker={a.threads}"]
    settings = load_settings(CONFIG, base + ["ray.num_workers=1"])

    settings.modality.make_demo(settings.data)
    shard_settings = settings.model_copy(update={"overwrite": False})
    shard(shard_settings)  # "already finished" when the workdir has them
    ray.shutdown()  # the plain loop runs with no Ray processes about

    threads_plain = sorted({1, a.threads} | ({a.threads * a.workers} if a.workers > 1 else set()))
    best: dict = {}  # row key -> best (samples/s, median window, wall s, fit s) over the repeats

    def keep(key, result) -> None:
        if key not in best or result[0] > best[key][0]:
            best[key] = result

    ray_init = 0.0
    for rep in range(a.repeats):  # plain and Ray interleaved, so both see the same background load
        for threads in threads_plain:
            for keep_freed in (False, True) if threads == a.threads else (True,):
                rate, median, wall = plain_in_fresh_process(settings, threads, a.log_every, keep_freed)
                keep(("plain" if keep_freed else "glibc", threads), (rate, median, wall, None))
                print(f"[{rep + 1}/{a.repeats}] plain loop, {threads} thread(s), "
                      f"{'freed memory kept' if keep_freed else 'glibc defaults'}: {rate:.1f} samples/s "
                      f"(median window {median:.1f})", flush=True)
        t = time.perf_counter()
        init_ray(settings)
        ray_init = max(ray_init, time.perf_counter() - t)
        result = plain_in_train_worker(settings, a.threads, a.log_every)
        keep(("worker", 1), (*result, None))
        print(f"[{rep + 1}/{a.repeats}] plain loop in a Ray Train worker: {result[0]:.1f} samples/s "
              f"(median window {result[1]:.1f})", flush=True)
        for workers in sorted({1, a.workers}):
            s = load_settings(CONFIG, base + [f"ray.num_workers={workers}"])
            result = ray_run(s)
            keep(("ray", workers), result)
            print(f"[{rep + 1}/{a.repeats}] Ray, {workers} worker(s): {result[0]:.1f} samples/s "
                  f"(median window {result[1]:.1f})", flush=True)
        ray.shutdown()

    s1 = settings.stage1
    print(f"\nstage 1 on the demo data: {a.steps} steps, batch {s1.batch_size}, "
          f"{settings.data.image_size}x{settings.data.image_size}, hidden {s1.hidden}; first {a.log_every} "
          f"steps excluded from samples/s; best of {a.repeats}; ray.init up to {ray_init:.1f} s (not in wall)")
    print(f"{'':30s} {'samples/s':>9s} {'overhead':>8s} {'median':>7s} {'overhead':>8s} {'wall s':>7s} {'fit s':>6s}")
    print(f"{'':30s} {'':>9s} {'':>8s} {'window':>7s} {'':>8s}")

    def vs(rate: float, base_rate: float, same: bool) -> str:
        return f"{1 - rate / base_rate:.1%}" if same else f"{rate / base_rate:.2f}x"

    order = {"glibc": 0, "plain": 1, "worker": 2, "ray": 3}
    for (kind, n), (rate, median, wall, fit) in sorted(best.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        if kind == "glibc":
            name, gap, gap_m = f"plain, {n} thread{'s' if n > 1 else ''}, glibc malloc", "", ""
        elif kind == "plain":
            name, gap, gap_m = f"plain, {n} thread{'s' if n > 1 else ''}, freed kept", "", ""
        elif kind == "worker":
            name = "plain loop in a Train worker"
            ref = best[("plain", a.threads)]
            gap, gap_m = vs(rate, ref[0], True), vs(median, ref[1], True)
        else:
            name = f"Ray Train + MLflow, {n}x{a.threads} CPU"
            ref, same = best[("plain", n * a.threads)], n == 1
            gap, gap_m = vs(rate, ref[0], same), vs(median, ref[1], same)
        print(f"{name:30s} {rate:9.1f} {gap:>8s} {median:7.1f} {gap_m:>8s} {wall:7.1f} "
              f"{'' if fit is None else f'{fit:6.1f}':>6s}")
    print("overhead: 1 - Ray/plain at the same threads (1 worker); for more workers, Ray/plain with as many "
          "threads as the workers' CPUs together (the DDP speed-up). 'plain loop in a Train worker' is the same "
          "plain loop run inside a Ray Train worker: its gap is the worker process's, the rest is the stage's loop. "
          "Both sides keep freed memory (pipeline.runtime.keep_freed_memory); 'glibc malloc' is the plain loop "
          "without it, for scale")


if __name__ == "__main__":
    main()
