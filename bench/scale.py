"""How every stage grows with the dataset: wall time, CPU per sample, memory, output sizes at N samples.

    python bench/scale.py --sizes 10000 40000 160000 [--modality image] [--trees DIR] [--json out.json]
    python bench/scale.py --sizes 300 600 --classes 10          # a quick look (not ImageNet-shaped)
    python bench/scale.py --modality speech --sizes 1110 4440 17760 # N utterances: ~1, 4, 16 hours of audio
    python bench/scale.py --modality video --sizes 1000 4000 16000  # N clips

**The data.** An ImageNet-shaped tree of N images in the layout `pipeline/modalities/folders.py`
reads: `train/<wnid>/<wnid>_<n>.JPEG` under 1,000 wnid-like class folders, `val/` flat
(`ILSVRC2012_val_<8 digits>.JPEG`) labelled by `LOC_val_solution.csv` (columns ImageId,
PredictionString) in the root; val is 50/1350 of N, as ImageNet's 50k beside its 1.28M. The JPEGs
have ImageNet's sizes (mostly 500x375 and 375x500, some smaller, a few larger; the mean is printed)
at quality 90. Encoding 160k JPEGs on 2 cores takes long, so a seeded pool of `--pool` distinct
synthetic photos (gradients, shapes, blur, noise; different per file) is made once and the tree is
filled with hard links to it. Pools and trees are cached under --trees, keyed by their sizes and
reused when complete (a `.complete` marker is written last). Every decode, resize and encode
the stages do is real; only the pixels repeat every `--pool` files.

**Speech** (`--modality speech`, N utterances): a VCTK 0.92 tree, as VCTK is downloaded today:
`wav48_silence_trimmed/pXXX/pXXX_NNN_mic1.flac` (and `_mic2`, which the listing skips),
`txt/pXXX/pXXX_NNN.txt`, `speaker-info.txt`. A pool of `--voices` espeak-ng voices x `--pool`
sentences is made once with the speech demo's synthesiser (`make_demo_corpus`, 48 kHz) and stored as
FLAC; the tree's `--speakers` speakers (p225, p226, ...; VCTK has 109; fewer at small N, so that each
has 16+ utterances, 2 of them val, as the conversion evaluation needs) each hold N / speakers
utterances, hard links to the pool files of one voice. The run is configs/demo-speech.yaml (8 kHz,
its small WaveNet VQ-VAE and prior) with `OVERRIDES["speech"]`: 20 steps of batch 8 per training
stage and the conversion evaluation at the end of stage 1 at its cheapest (one val utterance per
speaker to one target, 0.5 s); it still reads every val utterance and embeds them all with
resemblyzer, so it grows with N. The shard manifest's hours are printed beside N (per-sample figures
are per utterance); the prediction is for VCTK (~44,000 utterances, 44 hours).

**Video** (`--modality video`, N clips): the layout pipeline/modalities/video/layout.py reads:
`train/clip_NNNNNN.mp4` and `val/` (a tenth of N), each beside its `.actions.json`, and
`actions.json` in the root. A pool of `--pool` train clips and a sixth as many val clips (val
from maps train never sees) is rendered once by the video demo's maker (ViZDoom: 32 frames of
64x64 at 15 fps); tree clips are renamed hard links to them. The run is configs/demo-video.yaml
(32x32 frames, windows of 8 every 4: 7 per clip) with `OVERRIDES["video"]` (20 steps of batch 8).
Per-sample figures are per clip (the shards and codes hold windows: printed beside); the
prediction is for 10,000 clips (the paper's DeepMind Lab data gives no count).

**The run.** configs/imagenet.yaml with the overrides in `OVERRIDES` below (a small model, so CPU
runs finish: 20 steps of batch 8 per training stage; codes stay 32x32 of K=512, the paper's shape,
which is what stage 2's memory depends on) and per size a fresh workdir, data.root the tree, MLflow
in the workdir. The stages are `pipeline.stages.pipeline.stages()`, run one after another in this
process as the pipeline job runs them: shard, stage1, codes, stage2 at `--stage2-workers` (1 and 2:
ray.num_workers is part of a training run's name, so the second is a new run), and sample only with
`--sample` (the prior draws `sample.per_class` 32x32 grids for *each of the 1,000 classes*, 1,024
forward passes of the prior over the whole batch: about an hour on 2 CPU cores even for this small
prior, and the same at every N). A local Ray instance is started before the first stage (its start
timed apart) and shut down after the last, once per size.

**The figures, per stage.** A sampler thread reads, every 0.2 s, this process and every process
below it (`psutil.Process().children(recursive=True)`: Ray's gcs_server, raylet, dashboard and
agents, its worker processes, their DataLoader children), and classifies each as the driver (this
process), Ray's system processes, or a worker (`ray::<name>` processes, named by the most telling
title seen: RayTrainWorker, MapWorker(...), a Ray Data task; processes forked from a worker count
as its children). Per stage:

- `wall_s`: the stage function's wall time;
- `cpu_ms_per_sample`: user+system CPU of all those processes over the stage, per input sample
  (N): for each process its last reading minus its reading at the stage's start (0 for those
  started during the stage). CPU a process spends after its last 0.2 s reading before it exits is
  missed; the sampler's own work (~1-3 % of one core) is in the driver's. The training stages run a
  fixed number of steps, so their CPU per sample falls as 1/N except what grows with N (listing,
  validation, loading the codes);
- `driver_peak_mb`, `worker_peak_mb` (the largest worker process, and its kind), `workers_seen`,
  `system_peak_mb`: peak RSS per process; `total_rss_peak_mb`: the peak of their RSS summed at one
  reading (shared pages, libtorch's code, Ray's object store, count once per process that maps
  them); `total_pss_peak_mb`: the same with PSS (`/proc/<pid>/smaps_rollup`), which splits shared
  pages between their processes (the figure that adds up to what the machine holds);
- `out_bytes`: the stage's output: shards' tars, codes' Parquet, the logged model's files;
- stage 2: `train_worker_peaks_mb`, the peak RSS of each RayTrainWorker process.

**Growth.** For each figure, the exponent b of figure ~ N^b: the least-squares slope of
log(figure) against log(N) over the sizes (1: linear; 0: flat). A per-worker memory peak is
mostly fixed (Python, torch, Ray: ~0.5-1 GB) and its exponent is near 0 whatever the data does,
so stage 2's worker memory is also given as what grows: the line peak = fixed + per_sample * N
fitted over the sizes (per_sample in bytes per input sample held by each worker), and the
exponent of the increase over the smallest size, peak(N) - peak(N0) against N - N0 (measured, not
fitted; needs 3 sizes; 1 when each worker's memory grows linearly with the data). Comparing
per_sample at 1 and 2 workers says whether a rank holds all the codes (the same) or its share (half).

**Prediction** for ImageNet's 1.28M (+50k val) (speech, video: the targets above) on one 16-CPU node and on four (`--predict-nodes`):
the CPU-parallel stages (shard, codes) as their CPU seconds extrapolated by their exponent and
divided by the CPUs; the training stages' wall time extrapolated as measured (their steps are fixed:
what grows is the start-up, listing and validation), and stage 2's memory per worker as fixed +
per_sample * N / workers when the 2-worker run showed ranks holding their share, else fixed +
per_sample * N, for `--predict-workers-per-node` workers (16 CPUs / imagenet.yaml's cpus_per_worker
4). A line, not a promise: it assumes the growth seen between the sizes holds 8x beyond them.

The machine is shared and noisy: compare ratios and exponents, not single seconds. `main(argv)`
returns the figures as a dict (tests/test_bench.py).
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# The settings every size runs with, beside configs/imagenet.yaml; per size the bench adds workdir,
# data.root and ray.num_workers (stage 2: each of --stage2-workers). Dotted keys as `--set` takes them.
OVERRIDES = {
    "image": {
        "ray.use_gpu": False,
        "ray.cpus_per_worker": 1,
        "stage1.hidden": 32,            # small, so CPU runs finish ...
        "stage1.code_dim": 16,
        "stage1.codebook_size": 512,    # ... at the paper's latent shape: 128x128 -> 32x32 of K=512
        "stage1.num_downsamples": 2,
        "data.image_size": 128,
        "stage1.steps": 20,
        "stage1.batch_size": 8,
        "stage1.compile": False,
        "stage1.val_every": 1000,       # validated once, at the last step
        "stage1.checkpoint_every": 1000,
        "stage1.log_every": 5,
        "stage2.hidden": 32,
        "stage2.num_layers": 3,
        "stage2.steps": 20,
        "stage2.batch_size": 8,
        "stage2.val_every": 1000,
        "stage2.checkpoint_every": 1000,
        "stage2.log_every": 5,
        "sample.per_class": 1,          # still 1,000 grids: one per class
    },
}
CONFIGS = {"image": "imagenet.yaml"}
UNIT = {"image": "images"}
IMAGENET = {"train": 1_281_167, "val": 50_000}
VAL_SHARE = 50 / 1350  # ImageNet's val beside train + val
POLL_S = 0.2
MB = 1 << 20

# Speech and video: the demo configs' small models (already sized for 2 CPU cores) with the training
# stages cut to 20 steps of batch 8, as for image, and the conversion evaluation at the end of
# speech's stage 1 at its cheapest (one val utterance per speaker, one target, 0.5 s).
_SHORT = {
    "data.make_demo": False,
    "ray.use_gpu": False,
    "ray.cpus_per_worker": 1,
    "stage1.steps": 20,
    "stage1.batch_size": 8,
    "stage1.val_every": 1000,       # validated once, at the last step
    "stage1.checkpoint_every": 1000,
    "stage1.log_every": 5,
    "stage2.steps": 20,
    "stage2.batch_size": 8,
    "stage2.val_every": 1000,
    "stage2.checkpoint_every": 1000,
    "stage2.log_every": 5,
}
OVERRIDES["speech"] = {
    **_SHORT,
    "data.samples_per_shard": 1000,     # utterances per shard (~1 h of audio)
    "stage1.shown_seconds": 0.25,       # the reconstructions written at validation (generated sample by sample)
    "sample.convert_per_speaker": 1,    # the conversion evaluation: one val utterance of every speaker ...
    "sample.convert_targets": 1,        # ... to one other speaker ...
    "sample.convert_seconds": 0.5,      # ... cut to 0.5 s (generation is sample by sample)
    "sample.per_class": 1,
    "sample.seconds": 0.5,
}
OVERRIDES["video"] = {
    **_SHORT,
    "data.samples_per_shard": 200,      # clips per shard (each makes 7 windows)
    "sample.windows": 8,
    "sample.draws": 1,
}
CONFIGS.update(speech="demo-speech.yaml", video="demo-video.yaml")
UNIT.update(speech="utterances", video="clips")
# What the prediction extrapolates to: (input samples, what they are)
TARGETS = {
    "image": (IMAGENET["train"] + IMAGENET["val"], "images (ImageNet: 1.28M train + 50k val)"),
    "speech": (44_000, "utterances (VCTK 0.92: ~44,000 utterances, 44 hours, 110 speakers)"),
    # the paper's video data (DeepMind Lab) has no clip count; 10,000 clips of the demo's 32 frames
    "video": (10_000, "clips (32 frames each, 70,000 windows of 8; the paper's DeepMind Lab gives no count)"),
}
SPEECH_MIN_PER_SPEAKER = 16  # utterances: 2 val at val_fraction 0.1, as the conversion evaluation needs
VIDEO_VAL_SHARE = 0.1  # the demo's 24 val clips beside 216 train


# ---- the tree ---------------------------------------------------------------------------------------


def wnids(classes: int) -> list[str]:
    """wnid-like class names (n + 8 digits), distinct and sorted as listed."""
    return [f"n0{1_000_000 + i * 7919:07d}" for i in range(classes)]


def imagenet_size(rng) -> tuple[int, int]:
    """(width, height) drawn like ImageNet's: most 500 on the long side (4:3 or 3:2, landscape twice
    as often as portrait), a third smaller, a few larger."""
    u = rng.random()
    if u < 0.6:
        long, short = 500, int(rng.choice([375, 375, 375, 333]))
    elif u < 0.92:
        long = int(rng.integers(150, 480))
        short = int(long * rng.uniform(0.6, 1.0))
    else:
        long = int(rng.integers(600, 1200))
        short = int(long * rng.uniform(0.65, 0.85))
    return (long, short) if rng.random() < 2 / 3 else (short, long)


def synthetic_photo(seed: int, index: int) -> bytes:
    """A JPEG (quality 90) of ImageNet's sizes, image-like enough for JPEG and PNG to work as on
    photos: a smooth two-colour gradient, shapes, a blur, noise; different per index, seeded."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng([seed, index])
    w, h = imagenet_size(rng)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    t = (x * np.cos(angle) + y * np.sin(angle))
    t = (t - t.min()) / max(float(np.ptp(t)), 1.0)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    pixels = c0 + t[..., None] * (c1 - c0)
    img = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(w // 10 + 1, w // 2 + 2)), y0 + int(rng.integers(h // 10 + 1, h // 2 + 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.ellipse([x0, y0, x1, y1], fill=colour)
        elif kind == 1:
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        else:
            draw.polygon([(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(3)], fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.5))))
    noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, rng.uniform(3, 10), (h, w, 3))
    out = io.BytesIO()
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def _complete(folder: Path) -> dict | None:
    marker = folder / ".complete"
    return json.loads(marker.read_text()) if marker.is_file() else None


