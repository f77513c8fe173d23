"""How fast stage 1, codes dumping and prior sampling run on this machine's accelerator.

    python bench/gpu.py                                   # cuda when available: the paper's sizes
    python bench/gpu.py --shards work/gpu128/shards       # + stage 1 fed from real image shards
    python bench/gpu.py --small                           # CPU-sized, a minute on 2 cores

Stage 1 at the paper's ImageNet settings (section 4.2: 128x128x3, K=512, D=64, hidden 256, two
residual blocks, two downsamplings; batch 128 per GPU) on synthetic tensors, once per variant of
what a GPU user reaches for: the stage's own recipe (bf16 autocast, torch.optim.Adam), fused
Adam, channels-last, torch.compile, and plain fp32 with and without TF32. Each prints images/s,
achieved TFLOP/s (the FLOPs of one forward + backward counted by torch.utils.flop_counter over
the measured step time), MFU against the device's dense bf16 peak and peak memory.

With --shards (a finished image shard folder, made at the size you want to measure), the stage's
recipe is fed by the stage's own reader (`pipeline.formats.reader.loader`: webdataset + PNG decoding)
in the training process and in --workers DataLoader worker processes (ray.loader_workers), pinned,
copied without waiting; each step is split into the time spent waiting for the batch and the
time computing it.

Codes dumping is the codes actor's work (`encode`, batch 256): on a GPU it runs bf16 autocast
and channels-last (`codes.bf16: true`, the default), fp32 with `codes.bf16: false`; the other
variants are for comparison. With --shards, also what one process decodes for it (the codes
job's `decode_shard`, which runs in Ray Data tasks on every CPU): the job's CPU bound is that
figure times the CPUs the cluster gives those tasks. Prior sampling is the class-conditional
Gated PixelCNN of configs/imagenet.yaml over a 32x32 grid: `GatedPixelCNN.sample` runs one forward per position,
on the rows up to it; one whole sampling call is timed.

Timings synchronise the device around the region; the median of --repeats windows is shown.
--json FILE writes every figure.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from pipeline.models.pixelcnn import GatedPixelCNN  # noqa: E402
from pipeline.models.vqvae import VQVAE  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s.
PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4),
                    ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10G", 70.0), ("V100", 125.0)]

PAPER = dict(image=128, batch=128, hidden=256, codebook_size=512, code_dim=64, res_blocks=2,
             codes_batch=256, prior_batch=32, prior_hidden=256, prior_layers=20, prior_classes=1000)
SMALL = dict(image=32, batch=16, hidden=32, codebook_size=64, code_dim=16, res_blocks=1,
             codes_batch=32, prior_batch=4, prior_hidden=16, prior_layers=2, prior_classes=10)


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, warmup: int, steps: int, repeats: int) -> float:
    """Median seconds per call of fn over `repeats` windows of `steps` calls, after `warmup`."""
    for _ in range(warmup):
        fn()
    windows = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        sync(device)
        windows.append((time.perf_counter() - start) / steps)
    return statistics.median(windows)


def vqvae(sizes: dict) -> VQVAE:
    return VQVAE(in_channels=3, hidden=sizes["hidden"], num_res_blocks=sizes["res_blocks"], num_downsamples=2,
                 codebook_size=sizes["codebook_size"], code_dim=sizes["code_dim"])


def stage1_step(model, optimizer, autocast, channels_last: bool):
    """One training step as the stage's loop takes it (pipeline/stages/train/loop.py)."""
    def step(x):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            out = model(x)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
    return step


def step_flops(sizes: dict, device: torch.device, x: torch.Tensor) -> int:
    """FLOPs of one forward + backward (fp32 model; the count does not depend on dtype)."""
    model = vqvae(sizes).to(device)
    with FlopCounterMode(display=False) as counter:
        model(x).loss.backward()
    return counter.get_total_flops()


def stage1_variants(device: torch.device, compile_: bool) -> list[tuple[str, dict]]:
    """(name, options): on cuda the stage trains under bf16 autocast, channels-last, and compiled
    when stage1.compile is set."""
    if device.type != "cuda":
        variants = [("stage recipe (fp32, Adam)", {}), ("+ fused Adam", {"fused": True}),
                    ("+ channels-last", {"channels_last": True})]
        return variants + ([("+ torch.compile", {"compile": True})] if compile_ else [])
    variants = [("bf16 autocast, Adam, channels-first", {}),
                ("stage recipe: + channels-last", {"channels_last": True}),
                ("stage recipe + fused Adam", {"channels_last": True, "fused": True})]
    if compile_:
        variants += [("stage recipe + torch.compile", {"channels_last": True, "compile": True}),
                     ("channels-first + torch.compile", {"compile": True})]
    return variants + [("fp32, TF32 on", {"fp32": True, "tf32": True}),
                       ("fp32, TF32 off", {"fp32": True, "tf32": False})]


