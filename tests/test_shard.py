"""Shard on a real local Ray instance: real photos in, webdataset tars + manifest out."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from conftest import REPO, ray_address, run_job, write_config
from pipeline.config import load_settings
from pipeline.stages.shard import shard
from pipeline.modalities import image as modality

pytestmark = pytest.mark.slow  # every test here starts Ray or runs a job


def reference_pixels(path: Path, size: int) -> np.ndarray:
    """An independent plain-Pillow version of the preprocessing: full decode, RGB, shorter side
    to `size` (bicubic), centre crop."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def read_tar(path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, ext = m.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, ray_local, demo_raw):
    tmp = tmp_path_factory.mktemp("shard")
    cfg = write_config(tmp / "c.yaml", tmp / "w", demo_raw)
    settings = load_settings(cfg)
    manifest = shard(settings)
    return settings, manifest, Path(settings.shards_dir)


def test_counts_labels_and_pixels_round_trip(sharded, demo_raw):
    settings, manifest, out = sharded
    classes = sorted(p.name for p in (demo_raw / "train").iterdir())
    assert manifest["classes"] == classes
    assert manifest["cond"] == {"labels": {"kind": "class", "size": len(classes), "names": classes}}
    size = settings.data.image_size
    for split in ("train", "val"):
        sources = {f"{p.parent.name}-{p.stem}": p for p in (demo_raw / split).glob("*/*.JPEG")}
        assert manifest["splits"][split]["samples"] == len(sources)
        seen, diffs = {}, []
        for tar_entry in manifest["splits"][split]["shards"]:
            seen.update(read_tar(out / tar_entry["path"]))
        assert set(seen) == set(sources)
        for key, fields in seen.items():
            src = sources[key]
            assert int(fields["cls"]) == classes.index(src.parent.name)
            stored = modality.decode_png(fields["png"])
            assert stored.shape == (size, size, 3)
            # lossless: the shard holds exactly what preprocessing produced
            assert np.array_equal(stored, modality.preprocess_pixels(src.read_bytes(), size, 32))
            # and that is the plain resize + centre crop (JPEG draft decoding differs by a little)
            diffs.append(np.abs(stored.astype(int) - reference_pixels(src, size)).mean())
        assert max(diffs) < 4.0 and np.mean(diffs) < 1.0, (max(diffs), np.mean(diffs))


def test_manifest_sha256_and_names(sharded):
    _, manifest, out = sharded
    for split in ("train", "val"):
        shards = manifest["splits"][split]["shards"]
        assert [s["path"] for s in shards] == [f"{split}/{split}-{i:06d}.tar" for i in range(len(shards))]
        for s in shards:
            assert hashlib.sha256((out / s["path"]).read_bytes()).hexdigest() == s["sha256"]
        assert sum(s["samples"] for s in shards) == manifest["splits"][split]["samples"]
    assert manifest["skipped"] == []
    assert json.loads((out / "manifest.json").read_text()) == manifest


def test_shards_read_back_with_webdataset(sharded):
    _, manifest, out = sharded
    urls = [str(out / s["path"]) for s in manifest["splits"]["train"]["shards"]]
    ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("rgb8").to_tuple("png", "cls")
    items = list(ds)
    assert len(items) == manifest["splits"]["train"]["samples"]
    assert all(img.shape == (16, 16, 3) and 0 <= cls < len(manifest["classes"]) for img, cls in items)