def make_pool(trees: Path, size: int, seed: int) -> tuple[Path, dict]:
    """The first `size` of a seeded series of synthetic JPEGs under trees/ (made once, extended when
    a larger pool is asked): (folder, {files, mean_width, mean_height, mean_kb} of those `size`)."""
    folder = trees / f"pool-image-s{seed}"
    done = _complete(folder) or {"sizes": []}  # (width, height, bytes) of each file made so far
    sizes = done["sizes"]
    if len(sizes) < size:
        folder.mkdir(parents=True, exist_ok=True)
        from PIL import Image

        for i in range(len(sizes), size):
            data = synthetic_photo(seed, i)
            (folder / f"{i:05d}.JPEG").write_bytes(data)
            sizes.append([*Image.open(io.BytesIO(data)).size, len(data)])
        tmp = folder / ".complete.tmp"
        tmp.write_text(json.dumps({"sizes": sizes}))
        tmp.rename(folder / ".complete")
    used = sizes[:size]
    return folder, {"files": size, "mean_width": sum(w for w, _, _ in used) / size,
                    "mean_height": sum(h for _, h, _ in used) / size,
                    "mean_kb": sum(b for _, _, b in used) / size / 1024}


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or no hard links here
        shutil.copyfile(src, dst)


def split_sizes(n: int) -> tuple[int, int]:
    val = max(1, round(n * VAL_SHARE))
    return n - val, val


