"""Reading shards from an object store (S3) against the local disk: stage 1's stream and the codes job's reads.

    python bench/storage.py [--workers 0 1 2] [--batches 20] [--repeats 3] [--json out.json]
    python bench/storage.py --endpoint http://host:9000   # an S3 server of yours (AWS_* credentials
                                                          # from the environment; the bucket must exist)

**The shards.** The image demo's photos (`make_demo_data`, --per-class train photos per class, a
fifth as many val), sharded once by the real shard job (`jobs/shard.py --config configs/demo.yaml`)
at --image-size (128: the paper's ImageNet size) with --per-shard samples per tar (1,000 as in
configs/imagenet.yaml, ~30 MB tars), cached under --work and reused. The finished folder, its
manifest too, is uploaded to `<--bucket>/shards/<name>`, so both reads see the same tars.

**The server.** Without --endpoint, SeaweedFS's S3 gateway on 127.0.0.1 (tests/s3server.py, started
in a temporary folder and stopped after), on the same machine as the readers: the figures measure
the S3 protocol and the client (pyarrow's S3 filesystem: a GET per `pipeline.fs.READ_BUFFER`
bytes, HTTP, the server's own CPU), not a network. Its endpoint and credentials are put in
os.environ before any loader is built, so DataLoader worker processes inherit them as stage 1's do.

**CPU.** Over each timed window, the CPU seconds (from /proc) of the readers (this process and
its DataLoader workers) and of the server, per sample: unlike samples/s, they barely move when
other work shares the machine.

**Stage 1.** The stage's own stream and loader (`TrainStream` with the stage-1 section's crop,
seed and batch size, rank 0; `loader(stream, workers, pin=False, ...)`) over the train tars, in
this process (--workers 0) or in that many DataLoader worker processes. Each worker's shuffle
buffer is filled first (warm-up: 1,500 samples per reading process plus the prefetched batches; the
buffer reads two samples per one it yields until it holds 2,000), then --batches batches are
timed. samples/s per worker divides by the reading processes (workers 0 counts as 1). MB/s is the
timed samples times the mean tar bytes per sample (what the readers pulled from storage in steady
state). Local and S3 alternate within each repeat; each row shows the best of --repeats runs (a
busy machine only slows a run down) and their median.

**Codes.** The codes job's side of storage, in this one process: `pipeline.stages.codes.read_shard`
(open the tar, group its members: what touches storage) and `decode_shard` (the same plus the
modality's decoding: what each Ray Data task does) over every tar of both splits; and a plain
read of every tar's bytes through `pipeline.fs.open_read` in 10 KiB calls, as tarfile reads it (the
stream alone). The encoder that follows is the same whichever the storage.

Prints the machine's threads, a table (storage, loader workers, samples/s, per worker, MB/s, CPU
per sample) and the ratios S3 / local of samples/s and of CPU per sample (readers and server
together); --json FILE writes every figure; `main(argv)` returns them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # s3server: the SeaweedFS the tests use

from pipeline import fs as fsx  # noqa: E402
from pipeline.config import load_settings  # noqa: E402
from pipeline.formats.reader import SkipCounter, TrainStream, loader, shard_urls  # noqa: E402

FILL = 1500  # samples a stream yields before its shuffle buffer is full (2000 - the initial 500)
TAR_READ = 10240  # bytes tarfile's stream mode reads per call (tarfile.RECORDSIZE)


def make_shards(a) -> tuple[str, str, object]:
    """(the local shards folder, its name, the settings): made by the shard job once, then reused."""
    name = f"demo-{a.image_size}px-{a.per_class}pc-{a.per_shard}ps"
    workdir = a.work / name
    overrides = [f"workdir={workdir}", f"data.root={workdir / 'raw'}", "data.make_demo=false",
                 f"data.image_size={a.image_size}", f"data.samples_per_shard={a.per_shard}",
                 f"stage1.batch_size={a.batch}"]
    settings = load_settings(REPO / "configs" / "demo.yaml", overrides)
    if not (Path(settings.shards_dir) / "manifest.json").is_file():
        from pipeline.modalities.image_demo import make_demo_data

        print(f"making the shards once: {a.per_class} photos per class at {a.image_size}px -> {settings.shards_dir}",
              flush=True)
        make_demo_data(settings.data.root, a.per_class, max(1, a.per_class // 5))
        cmd = [sys.executable, str(REPO / "jobs" / "shard.py"), "--config", str(REPO / "configs" / "demo.yaml")]
        for o in overrides:
            cmd += ["--set", o]
        subprocess.run(cmd, check=True)
    return settings.shards_dir, name, settings


def _cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process, from /proc (0 when it is not there)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


class CpuClock:
    """CPU seconds of the readers (this process and its DataLoader workers) and of the S3 server,
    between `start` and `stop`."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid

    def _read(self) -> tuple[dict[int, float], float]:
        pids = [os.getpid(), *(c for c in _children(os.getpid()) if c != self.server_pid)]
        return {pid: _cpu_s(pid) for pid in pids}, _cpu_s(self.server_pid)

    def start(self) -> None:
        self.began, self.wall = self._read(), time.perf_counter()

    def stop(self, samples: int) -> dict:
        (clients, server), seconds = self._read(), time.perf_counter() - self.wall
        client = sum(t - self.began[0].get(pid, 0.0) for pid, t in clients.items())
        return {"seconds": seconds, "samples": samples, "samples_per_s": samples / seconds,
                "client_cpu_s": client, "server_cpu_s": server - self.began[1],
                "client_ms_per_sample": 1e3 * client / max(samples, 1),
                "server_ms_per_sample": 1e3 * (server - self.began[1]) / max(samples, 1)}