def test_rerun_is_a_no_op(sharded, capsys):
    settings, manifest, out = sharded
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert shard(settings) == manifest
    assert "nothing to do" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def _plant_bad_and_odd_files(root: Path) -> dict[str, str]:
    """Files that must be skipped (name -> reason fragment) and odd-but-valid ones to convert."""
    cls = root / "train" / "cat"
    good = next(cls.glob("*.JPEG")).read_bytes()
    (cls / "empty.JPEG").write_bytes(b"")
    (cls / "notes.JPEG").write_text("this is a text file, not a photo\n")
    (cls / "truncated.JPEG").write_bytes(good[: len(good) // 3])
    Image.new("RGB", (20, 40), (200, 10, 10)).save(cls / "tiny.png")
    photo = Image.open(next(cls.glob("cat_*.JPEG")))
    photo.convert("L").save(cls / "odd_gray.png")
    photo.convert("CMYK").save(cls / "odd_cmyk.jpg")
    photo.convert("P").save(cls / "odd_palette.png")
    photo.convert("RGBA").save(cls / "odd_rgba.PNG")
    sixteen = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257)
    Image.fromarray(sixteen).save(cls / "odd_16bit.png")  # 16-bit grayscale PNG
    (cls / "README.txt").write_text("not an input: no image extension\n")
    return {"empty.JPEG": "empty file", "notes.JPEG": "not an image", "truncated.JPEG": "corrupt",
            "tiny.png": "too small"}


def test_bad_files_are_skipped_with_reasons_and_odd_modes_converted(tmp_path, demo_raw, ray_local):
    root = tmp_path / "raw"
    shutil.copytree(demo_raw, root)
    bad = _plant_bad_and_odd_files(root)
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "w", root)
    proc = run_job("shard.py", "--config", str(cfg), env=ray_address(ray_local))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipped 4" in proc.stdout
    out = tmp_path / "w" / "shards" / "t"
    manifest = json.loads((out / "manifest.json").read_text())
    reasons = {Path(s["path"]).name: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == set(bad)
    for name, fragment in bad.items():
        assert fragment in reasons[name], reasons[name]
    inputs = sum(1 for p in root.rglob("*") if p.is_file() and modality.is_candidate(p.name))
    total = sum(v["samples"] for v in manifest["splits"].values())
    assert total + len(manifest["skipped"]) == inputs
    samples = {}
    for s in manifest["splits"]["train"]["shards"]:
        samples.update(read_tar(out / s["path"]))
    for odd in ("odd_gray", "odd_cmyk", "odd_palette", "odd_rgba", "odd_16bit"):
        px = modality.decode_png(samples[f"cat-{odd}"]["png"])
        assert px.shape == (16, 16, 3) and px.std() > 5, odd  # a real picture, not a flat clip
    gray = modality.decode_png(samples["cat-odd_gray"]["png"]).astype(int)
    deep = modality.decode_png(samples["cat-odd_16bit"]["png"]).astype(int)
    assert np.abs(gray - deep).max() <= 1  # 16-bit scaled down, not clipped at 255


def test_killed_run_is_detected_and_finished(tmp_path, demo_raw, sharded, ray_local):
    """SIGKILL the job once its first shard exists; the re-run redoes it and matches a clean run."""
    _, clean, _ = sharded
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "w", demo_raw)
    out = tmp_path / "w" / "shards" / "t"
    # small shards: many tasks, so the kill lands mid-run
    args = [sys.executable, str(REPO / "jobs" / "shard.py"), "--config", str(cfg),
            "--set", "data.samples_per_shard=2"]
    log = tmp_path / "killed.log"
    with open(log, "w") as said:
        proc = subprocess.Popen(args, cwd=REPO, stdout=said, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **ray_address(ray_local)})
    deadline = time.time() + 300  # a loaded 2-core machine starts Ray slowly
    while not list(out.glob("train/*.tar")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(out.glob("train/*.tar")), f"the job never wrote a shard; it said:\n{log.read_text()[-3000:]}"
    assert not (out / "manifest.json").exists(), "killed too late: the run had finished"
    rerun = run_job("shard.py", "--config", str(cfg), env=ray_address(ray_local))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "unfinished" in rerun.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    # same data, same shard size: byte-identical shards to the clean run
    assert [s["sha256"] for s in manifest["splits"]["train"]["shards"]] == \
        [s["sha256"] for s in clean["splits"]["train"]["shards"]]
    assert not [p for p in out.rglob(".*tmp*")], "temporary files left behind"


def test_a_job_runs_from_any_folder(tmp_path, demo_raw, sharded, ray_local):
    """Ray gives its workers the job script's folder on their path; jobs/ holds pipeline.py, which
    there shadowed the package (`'pipeline' is not a package` in every shard task) when a job was
    started from another folder. A job puts the repository there instead."""
    _, clean, _ = sharded
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "w", demo_raw)
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / "shard.py"), "--config", str(cfg)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env={**os.environ, **ray_address(ray_local)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "w" / "shards" / "t" / "manifest.json").read_text())
    assert manifest["splits"] == clean["splits"]