def make_image_tree(trees: Path, n: int, classes: int, pool_size: int, seed: int) -> tuple[Path, dict]:
    """The ImageNet-layout tree of n images (train over `classes` folders, round robin; val flat with
    its CSV), hard links into the pool; reused when complete."""
    import numpy as np

    pool, pool_info = make_pool(trees, pool_size, seed)
    root = trees / f"image-n{n}-c{classes}-p{pool_size}-s{seed}"
    done = _complete(root)
    if done is not None:
        return root, done
    shutil.rmtree(root, ignore_errors=True)
    start = time.perf_counter()
    names = wnids(classes)
    n_train, n_val = split_sizes(n)
    pick = np.random.default_rng([seed, n]).integers(0, pool_size, n)
    files = [pool / f"{i:05d}.JPEG" for i in range(pool_size)]
    for c in names:
        (root / "train" / c).mkdir(parents=True)
    for k in range(n_train):
        c = names[k % classes]
        _link(files[pick[k]], root / "train" / c / f"{c}_{k // classes + 1}.JPEG")
    (root / "val").mkdir()
    rows = ["ImageId,PredictionString"]
    for j in range(n_val):
        image_id = f"ILSVRC2012_val_{j + 1:08d}"
        _link(files[pick[n_train + j]], root / "val" / f"{image_id}.JPEG")
        rows.append(f"{image_id},{names[j % classes]} 0 0 100 100 ")
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    info = {"train": n_train, "val": n_val, "classes": classes, "pool": pool_info,
            "seconds": time.perf_counter() - start}
    (root / ".complete").write_text(json.dumps(info))
    return root, info


def _write_complete(folder: Path, info: dict) -> None:
    tmp = folder / ".complete.tmp"
    tmp.write_text(json.dumps(info))
    tmp.rename(folder / ".complete")


def make_speech_pool(trees: Path, voices: int, per_voice: int, seed: int) -> tuple[Path, dict]:
    """The speech demo's corpus (pipeline/modalities/speech/demo.py: espeak-ng voices at 48 kHz) of
    `voices` voices x `per_voice` sentences, made once, and each WAV as 16-bit FLAC (VCTK 0.92's
    format) in flac/: (folder, {voices: {voice: gender}, files: [{voice, stem, seconds, bytes}]})."""
    folder = trees / f"pool-speech-v{voices}x{per_voice}-s{seed}"
    done = _complete(folder)
    if done is not None:
        return folder, done
    import soundfile as sf

    from pipeline.modalities.speech.demo import FLITE_VOICES, VOICES, make_demo_corpus

    raw = folder / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    make_demo_corpus(raw, per_speaker=per_voice, seed=seed, speakers=voices)  # resumes: a finished corpus stays
    (folder / "flac").mkdir(exist_ok=True)
    files = []
    for voice in sorted(p.name for p in (raw / "wav48").iterdir()):
        for wav in sorted((raw / "wav48" / voice).glob("*.wav")):
            x, rate = sf.read(wav, dtype="int16")
            dst = folder / "flac" / f"{wav.stem}.flac"
            sf.write(dst, x, rate, format="FLAC", subtype="PCM_16")
            files.append({"voice": voice, "stem": wav.stem, "seconds": len(x) / rate, "bytes": dst.stat().st_size})
    info = {"voices": {v: {**VOICES, **FLITE_VOICES}[v][3] for v in sorted({f["voice"] for f in files})}, "files": files}
    _write_complete(folder, info)
    return folder, info