def bench_stage1(sizes: dict, device: torch.device, args, peak: float | None) -> list[dict]:
    x = torch.randn(sizes["batch"], 3, sizes["image"], sizes["image"], device=device)
    flops = step_flops(sizes, device, x)
    print(f"stage 1: {flops / 1e12:.3g} TFLOP per training step (forward + backward)")
    rows = []
    for name, opts in stage1_variants(device, args.compile):
        torch.manual_seed(0)
        model = vqvae(sizes).to(device)
        if opts.get("channels_last"):
            model = model.to(memory_format=torch.channels_last)
        fused = {"fused": True} if opts.get("fused") else {}
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, **fused)
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                    if device.type == "cuda" and not opts.get("fp32") else nullcontext())
        if opts.get("compile"):
            model = torch.compile(model)
        tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        if "tf32" in opts:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = opts["tf32"]
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        step = stage1_step(model, optimizer, autocast, opts.get("channels_last", False))
        start = time.perf_counter()
        seconds = timed(lambda: step(x), device, args.warmup, args.steps, args.repeats)
        wall = time.perf_counter() - start
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        tflops = flops / seconds / 1e12
        rows.append({"variant": name, "images_per_s": sizes["batch"] / seconds, "ms_per_step": 1000 * seconds,
                     "flops_per_step": flops,
                     "tflops": tflops, "mfu": tflops / peak if peak else None, "wall_s": wall,
                     "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None})
        del model, optimizer
    return rows


def bench_shards(sizes: dict, device: torch.device, args) -> list[dict]:
    """The stage's recipe fed from real shards: data wait vs compute per step."""
    from pipeline import modalities
    from pipeline.formats.reader import SkipCounter, TrainStream, loader, shard_urls

    manifest, urls = shard_urls(args.shards, "train")
    cuda = device.type == "cuda"
    stream = TrainStream(urls, sizes["batch"], 0, 0, modalities.get(manifest["modality"]), args.shards)
    feeds = {"ray.loader_workers=0: decoding in the training process":
             lambda: loader(stream, 0, cuda, SkipCounter())}
    for workers in args.workers:
        feeds[f"ray.loader_workers={workers}, pinned"] = lambda w=workers: loader(stream, w, cuda, SkipCounter())
    rows = []
    for name, make in feeds.items():
        torch.manual_seed(0)
        model = vqvae(sizes).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
        step = stage1_step(model, optimizer, autocast, False)
        batches = make()
        wait = compute = 0.0
        for i in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            x = next(batches).to(device).x
            sync(device)
            t1 = time.perf_counter()
            step(x)
            sync(device)
            t2 = time.perf_counter()
            if i >= args.warmup:
                wait, compute = wait + t1 - t0, compute + t2 - t1
        del batches
        total = wait + compute
        rows.append({"feed": name, "images_per_s": args.steps * sizes["batch"] / total,
                     "data_wait_pct": 100 * wait / total, "ms_wait": 1000 * wait / args.steps,
                     "ms_compute": 1000 * compute / args.steps})
    return rows


def bench_codes(sizes: dict, device: torch.device, args) -> list[dict]:
    model = vqvae(sizes).to(device).eval()
    x = torch.randn(sizes["codes_batch"], 3, sizes["image"], sizes["image"], device=device)
    rows = []
    if device.type == "cuda":
        bf16 = torch.autocast("cuda", dtype=torch.bfloat16)
        variants = [("fp32, channels-first", nullcontext(), False),
                    ("fp32, channels-last (the actor with codes.bf16: false)", nullcontext(), True),
                    ("bf16 autocast, channels-first", bf16, False),
                    ("bf16 autocast, channels-last (the actor)", bf16, True)]
    else:
        variants = [("fp32 (the actor on a CPU)", nullcontext(), False)]
    for name, autocast, channels_last in variants:
        fmt_ = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=fmt_)
        xs = x.contiguous(memory_format=fmt_)

        def encode():
            with autocast:
                model.encode(xs)
        seconds = timed(encode, device, args.warmup, args.steps, args.repeats)
        rows.append({"variant": name, "images_per_s": sizes["codes_batch"] / seconds})
    if args.shards:
        rows.append({"variant": "decoding for it, 1 CPU process (decode_shard)", "images_per_s": decode_rate(args.shards)})
    return rows


def decode_rate(shards: str) -> float:
    """Images/s one process decodes for the codes job (`decode_shard` over the first train shard,
    with the modality and conditioning of the shard manifest, as the job reads them)."""
    from pipeline.stages.codes import decode_shard
    from pipeline.formats.reader import shard_urls
    from pipeline.formats.shards import shard_cond

    manifest, urls = shard_urls(shards, "train")
    args = ({"path": urls[0], "split": "train"}, manifest["modality"], list(shard_cond(manifest)))
    decode_shard(*args)  # warm: imports, file cache
    start = time.perf_counter()
    n = len(decode_shard(*args))
    return n / (time.perf_counter() - start)


def bench_prior(sizes: dict, device: torch.device, args) -> list[dict]:
    """GatedPixelCNN.sample over a whole grid, once per variant after a one-row warm-up."""
    prior = GatedPixelCNN(codebook_size=sizes["codebook_size"], num_classes=sizes["prior_classes"],
                          hidden=sizes["prior_hidden"], num_layers=sizes["prior_layers"], kernel_size=5).to(device).eval()
    grid = sizes["image"] // 4
    batch = sizes["prior_batch"]
    cond = {"labels": torch.randint(sizes["prior_classes"], (batch,), device=device)}
    rows = []
    for name, autocast in (("fp32", nullcontext()),
                           ("bf16 autocast", torch.autocast("cuda", dtype=torch.bfloat16)
                            if device.type == "cuda" else None)):
        if autocast is None:
            continue
        with autocast:
            prior.sample(cond, shape=(1, grid))
            sync(device)
            start = time.perf_counter()
            prior.sample(cond, shape=(grid, grid))
            sync(device)
        seconds = time.perf_counter() - start
        rows.append({"variant": name, "grid": f"{grid}x{grid}", "batch": batch,
                     "ms_per_position": 1000 * seconds / grid**2, "grids_per_s": batch / seconds})
    return rows


def table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    if not rows:
        return
    keys = [k for k in rows[0] if k != "flops_per_step"]
    width = {k: max(len(k), *(len(fmt(r[k])) for r in rows)) for k in keys}
    print("  ".join(k.ljust(width[k]) for k in keys))
    for r in rows:
        print("  ".join(fmt(r[k]).ljust(width[k]) for k in keys))


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="small sizes (the default on CPU)")
    parser.add_argument("--shards", help="a finished image shard folder: also feed stage 1 from it")
    parser.add_argument("--workers", type=int, nargs="*", default=[4], help="DataLoader workers to try")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="also time torch.compile (default: on cuda only; it compiles for minutes on a CPU)")
    parser.add_argument("--peak-tflops", type=float, help="the device's bf16 peak, when not in the table")
    parser.add_argument("--only", nargs="*", default=["stage1", "shards", "codes", "prior"])
    parser.add_argument("--json", help="write every figure here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.compile is None:
        args.compile = device.type == "cuda"
    sizes = SMALL if args.small or device.type == "cpu" else PAPER
    peak = peak_tflops(device, args.peak_tflops)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {where}; torch {torch.__version__}; bf16 peak {fmt(peak)} TFLOP/s; sizes: {sizes}")
    result: dict = {"device": where, "torch": torch.__version__, "peak_bf16_tflops": peak, "sizes": sizes}
    if "stage1" in args.only:
        result["stage1"] = bench_stage1(sizes, device, args, peak)
        table(f"stage 1, synthetic {sizes['image']}x{sizes['image']}, batch {sizes['batch']}", result["stage1"])
    if "shards" in args.only and args.shards:
        result["shards"] = bench_shards(sizes, device, args)
        table(f"stage 1 fed from {args.shards}", result["shards"])
    if "codes" in args.only:
        result["codes"] = bench_codes(sizes, device, args)
        table(f"codes dumping, batch {sizes['codes_batch']}", result["codes"])
    if "prior" in args.only:
        result["prior"] = bench_prior(sizes, device, args)
        table("prior sampling (GatedPixelCNN.sample: one forward per position on the rows so far)", result["prior"])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