def stage1_rate(urls: list[str], settings, workers: int, batches: int, clock: CpuClock) -> dict:
    """Stage 1's train stream over `urls` read by `workers` loader processes: samples/s over
    `batches` batches once every reading process's shuffle buffer is full, and the CPU the readers
    and the server spent on them."""
    s1 = settings.stage1
    stream = TrainStream(urls, s1.batch_size, s1.seed, 0, settings.modality, "bench", crop=s1, crop_seed=s1.seed * 7919)
    skips = SkipCounter()
    it = loader(stream, workers, False, skips)
    processes = max(1, workers)
    for _ in range(-(-FILL * processes // s1.batch_size) + 4 * workers):
        next(it)
    n = 0
    clock.start()
    for _ in range(batches):
        n += next(it).x.shape[0]
    result = clock.stop(n)
    del it  # shuts the workers down
    return {**result, "skipped": skips.count}


def codes_rates(urls: list[tuple[str, str, int]], cond: list[str], clock: CpuClock) -> dict:
    """Seconds, samples and CPU (this process's, the server's) of the codes job's reads over
    every tar, in this process: the bare stream, `read_shard`, `decode_shard`."""
    from pipeline.stages.codes import decode_shard, read_shard

    def stream(url: str, split: str, samples: int) -> tuple[int, int]:
        nbytes = 0
        with fsx.open_read(url) as f:
            while chunk := f.read(TAR_READ):
                nbytes += len(chunk)
        return samples, nbytes

    out = {}
    for what, fn in (("stream", stream), ("read_shard", lambda url, split, _: (len(read_shard({"path": url, "split": split})), 0)),
                     ("decode_shard", lambda url, split, _: (len(decode_shard({"path": url, "split": split}, "image", cond)), 0))):
        n, nbytes = 0, 0
        clock.start()
        for url, split, count in urls:
            samples, b = fn(url, split, count)
            n, nbytes = n + samples, nbytes + b
        out[what] = {**clock.stop(n), "bytes": nbytes}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="stage 1's loader workers (0: in process)")
    p.add_argument("--batches", type=int, default=20, help="timed batches per stage-1 measurement")
    p.add_argument("--batch", type=int, default=64, help="stage1.batch_size (configs/demo.yaml's)")
    p.add_argument("--repeats", type=int, default=3, help="measurements per row (the median is shown)")
    p.add_argument("--image-size", type=int, default=128, help="data.image_size of the shards")
    p.add_argument("--per-class", type=int, default=400, help="train photos per class (10 classes; val a fifth)")
    p.add_argument("--per-shard", type=int, default=1000, help="data.samples_per_shard")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vqvae-storage-bench",
                   help="where the demo data and shards are made and kept")
    p.add_argument("--endpoint", help="an S3 endpoint to use instead of a local SeaweedFS (credentials: AWS_*)")
    p.add_argument("--bucket", default="s3://bench", help="the bucket the shards are uploaded to")
    p.add_argument("--skip", choices=["stage1", "codes"], nargs="*", default=[], help="parts not to run")
    p.add_argument("--json", type=Path, help="write every figure here")
    a = p.parse_args(argv)

    import torch

    local, name, settings = make_shards(a)
    manifest, train_local = shard_urls(local, "train")
    tars = {s: [sh for sh in manifest["splits"][s]["shards"] if sh["samples"]] for s in ("train", "val")}
    tar_bytes = sum(os.path.getsize(f"{local}/{sh['path']}") for s in tars.values() for sh in s)
    tar_samples = sum(sh["samples"] for s in tars.values() for sh in s)
    per_sample = tar_bytes / tar_samples

    server, server_pid, tmp = None, None, None
    if a.endpoint:
        os.environ["AWS_ENDPOINT_URL"] = a.endpoint
    else:
        from s3server import LocalS3

        tmp = tempfile.TemporaryDirectory(prefix="vqvae-storage-s3-")
        server = LocalS3(tmp.name)
    try:
        if server is not None:
            server.start()
            server.make_bucket(a.bucket.removeprefix("s3://").split("/")[0])
            server_pid = server.proc.pid
            os.environ.update(server.env)  # before any loader: its worker processes inherit them
        remote = fsx.join(a.bucket, "shards", name)
        start = time.perf_counter()
        fsx.remove_tree(remote)
        fsx.upload(local, remote)
        upload_s = time.perf_counter() - start
        _, train_s3 = shard_urls(remote, "train")
        where = {"local": local, "s3": remote}
        train = {"local": train_local, "s3": train_s3}
        threads = torch.get_num_threads()
        print(f"\nthis machine: {os.cpu_count()} CPUs (os.cpu_count), torch {threads} threads; "
              f"S3: {'SeaweedFS on 127.0.0.1' if server else a.endpoint + ' (its CPU not measured: shown as 0)'}; "
              f"READ_BUFFER {fsx.READ_BUFFER >> 20} MiB")
        print(f"shards: {tar_samples} samples of {a.image_size}x{a.image_size} PNG in "
              f"{sum(map(len, tars.values()))} tars, {tar_bytes / 1e6:.0f} MB ({per_sample / 1e3:.1f} KB a sample); "
              f"uploaded in {upload_s:.1f} s ({tar_bytes / 1e6 / upload_s:.1f} MB/s)", flush=True)

        result = {"machine": {"cpu_count": os.cpu_count(), "torch_threads": threads,
                              "server": "SeaweedFS 127.0.0.1" if server else a.endpoint,
                              "read_buffer": fsx.READ_BUFFER, "date": time.strftime("%Y-%m-%d")},
                  "shards": {"local": local, "s3": remote, "samples": tar_samples, "tars": sum(map(len, tars.values())),
                             "bytes": tar_bytes, "image_size": a.image_size, "batch": a.batch},
                  "upload_s": upload_s, "stage1": [], "codes": []}

        clock = CpuClock(server_pid)
        if "stage1" not in a.skip:
            runs: dict = {}
            for rep in range(a.repeats):
                for workers in a.workers:
                    for storage in ("local", "s3"):
                        r = stage1_rate(train[storage], settings, workers, a.batches, clock)
                        runs.setdefault((storage, workers), []).append(r)
                        print(f"  stage 1, {storage}, {workers} loader workers, run {rep + 1}: "
                              f"{r['samples_per_s']:.0f} samples/s, {r['client_ms_per_sample']:.2f} + "
                              f"{r['server_ms_per_sample']:.2f} CPU ms a sample", flush=True)
            for (storage, workers), rs in runs.items():
                row = summarise(rs, per_sample)
                result["stage1"].append({"storage": storage, "workers": workers, **row,
                                         "per_worker": row["samples_per_s"] / max(1, workers),
                                         "skipped": sum(r["skipped"] for r in rs)})

        if "codes" not in a.skip:
            cond = list(manifest["cond"])
            runs = {}
            for rep in range(a.repeats):
                for storage in ("local", "s3"):
                    urls = [(f"{where[storage]}/{sh['path']}", s, sh["samples"]) for s, shs in tars.items() for sh in shs]
                    r = codes_rates(urls, cond, clock)
                    runs.setdefault(storage, []).append(r)
                    assert r["stream"]["bytes"] == tar_bytes, "a tar read back short"
                    assert all(r[w]["samples"] == tar_samples for w in ("stream", "read_shard", "decode_shard")), "samples lost"
                    print(f"  codes, {storage}, run {rep + 1}: " + ", ".join(
                        f"{w} {r[w]['samples_per_s']:.0f}" for w in ("stream", "read_shard", "decode_shard"))
                        + " samples/s", flush=True)
            for storage, rs in runs.items():
                for what in ("stream", "read_shard", "decode_shard"):
                    result["codes"].append({"storage": storage, "what": what,
                                            **summarise([r[what] for r in rs], per_sample)})
    finally:
        if server is not None:
            server.stop()
            tmp.cleanup()

    print_tables(result)
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))
    return result