def speech_speakers(n: int, speakers: int) -> int:
    """Fake speakers of a tree of n utterances: `speakers`, fewer where each would get under
    SPEECH_MIN_PER_SPEAKER utterances (at least 2: conversion needs two)."""
    return max(2, min(speakers, n // SPEECH_MIN_PER_SPEAKER))


def make_speech_tree(trees: Path, n: int, speakers: int, voices: int, per_voice: int,
                     seed: int) -> tuple[Path, dict]:
    """A VCTK 0.92 tree of n utterances: `wav48_silence_trimmed/pXXX/pXXX_NNN_mic{1,2}.flac` (mic2 as
    VCTK ships it; the listing skips it), `txt/pXXX/pXXX_NNN.txt`, `speaker-info.txt`; speakers
    p225, p226, ... (speech_speakers), each with n / speakers utterances, all hard links to the pool
    files of one pool voice (speaker i: voice i mod voices), drawn seeded; reused when complete."""
    import numpy as np

    pool, pool_info = make_speech_pool(trees, voices, per_voice, seed)
    count = speech_speakers(n, speakers)
    root = trees / f"speech-n{n}-k{speakers}-v{voices}x{per_voice}-s{seed}"
    done = _complete(root)
    if done is not None:
        return root, done
    shutil.rmtree(root, ignore_errors=True)
    start = time.perf_counter()
    by_voice: dict[str, list[dict]] = {}
    for f in pool_info["files"]:
        by_voice.setdefault(f["voice"], []).append(f)
    voice_names = sorted(by_voice)
    rng = np.random.default_rng([seed, n])
    names = [f"p{225 + i}" for i in range(count)]
    seconds = 0.0
    rows = ["ID  AGE  GENDER  ACCENTS  REGION  COMMENTS"]
    for i, name in enumerate(names):
        voice = voice_names[i % len(voice_names)]
        files = by_voice[voice]
        (root / "wav48_silence_trimmed" / name).mkdir(parents=True)
        (root / "txt" / name).mkdir(parents=True)
        for j, pick in enumerate(rng.integers(0, len(files), n // count + (i < n % count)), start=1):
            f = files[pick]
            key = f"{name}_{j:03d}"
            for mic in ("mic1", "mic2"):
                _link(pool / "flac" / f"{f['stem']}.flac", root / "wav48_silence_trimmed" / name / f"{key}_{mic}.flac")
            _link(pool / "raw" / "txt" / voice / f"{f['stem']}.txt", root / "txt" / name / f"{key}.txt")
            seconds += f["seconds"]
        rows.append(f"{name}  {20 + i % 40}  {pool_info['voices'][voice]}  American  espeak-ng voice {voice}")
    (root / "speaker-info.txt").write_text("\n".join(rows) + "\n")
    info = {"utterances": n, "speakers": count, "voices": len(voice_names), "per_voice": per_voice,
            "hours_untrimmed": seconds / 3600, "pool_files": len(pool_info["files"]),
            "pool_mean_seconds": sum(f["seconds"] for f in pool_info["files"]) / len(pool_info["files"]),
            "pool_mean_kb": sum(f["bytes"] for f in pool_info["files"]) / len(pool_info["files"]) / 1024,
            "seconds": time.perf_counter() - start}
    _write_complete(root, info)
    return root, info


def make_video_pool(trees: Path, clips: int, seed: int) -> tuple[Path, dict]:
    """The video demo's clips (pipeline/modalities/video/demo.py: ViZDoom, 32 frames of 64x64 at 15
    fps, each with its actions) made once: `clips` train clips and a sixth as many val clips (from
    the maps train never sees) under raw/: (folder, {train: [stems], val: [stems], mean_kb})."""
    folder = trees / f"pool-video-c{clips}-s{seed}"
    done = _complete(folder)
    if done is not None:
        return folder, done
    from pipeline.modalities.video.demo import make_demo_data

    folder.mkdir(parents=True, exist_ok=True)
    made = make_demo_data(folder / "raw", seed=seed, train_clips=clips, val_clips=max(2, clips // 6), workers=2)
    stems = {s: sorted(p.name[:-4] for p in (folder / "raw" / s).glob("*.mp4")) for s in ("train", "val")}
    sizes = [p.stat().st_size for p in (folder / "raw").glob("*/*.mp4")]
    info = {**stems, "mean_kb": sum(sizes) / len(sizes) / 1024, "codec": made.get("codec"),
            "frames": made.get("frames", 32), "size": made.get("size", 64)}
    _write_complete(folder, info)
    return folder, info


def make_video_tree(trees: Path, n: int, pool_clips: int, seed: int) -> tuple[Path, dict]:
    """The video layout (pipeline/modalities/video/layout.py) with n clips: `train/clip_NNNNNN.mp4`
    and `val/...`, each beside its `clip_NNNNNN.actions.json`, and `actions.json` in the root; val is
    VIDEO_VAL_SHARE of n. Train clips are hard links to pool train clips, val clips to pool val clips
    (renamed; the actions file linked with its clip), drawn seeded; reused when complete."""
    import numpy as np

    pool, pool_info = make_video_pool(trees, pool_clips, seed)
    root = trees / f"video-n{n}-p{pool_clips}-s{seed}"
    done = _complete(root)
    if done is not None:
        return root, done
    shutil.rmtree(root, ignore_errors=True)
    start = time.perf_counter()
    n_val = max(1, round(n * VIDEO_VAL_SHARE))
    counts = {"train": n - n_val, "val": n_val}
    rng = np.random.default_rng([seed, n])
    k = 0
    for split, count in counts.items():
        (root / split).mkdir(parents=True)
        stems = pool_info[split]
        for pick in rng.integers(0, len(stems), count):
            k += 1
            src = pool / "raw" / split / stems[pick]
            _link(Path(f"{src}.mp4"), root / split / f"clip_{k:06d}.mp4")
            _link(Path(f"{src}.actions.json"), root / split / f"clip_{k:06d}.actions.json")
    shutil.copyfile(pool / "raw" / "actions.json", root / "actions.json")
    info = {**counts, "pool_train": len(pool_info["train"]), "pool_val": len(pool_info["val"]),
            "pool_mean_kb": pool_info["mean_kb"], "frames": pool_info["frames"], "size": pool_info["size"],
            "seconds": time.perf_counter() - start}
    _write_complete(root, info)
    return root, info


# ---- the process sampler ----------------------------------------------------------------------------


def _pss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# Ray's own processes that take a `ray::` title as workers do
RAY_SYSTEM_TITLES = {"DashboardAgent", "RuntimeEnvAgent", "Dashboard", "DashboardHead", "LogMonitor", "Monitor"}


def _kind(cmdline: list[str], name: str) -> tuple[str, str]:
    """(class, kind): ("worker", "RayTrainWorker") for `ray::RayTrainWorker.__execute`, ("system",
    "raylet") for Ray's own processes."""
    text = " ".join(cmdline) if cmdline else name
    if text.startswith("ray::"):
        title = re.sub(r"\.[A-Za-z_]\w*$", "", text[5:].split(" ")[0])  # an actor's method: the actor
        return "system" if title in RAY_SYSTEM_TITLES else "worker", title[:48]
    for part in cmdline:
        if part.endswith(".py"):
            return "system", os.path.basename(part)
    return "system", os.path.basename(cmdline[0]) if cmdline else name


class Sampler:
    """Every POLL_S seconds: RSS, PSS and CPU times of this process and all below it."""

    def __init__(self):
        import ray  # noqa: F401 - Ray ships psutil (ray/thirdparty_files) and puts it on the path
        import psutil

        self.psutil = psutil
        self.me = psutil.Process()
        self.lock = threading.Lock()
        self.cpu_last: dict[tuple, float] = {}  # (pid, create_time) -> user+system seconds
        self.procs: dict[tuple, psutil.Process] = {}
        self.seen: dict[tuple, dict] = {}
        self.total_rss_peak = self.total_pss_peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.begin(None)
        self.thread.start()

    def begin(self, label: str | None) -> None:
        """A new stage: CPU counted from each live process's reading now."""
        self.poll()  # the readings the stage starts from
        with self.lock:
            self.label = label
            self.cpu_start = dict(self.cpu_last)
            self.seen: dict[tuple, dict] = {}
            self.total_rss_peak = self.total_pss_peak = 0
            self.started = time.perf_counter()
        self.poll()

    def _run(self) -> None:
        while not self.stop.wait(POLL_S):
            self.poll()

    def poll(self) -> None:
        psutil = self.psutil
        try:
            procs = [self.me] + self.me.children(recursive=True)
        except psutil.Error:
            return
        rss_sum = pss_sum = 0
        with self.lock:
            for p in procs:
                try:
                    with p.oneshot():
                        key = (p.pid, p.create_time())
                        t = p.cpu_times()
                        rss = p.memory_info().rss
                        cmd = p.cmdline()
                        name = p.name()
                        ppid = p.ppid()
                except psutil.Error:
                    continue
                pss = _pss_kb(p.pid)
                self.cpu_last[key] = t.user + t.system
                rss_sum += rss
                pss_sum += (pss or 0) * 1024
                if p.pid == self.me.pid:
                    cls, kind = "driver", "driver"
                else:
                    cls, kind = _kind(cmd, name)
                rec = self.seen.setdefault(key, {"pid": p.pid, "ppid": ppid, "cls": cls, "kind": kind,
                                                 "rss_peak": 0, "rss_first": rss})
                if kind != "IDLE" and (rec["kind"] == "IDLE" or rec["cls"] != "worker"):
                    rec["cls"], rec["kind"] = cls, kind  # a worker takes its task's or actor's name
                rec["rss_peak"] = max(rec["rss_peak"], rss)
            self.total_rss_peak = max(self.total_rss_peak, rss_sum)
            self.total_pss_peak = max(self.total_pss_peak, pss_sum)

    def end(self, samples: int) -> dict:
        """The figures of the stage begun last."""
        self.poll()
        with self.lock:
            wall = time.perf_counter() - self.started
            cpu = sum(v - self.cpu_start.get(k, 0.0) for k, v in self.cpu_last.items() if k in self.seen)
            seen = [dict(r) for r in self.seen.values()]
        worker_pids = {r["pid"]: r for r in seen if r["cls"] == "worker"}
        for r in seen:  # forked from a worker (DataLoader processes): its children
            parent = worker_pids.get(r["ppid"])
            if parent is not None and r["cls"] == "worker" and r["kind"] == parent["kind"]:
                r["kind"] += " (child)"
        workers = [r for r in seen if r["cls"] == "worker" and r["kind"] != "IDLE"]
        system = [r for r in seen if r["cls"] == "system"]
        driver = next(r for r in seen if r["cls"] == "driver")
        top = max(workers, key=lambda r: r["rss_peak"], default=None)
        return {
            "wall_s": wall,
            "cpu_s": cpu,
            "cpu_ms_per_sample": 1000 * cpu / samples,
            "driver_peak_mb": driver["rss_peak"] / MB,
            "worker_peak_mb": top["rss_peak"] / MB if top else 0.0,
            "worker_peak_kind": top["kind"] if top else "",
            "workers_seen": len(workers),
            "worker_kinds": sorted({r["kind"] for r in workers}),
            "system_peak_mb": max((r["rss_peak"] for r in system), default=0) / MB,
            "total_rss_peak_mb": self.total_rss_peak / MB,
            "total_pss_peak_mb": self.total_pss_peak / MB,
            "train_worker_peaks_mb": sorted((r["rss_peak"] / MB for r in workers if r["kind"] == "RayTrainWorker"),
                                            reverse=True),
            "train_worker_first_mb": sorted((r["rss_first"] / MB for r in workers if r["kind"] == "RayTrainWorker"),
                                            reverse=True),
        }

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


# ---- one size ---------------------------------------------------------------------------------------


def _bytes(folder: str, suffix: str = "") -> int:
    total = 0
    for base, _, files in os.walk(folder):
        total += sum(os.path.getsize(os.path.join(base, f)) for f in files if f.endswith(suffix))
    return total


def _artifact_bytes(settings, run_id: str) -> int:
    from mlflow import MlflowClient

    uri = MlflowClient(settings.tracking_uri).get_run(run_id).info.artifact_uri
    return _bytes(uri.removeprefix("file://")) if "://" not in uri.removeprefix("file://") else 0


def settings_for(modality: str, workdir: Path, root: Path, workers: int, num_cpus: int | None):
    from pipeline.config import load_settings

    tree = {**OVERRIDES[modality], "workdir": str(workdir), "data.root": str(root), "ray.num_workers": workers,
            "ray.num_cpus": num_cpus}
    return load_settings(REPO / "configs" / CONFIGS[modality], [f"{k}={json.dumps(v)}" for k, v in tree.items()])


def run_size(modality: str, root: Path, n: int, a, sampler: Sampler, say) -> dict:
    """Every stage on the tree at `root` in a fresh workdir: {stage: figures}. The stages' own output
    goes where fds 1 and 2 go; `say` prints the bench's lines."""
    import ray

    from pipeline.runtime import init_ray
    from pipeline.stages.pipeline import stages

    fns = dict(stages())
    workdir = Path(tempfile.mkdtemp(prefix=f"vqvae-scale-{modality}-{n}-", dir=a.workdir))
    settings = settings_for(modality, workdir, root, a.workers, a.num_cpus)
    out: dict[str, dict] = {}
    address = os.environ.get("RAY_ADDRESS")

    def timed(label: str, fn, s) -> object:
        sampler.begin(label)
        result = fn(s)
        sys.stdout.flush()
        sys.stderr.flush()
        out[label] = sampler.end(n)
        f = out[label]
        say(f"  {label:11s} {f['wall_s']:7.1f} s  {f['cpu_ms_per_sample']:8.2f} CPU ms/sample  driver "
            f"{f['driver_peak_mb']:5.0f} MB  largest worker {f['worker_peak_mb']:5.0f} MB ({f['worker_peak_kind']})")
        return result

    try:
        timed("ray start", init_ray, settings)
        manifest = timed("shard", fns["shard"], settings)
        out["shard"]["out_bytes"] = _bytes(settings.shards_dir, ".tar")
        out["shard"]["samples"] = {s: v["samples"] for s, v in manifest["splits"].items()}
        if modality != "image":  # the modality's additive figures: hours (speech), clips and frames (video)
            out["shard"]["stats"] = {s: {k: x for k, x in v.get("stats", {}).items() if "/" not in k}
                                     for s, v in manifest["splits"].items()}
        s1 = timed("stage1", fns["stage1"], settings)
        out["stage1"]["out_bytes"] = _artifact_bytes(settings, s1["run_id"])
        codes = timed("codes", fns["codes"], settings)
        out["codes"]["out_bytes"] = _bytes(settings.codes_dir, ".parquet")
        out["codes"]["rows"] = dict(codes["rows"])
        # as the arrays are held in memory (the Parquet files compress the repeats of a barely trained model)
        dtype_bytes = {"uint8": 1, "int8": 1, "uint16": 2, "int16": 2, "int32": 4, "int64": 8}.get(codes["dtype"], 8)
        out["codes"]["raw_bytes"] = sum(codes["rows"].values()) * math.prod(codes["latent_shape"] or [0]) * dtype_bytes
        if modality == "speech":  # codes of varying length: one per input_dims_per_code samples of audio
            hours = sum(st.get("hours", 0.0) for st in out["shard"]["stats"].values())
            out["codes"]["raw_bytes"] = round(hours * 3600 * settings.data.sample_rate
                                              / codes["input_dims_per_code"]) * dtype_bytes
        for w in a.stage2_workers:
            s2 = timed(f"stage2 w{w}", fns["stage2"], settings_for(modality, workdir, root, w, a.num_cpus))
            out[f"stage2 w{w}"]["out_bytes"] = _artifact_bytes(settings, s2["run_id"])
        if a.sample:
            path = timed("sample", fns["sample"], settings)
            out["sample"]["out_bytes"] = _bytes(os.path.dirname(path))
    finally:
        ray.shutdown()
        if address is None:  # init_ray left the instance's address for this process; it is gone now
            os.environ.pop("RAY_ADDRESS", None)
        if not a.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return out


# ---- figures ----------------------------------------------------------------------------------------


def exponent(ns: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log(y) against log(n) (None with fewer than 2 positive points)."""
    pts = [(math.log(n), math.log(y)) for n, y in zip(ns, ys) if y and y > 0]
    if len(pts) < 2 or len({x for x, _ in pts}) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def line(ns: list[float], ys: list[float]) -> tuple[float, float] | None:
    """Least-squares y = a + b n: (a, b)."""
    if len(ns) < 2 or len(set(ns)) < 2:
        return None
    mx, my = sum(ns) / len(ns), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(ns, ys)) / sum((x - mx) ** 2 for x in ns)
    return my - b * mx, b


FIGURES = ("wall_s", "cpu_ms_per_sample", "driver_peak_mb", "worker_peak_mb", "workers_seen", "system_peak_mb",
           "total_rss_peak_mb", "total_pss_peak_mb", "out_bytes", "raw_bytes")


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def summarise(runs: list[dict], a) -> dict:
    ns = [r["n"] for r in runs]
    labels = list(dict.fromkeys(k for r in runs for k in r["stages"]))
    exps: dict[str, dict] = {}
    for label in labels:
        exps[label] = {f: exponent(ns, [r["stages"].get(label, {}).get(f) for r in runs]) for f in FIGURES}
        exps[label]["cpu_s"] = exponent(ns, [r["stages"].get(label, {}).get("cpu_s") for r in runs])
    stage2 = {}
    for w in a.stage2_workers:
        label = f"stage2 w{w}"
        peaks = [max(r["stages"][label]["train_worker_peaks_mb"], default=0.0) for r in runs]
        fit = line(ns, peaks)
        inc = None
        if len(ns) >= 3:
            inc = exponent([n - ns[0] for n in ns[1:]], [p - peaks[0] for p in peaks[1:]])
        stage2[w] = {"peaks_mb": [r["stages"][label]["train_worker_peaks_mb"] for r in runs],
                     "fixed_mb": fit[0] if fit else None,
                     "per_sample_bytes": fit[1] * MB if fit else None,
                     "increase_exponent": inc, "peak_exponent": exponent(ns, peaks)}
    return {"exponents": exps, "stage2_memory": stage2}


def predict(runs: list[dict], summary: dict, a) -> dict:
    """Extrapolations to the modality's full data set (TARGETS: ImageNet, VCTK, 10k clips), per --predict-nodes."""
    target = TARGETS[getattr(a, "modality", "image")][0]
    ns = [r["n"] for r in runs]
    last = runs[-1]
    exps = summary["exponents"]
    out: dict = {"samples": target, "nodes": {}}
    mem = summary["stage2_memory"]
    per1 = mem.get(1, {}).get("per_sample_bytes")
    per2 = mem.get(2, {}).get("per_sample_bytes")
    sharded = bool(per1 and per2 and per2 < 0.75 * per1)
    fixed = mem.get(1, {}).get("fixed_mb")
    for nodes in a.predict_nodes:
        cpus = 16 * nodes
        workers = a.predict_workers_per_node * nodes
        row = {"cpus": cpus, "workers": workers, "wall_s": {}}
        for label, figs in last["stages"].items():
            b_cpu = exps[label].get("cpu_s")
            b_wall = exps[label].get("wall_s")
            if label in ("shard", "codes") and b_cpu is not None:
                row["wall_s"][label] = figs["cpu_s"] * (target / last["n"]) ** b_cpu / cpus
            elif b_wall is not None:
                row["wall_s"][label] = figs["wall_s"] * (target / last["n"]) ** max(b_wall, 0.0)
        if per1 is not None and fixed is not None and per1 > 0:
            held = target / workers if sharded else target
            row["stage2_worker_mb"] = fixed + per1 * held / MB
            row["stage2_node_mb"] = row["stage2_worker_mb"] * a.predict_workers_per_node
        out["nodes"][nodes] = row
    out["stage2_ranks_hold"] = "their share" if sharded else "all the codes"
    if not (per1 and per1 > 0):  # the data's part is below the peaks' noise (tens of MB) at these sizes
        out["stage2_ranks_hold"] = "(not measurable: the peaks did not grow beyond their noise; use larger sizes)"
    out["from_sizes"] = ns
    return out


def print_tables(runs: list[dict], summary: dict, pred: dict | None, unit: str) -> None:
    ns = [r["n"] for r in runs]
    labels = list(dict.fromkeys(k for r in runs for k in r["stages"]))
    for label in labels:
        print(f"\n{label}")
        print(f"  {'figure':20s}" + "".join(f"{n:>12,d}" for n in ns) + f"{'exponent':>10s}")
        for f in FIGURES:
            vals = [r["stages"].get(label, {}).get(f) for r in runs]
            if all(v is None for v in vals):
                continue
            b = summary["exponents"][label].get(f)
            print(f"  {f:20s}" + "".join(f"{_fmt(v):>12s}" for v in vals) + f"{_fmt(b):>10s}")
        kinds = [r["stages"].get(label, {}).get("worker_peak_kind", "") for r in runs]
        if any(kinds):
            print(f"  {'largest worker':20s}" + "".join(f"{k[:11]:>12s}" for k in kinds))
    print("\nstage 2, peak RSS of each RayTrainWorker (MB)")
    for w, m in summary["stage2_memory"].items():
        peaks = "  ".join("/".join(f"{p:.0f}" for p in ps) for ps in m["peaks_mb"])
        print(f"  {w} worker{'s' if w > 1 else ' '}: {peaks}; fixed {_fmt(m['fixed_mb'])} MB + "
              f"{_fmt(m['per_sample_bytes'])} bytes per sample; exponent of the peak {_fmt(m['peak_exponent'])}, "
              f"of its increase over the smallest size {_fmt(m['increase_exponent'])}")
    if pred:
        print(f"\nprediction for {pred['samples']:,d} {unit} (from sizes {pred['from_sizes']}; stage 2's ranks "
              f"were seen to hold {pred['stage2_ranks_hold']}):")
        for nodes, row in pred["nodes"].items():
            walls = ", ".join(f"{k} {v / 60:.1f} min" for k, v in row["wall_s"].items())
            mem = (f"; stage 2 {row['stage2_worker_mb']:.0f} MB per worker, {row['stage2_node_mb'] / 1024:.1f} GB "
                   f"per node" if "stage2_worker_mb" in row else "")
            print(f"  {nodes} node{'s' if nodes > 1 else ''} ({row['cpus']} CPUs, {row['workers']} workers): "
                  f"{walls}{mem}")


# ---- main -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", required=True, help="N: input samples (train + val)")
    p.add_argument("--modality", choices=sorted(CONFIGS), default="image")
    p.add_argument("--trees", type=Path, default=Path(tempfile.gettempdir()) / "vqvae-scale-trees",
                   help="where pools and trees are cached")
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--classes", type=int, default=1000, help="class folders (ImageNet: 1000)")
    p.add_argument("--pool", type=int, default=None,
                   help="image: distinct JPEGs the tree links to (at most N; 1000); speech: utterances per pool "
                        "voice (20); video: pool train clips (48, and a sixth as many val clips)")
    p.add_argument("--speakers", type=int, default=109, help="speech: fake speakers (VCTK: 109), fewer at small N")
    p.add_argument("--voices", type=int, default=8, help="speech: espeak-ng voices of the pool (at most 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="ray.num_workers of stage 1")
    p.add_argument("--stage2-workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--num-cpus", type=int, default=None, help="ray.num_cpus (default: the machine's)")
    p.add_argument("--sample", action="store_true", help="run the sample stage too (1 grid per class)")
    p.add_argument("--workdir", default=None, help="where the per-size workdirs go (default: the temp folder)")
    p.add_argument("--keep", action="store_true", help="keep each size's workdir")
    p.add_argument("--predict-nodes", type=int, nargs="+", default=[1, 4])
    p.add_argument("--predict-workers-per-node", type=int, default=4)
    p.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # internal: run one size here, write its figures
    p.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.pool is None:
        a.pool = {"image": 1000, "speech": 20, "video": 48}[a.modality]

    # MLflow in each workdir, and a new local Ray instance whose processes are this one's children
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID", "RAY_ADDRESS"):
        os.environ.pop(var, None)
    if a.one:
        return one_size(a)
    a.trees.mkdir(parents=True, exist_ok=True)
    runs = []
    start = time.perf_counter()
    for n in sorted(a.sizes):
        t = time.perf_counter()
        if a.modality != "image":
            root, tree = make_tree(a, n)
        else:
            root, tree = make_image_tree(a.trees, n, a.classes, min(a.pool, n), a.seed)
            pool = tree["pool"]
            print(f"{a.modality} N={n:,d}: train {tree['train']:,d} + val {tree['val']:,d} {UNIT[a.modality]} "
                  f"in {a.classes} classes at {root} ({time.perf_counter() - t:.0f} s to find or make; "
                  f"pool of {pool['files']} JPEGs, mean {pool['mean_width']:.0f}x{pool['mean_height']:.0f}, "
                  f"{pool['mean_kb']:.0f} KB)", flush=True)
        # Each size in a process of its own: its driver starts empty, as a job's does
        figures = Path(tempfile.mkstemp(prefix=f"vqvae-scale-{n}-", suffix=".json")[1])
        child = [sys.executable, str(Path(__file__).resolve()), "--modality", a.modality, "--sizes", str(n),
                 "--trees", str(a.trees), "--classes", str(a.classes), "--pool", str(a.pool), "--seed", str(a.seed),
                 "--workers", str(a.workers), "--stage2-workers", *map(str, a.stage2_workers),
                 "--one", str(figures), "--root", str(root)]
        child += ["--num-cpus", str(a.num_cpus)] if a.num_cpus else []
        child += ["--workdir", a.workdir] if a.workdir else []
        child += ["--sample"] if a.sample else []
        child += ["--keep"] if a.keep else []
        done = subprocess.run(child)
        if done.returncode:
            raise SystemExit(f"N={n}: the run failed (exit {done.returncode})")
        one = json.loads(figures.read_text())
        figures.unlink()
        if a.modality != "image":
            runs.append({"n": n, **data_figures(a.modality, tree, one), **one})
            continue
        runs.append({"n": n, "train": tree["train"], "val": tree["val"], **one})
    summary = summarise(runs, a)
    pred = predict(runs, summary, a) if len(runs) >= 2 else None
    if a.modality != "image":
        print_data(runs, a.modality)
    print_tables(runs, summary, pred, UNIT[a.modality] if a.modality == "image" else TARGETS[a.modality][1])
    print(f"\n{time.perf_counter() - start:.0f} s in all")
    classes = {"image": a.classes, "speech": max((r.get("speakers", 0) for r in runs), default=0)}.get(a.modality)
    result = {"modality": a.modality, "sizes": [r["n"] for r in runs], "classes": classes,
              "overrides": OVERRIDES[a.modality], "runs": runs, **summary, "prediction": pred}
    if a.json:
        a.json.write_text(json.dumps(result, indent=1, default=str))
    return result


def make_tree(a, n: int) -> tuple[Path, dict]:
    """Speech's or video's tree of n samples (found or made), and its line printed."""
    t = time.perf_counter()
    if a.modality == "speech":
        root, tree = make_speech_tree(a.trees, n, a.speakers, min(a.voices, 10), a.pool, a.seed)
        print(f"speech N={n:,d} utterances: {tree['speakers']} speakers (~{n / tree['speakers']:.0f} utterances "
              f"each), {tree['hours_untrimmed']:.2f} h of audio before the shard stage trims silence, VCTK 0.92 "
              f"layout (mic1 and mic2 FLACs at 48 kHz) at {root} ({time.perf_counter() - t:.0f} s to find or make; "
              f"pool of {tree['voices']} espeak-ng voices x {tree['per_voice']} utterances, mean "
              f"{tree['pool_mean_seconds']:.2f} s, {tree['pool_mean_kb']:.0f} KB)", flush=True)
    else:
        root, tree = make_video_tree(a.trees, n, a.pool, a.seed)
        print(f"video N={n:,d} clips: train {tree['train']:,d} + val {tree['val']:,d} clips of {tree['frames']} "
              f"frames ({tree['size']}x{tree['size']} MP4) with actions at {root} ({time.perf_counter() - t:.0f} s to "
              f"find or make; pool of {tree['pool_train']} + {tree['pool_val']} ViZDoom clips, mean "
              f"{tree['pool_mean_kb']:.0f} KB)", flush=True)
    return root, tree


def data_figures(modality: str, tree: dict, one: dict) -> dict:
    """A size's data as the shard stage found it: train and val in the unit (utterances, clips),
    hours of audio and speakers (speech), windows (video)."""
    shard = one["stages"]["shard"]
    stats = shard.get("stats", {})
    if modality == "speech":
        return {"train": int(stats.get("train", {}).get("utterances", 0)),
                "val": int(stats.get("val", {}).get("utterances", 0)),
                "hours": sum(st.get("hours", 0.0) for st in stats.values()), "speakers": tree["speakers"]}
    return {"train": int(stats.get("train", {}).get("clips", tree["train"])),
            "val": int(stats.get("val", {}).get("clips", tree["val"])), "windows": dict(shard["samples"]),
            "video_hours": sum(st.get("seconds", 0.0) for st in stats.values()) / 3600}


def print_data(runs: list[dict], modality: str) -> None:
    ns = [r["n"] for r in runs]
    print(f"\ndata (as sharded)\n  {'figure':20s}" + "".join(f"{n:>12,d}" for n in ns))
    rows = [("train " + UNIT[modality], [r["train"] for r in runs]), ("val " + UNIT[modality], [r["val"] for r in runs])]
    if modality == "speech":
        rows += [("hours (trimmed)", [r["hours"] for r in runs]), ("speakers", [r["speakers"] for r in runs])]
    else:
        rows += [("windows", [sum(r["windows"].values()) for r in runs]), ("hours", [r["video_hours"] for r in runs])]
    for name, vals in rows:
        print(f"  {name:20s}" + "".join(f"{_fmt(v):>12s}" for v in vals))


def one_size(a) -> dict:
    """One size in this process (the driver): the stages' own output to a log file, the bench's
    lines to stdout; the figures to `a.one`."""
    n = a.sizes[0]
    log_path = Path(tempfile.gettempdir()) / f"vqvae-scale-{a.modality}-{n}.log"
    out = os.fdopen(os.dup(1), "w", buffering=1)
    say = lambda line: print(line, file=out, flush=True)  # noqa: E731
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    saved = os.dup(1), os.dup(2)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log, 1)
    os.dup2(log, 2)
    sampler = Sampler()
    try:
        stages = run_size(a.modality, a.root, n, a, sampler, say)
    except BaseException:
        sys.stdout.flush()
        sys.stderr.flush()
        say(f"failed; the last of the stages' output ({log_path}):\n" + log_path.read_text()[-3000:])
        raise
    finally:
        sampler.close()
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
    result = {"stages": stages, "log": str(log_path)}
    a.one.write_text(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