def test_overwrite_redoes_finished_output(tmp_path, demo_raw, ray_local):
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "w", demo_raw)
    first = shard(load_settings(cfg))
    redone = shard(load_settings(cfg, ["overwrite=true", "data.samples_per_shard=50"]))
    assert len(redone["splits"]["train"]["shards"]) == 3 < len(first["splits"]["train"]["shards"])
    assert sorted(p.name for p in (tmp_path / "w/shards/t/train").iterdir()) == \
        [f"train-{i:06d}.tar" for i in range(3)]


def _uniform_distinct(classes: int, draws: int) -> float:
    """Distinct classes expected among `draws` uniform draws from `classes` equally large ones."""
    return classes * (1 - (1 - 1 / classes) ** draws)


def test_shards_and_batches_mix_many_classes_and_the_same_listing_gives_the_same_bytes(tmp_path, ray_local):
    """A listing in class order (as every class-folder layout lists) is mixed before it is cut: each
    shard, and each training batch, holds about as many classes as a uniform draw. The shuffle
    buffer is kept at ImageNet's proportion (stage 1's 2,000 samples over ~1,300 a class: about
    1.5 classes' worth), so it alone could not mix class-ordered shards."""
    from pipeline.formats.reader import SkipCounter, shard_urls, train_batches

    classes, per_class = 100, 20
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = tmp_path / "raw" / "train" / f"n{c:08d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((32, 32, 3), rng.integers(0, 256, 3), np.uint8)
            Image.fromarray(pixels).save(folder / f"n{c:08d}_{i}.JPEG")
    manifests = []
    for run in ("a", "b"):
        cfg = write_config(tmp_path / f"{run}.yaml", tmp_path / run, tmp_path / "raw",
                           data={"samples_per_shard": 100, "val_fraction": 0.05})
        settings = load_settings(cfg)
        manifests.append(shard(settings))
    # the same listing and config: byte-identical shards (the order is a digest, not a generator)
    digests = [[s["sha256"] for s in m["splits"]["train"]["shards"]] for m in manifests]
    assert digests[0] == digests[1] and len(digests[0]) == 19

    _, urls = shard_urls(settings.shards_dir, "train")
    for url in urls[:-1]:  # every full shard of 100 samples: about a uniform draw's classes
        labels = [int(m["cls"]) for m in wds.WebDataset(url, shardshuffle=False, empty_check=False)]
        assert len(set(labels)) > 0.85 * _uniform_distinct(classes, len(labels)), (url, len(set(labels)))
    batch_size, distinct = 32, []
    batches = train_batches(urls, batch_size, seed=0, rank=0, modality=settings.modality, skips=SkipCounter(),
                            shuffle_buffer=30)
    for _ in range(30):
        distinct.append(len(set(next(batches).cond["labels"].tolist())))
    assert np.mean(distinct) > 0.9 * _uniform_distinct(classes, batch_size), distinct


def test_shards_cut_in_class_order_are_refused_not_reused(tmp_path, demo_raw, ray_local):
    """Shards of before the mix (their source record has no order) would train on batches of one or
    two classes: a rerun says so in one line rather than take them for finished."""
    from pipeline.errors import UserError

    cfg = write_config(tmp_path / "c.yaml", tmp_path / "w", demo_raw)
    shard(load_settings(cfg))
    path = tmp_path / "w/shards/t/manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["source"]["order"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r"shards/t were cut in listing \(class\) order, before 2026-12-06, .*"
                                        r"--set overwrite=true replaces them$"):
        shard(load_settings(cfg))
    assert shard(load_settings(cfg, ["overwrite=true"]))["source"]["order"] == "sha256(seed/key)"