def summarise(runs: list[dict], per_sample: float) -> dict:
    """A row from its runs: the best rate (a busy machine only ever slows a run down) and the
    median; CPU per sample as the median (it barely moves when the machine is busy)."""
    best = max(r["samples_per_s"] for r in runs)
    return {"samples_per_s": best, "median_samples_per_s": statistics.median(r["samples_per_s"] for r in runs),
            "mb_per_s": best * per_sample / 1e6,
            "client_ms_per_sample": statistics.median(r["client_ms_per_sample"] for r in runs),
            "server_ms_per_sample": statistics.median(r["server_ms_per_sample"] for r in runs),
            "runs": [r["samples_per_s"] for r in runs]}


def print_tables(result: dict) -> None:
    cpu = "CPU ms/sample: readers + server"
    if result["stage1"]:
        rows = {(r["storage"], r["workers"]): r for r in result["stage1"]}
        print(f"\nstage 1's train stream (batch {result['shards']['batch']}; best of {len(result['stage1'][0]['runs'])} "
              f"runs, the median in brackets)")
        print(f"{'storage':8s} {'loader workers':>14s} {'samples/s':>16s} {'per worker':>10s} {'MB/s':>6s} "
              f"{cpu:>31s} {'s3/local':>8s} {'CPU s3/local':>12s}")
        for (storage, workers), r in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0] != "local")):
            print(f"{storage:8s} {workers:14d} {r['samples_per_s']:7.0f} ({r['median_samples_per_s']:6.0f}) "
                  f"{r['per_worker']:10.0f} {r['mb_per_s']:6.1f} "
                  f"{r['client_ms_per_sample']:23.2f} + {r['server_ms_per_sample']:5.2f} {ratios(r, rows[('local', workers)])}")
    if result["codes"]:
        rows = {(r["storage"], r["what"]): r for r in result["codes"]}
        print(f"\nthe codes job's reads, one process, every tar ({result['shards']['samples']} samples; best, median)")
        print(f"{'storage':8s} {'what':32s} {'samples/s':>18s} {'MB/s':>7s} {cpu:>31s} {'s3/local':>8s} {'CPU s3/local':>12s}")
        label = {"stream": "open_read, 10 KiB reads", "read_shard": "read_shard (read + tar)",
                 "decode_shard": "decode_shard (read + tar + PNG)"}
        for what in ("stream", "read_shard", "decode_shard"):
            for storage in ("local", "s3"):
                r = rows[(storage, what)]
                print(f"{storage:8s} {label[what]:32s} {r['samples_per_s']:9.0f} ({r['median_samples_per_s']:6.0f}) "
                      f"{r['mb_per_s']:7.1f} {r['client_ms_per_sample']:23.3f} + {r['server_ms_per_sample']:5.3f} "
                      f"{ratios(r, rows[('local', what)])}")


def ratios(r: dict, local: dict) -> str:
    """S3 over local: samples/s (best) and CPU per sample, readers and server together."""
    if r is local:
        return ""
    base = local["client_ms_per_sample"] + local["server_ms_per_sample"]
    cpu = f"{(r['client_ms_per_sample'] + r['server_ms_per_sample']) / base:11.2f}x" if base else f"{'-':>12s}"
    return f"{r['samples_per_s'] / local['samples_per_s']:7.2f}x {cpu}"


if __name__ == "__main__":
    main()
