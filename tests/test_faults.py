"""Nothing wrong ever looks right: bad input, lost stores, re-sharded data, corrupt shards, two
jobs at once. Each case ends in a correct result or a one-line error with exit code 2, never in a
wrong result with exit 0, and never in a hang."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from PIL import Image

from conftest import REPO, TINY_STAGE1, ray_address, run_job, workdir_with_shards, write_config
from pipeline import modalities
from pipeline.config import load_settings
from pipeline.formats.reader import NoSamples, SkipCounter, train_batches
from pipeline.stages.shard import unique_keys
from pipeline.modalities.common import sample_key
from pipeline.errors import UserError
from pipeline.modalities import RawItem

TINY_STAGE2 = {"steps": 30, "batch_size": 32, "hidden": 16, "num_layers": 2, "kernel_size": 3,
               "checkpoint_every": 15, "val_every": 15, "log_every": 5}


def one_line_error(proc) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


# ---- keys and odd file names -----------------------------------------------------------------

def test_colliding_names_get_unique_keys_that_do_not_change_between_runs():
    names = ["x.jpg", "x.png", "x_1.jpg", "x 2.jpg", "x_2.jpg", "X.jpg"]
    items = [RawItem(key=sample_key(f"cat-{n.rsplit('.', 1)[0]}"), path=f"/r/train/cat/{n}") for n in names]
    keys = unique_keys(items)
    assert len(set(keys)) == len(names)
    assert unique_keys(items) == keys  # stable: the same listing, the same keys
    assert all("." not in k and " " not in k for k in keys)
    assert keys[0] == "cat-x" and keys[2] == "cat-x_1"  # a name keeps its plain key where it can


def _plant_odd_names(root: Path) -> dict[str, str]:
    """Colliding names, a non-UTF-8 name, links and a folder named like a photo; returns
    {what: reason fragment} of those that must be skipped."""
    cat = root / "train" / "cat"
    photo = Image.open(next(cat.glob("*.JPEG")))
    for name in ("x.jpg", "x.png", "x_1.jpg", "x 2.jpg", "x_2.jpg"):
        photo.save(cat / name)
    photo.save(os.fsdecode(bytes(cat) + b"/caf\xe9.jpg"))  # latin-1, not UTF-8
    (cat / "dangling.jpg").symlink_to(cat / "no-such-file.jpg")
    (cat / "folder.jpg").mkdir()
    (root / "train" / "zz").symlink_to(".")  # a loop: train/zz -> train
    (cat / "junk.jpg").write_bytes(b"\x00" * 100)  # not an image: the reason must hold no address
    return {"caf": "not valid UTF-8", "dangling.jpg": "dangling link", "folder.jpg": "a folder, not a file",
            "zz": "link loop", "junk.jpg": "not an image"}


@pytest.mark.slow
def test_odd_names_are_kept_or_skipped_with_a_reason_and_no_phantom_class(tmp_path, demo_raw, ray_local):
    root = tmp_path / "raw"
    shutil.copytree(demo_raw, root)
    skipped = _plant_odd_names(root)
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "w", root)
    from pipeline.stages.shard import shard

    first = shard(load_settings(cfg))
    again = shard(load_settings(cfg, ["overwrite=true"]))
    assert first["skipped"] == again["skipped"]  # deterministic reasons: the same manifest twice
    assert first["classes"] == sorted(p.name for p in (demo_raw / "train").iterdir())  # no "zz"
    reasons = {s["path"].rsplit("/", 1)[-1]: s["reason"] for s in first["skipped"]}
    for name, fragment in skipped.items():
        hit = [r for n, r in reasons.items() if n.startswith(name)]
        assert hit and fragment in hit[0], (name, reasons)
    assert all(" at 0x" not in r for r in reasons.values())
    assert "\\xe9" in next(s["path"] for s in first["skipped"] if "caf" in s["path"])  # named, escaped
    keys = []
    out = tmp_path / "w" / "shards" / "t"
    for tar_entry in first["splits"]["train"]["shards"]:
        with tarfile.open(out / tar_entry["path"]) as tar:
            keys += [m.name.split(".", 1)[0] for m in tar if m.name.endswith(".png")]
    assert len(keys) == len(set(keys)) == first["splits"]["train"]["samples"]
    assert len([k for k in keys if k.startswith("cat-x")]) == 5  # all five colliding names kept
    assert first["inputs"] == sum(v["samples"] for v in first["splits"].values()) + len(first["skipped"])


# ---- one line, exit 2, before any work ------------------------------------------------------

def test_an_unwritable_workdir_is_one_line(tmp_path, demo_raw):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cfg = write_config(tmp_path / "c.yaml", blocker / "work", demo_raw)
    line = one_line_error(run_job("shard.py", "--config", str(cfg), timeout=120))
    assert "not a writable folder" in line and str(blocker / "work") in line


def test_inputs_too_small_for_the_downsampling_fail_before_ray(tmp_path, demo_raw):
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "w", demo_raw, stage1={**TINY_STAGE1, "num_downsamples": 6})
    start = time.time()
    line = one_line_error(run_job("stage1.py", "--config", str(cfg), timeout=120))
    assert "stage1.num_downsamples=6" in line and "too small" in line
    assert time.time() - start < 60 and not (tmp_path / "w" / "runs").exists()


def test_a_tracking_uri_no_store_accepts_is_one_line(tmp_path, demo_raw):
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "w", demo_raw, mlflow={"tracking_uri": "garbage://x"})
    line = one_line_error(run_job("sample.py", "--config", str(cfg), timeout=120))
    assert "garbage://x" in line


def test_malformed_model_files_name_the_version_and_the_file(tmp_path):
    import mlflow

    from pipeline import tracking
    from pipeline.models.vqvae import VQVAE

    before = mlflow.get_tracking_uri()
    try:
        exp = tracking.setup_tracking(f"sqlite:///{tmp_path}/mlflow.db", "t")
        with tracking.start_run(exp, "broken") as run:
            folder = tmp_path / "model"
            tracking.save_model_files(VQVAE(hidden=8, codebook_size=4, code_dim=2, num_res_blocks=0), folder)
            (folder / tracking.WEIGHTS_FILE).write_bytes(b"these are not safetensors")
            mlflow.log_artifacts(str(folder), "model")
        tracking.register_model(run.info.run_id, "model", "vqvae-t", "val_mse", 0.1)
        with pytest.raises(UserError) as e:
            tracking.load_vqvae("models:/vqvae-t@champion")
    finally:
        mlflow.set_tracking_uri(before)
    message = str(e.value)
    assert "models:/vqvae-t@champion (models:/vqvae-t/1)" in message and tracking.WEIGHTS_FILE in message
    assert "\n" not in message


# ---- the readers never spin on shards that yield nothing ------------------------------------

@pytest.mark.parametrize("content", [b"", b"\x00" * 2048, b"this is not a tar file at all" * 40],
                         ids=["empty", "zeros", "junk"])
def test_training_batches_from_unreadable_shards_raise_instead_of_spinning(tmp_path, content):
    urls = []
    for i in range(3):
        (tmp_path / f"train-{i}.tar").write_bytes(content)
        urls.append(str(tmp_path / f"train-{i}.tar"))
    batches = train_batches(urls, 4, 0, 0, modalities.get("image"), SkipCounter("the test shards"))
    start = time.time()
    with pytest.raises(NoSamples, match="no sample could be read from the test shards"):
        next(batches)
    assert time.time() - start < 30


# ---- training faults: hangs and divergence end in one line ----------------------------------
# (one Train worker: a failure on one of several DDP workers is test_stage1's killed worker)

def _truncate_all(folder: Path) -> None:
    for tar in folder.glob("*.tar"):
        tar.write_bytes(b"")


@pytest.mark.slow
def test_a_stage_whose_shards_yield_nothing_ends_in_one_line_and_a_failed_run(tmp_path, ray_local, demo_raw,
                                                                             demo_shards):
    work = workdir_with_shards(tmp_path, demo_shards)
    _truncate_all(work / "shards" / "t" / "train")
    # max_failures 0: with the default 1 Ray Train starts a second worker group that fails the same
    # way (it retries every worker error) and the line is the same, ~40 s later on 2 loaded cores
    cfg = write_config(tmp_path / "c.yaml", work, demo_raw, stage1={**TINY_STAGE1, "max_failures": 0},
                       ray={"num_workers": 1})
    line = one_line_error(run_job("stage1.py", "--config", str(cfg), timeout=600, env=ray_address(ray_local)))
    assert "no sample could be read" in line and str(work / "shards" / "t") in line
    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert run.info.status == "FAILED"


@pytest.mark.slow
def test_a_diverging_run_stops_in_one_line_and_registers_nothing(tmp_path, ray_local, demo_raw, demo_shards):
    work = workdir_with_shards(tmp_path, demo_shards)
    cfg = write_config(tmp_path / "c.yaml", work, demo_raw,
                       stage1={**TINY_STAGE1, "lr": 1e30, "ema": False, "steps": 40, "max_failures": 0},
                       ray={"num_workers": 1})
    line = one_line_error(run_job("stage1.py", "--config", str(cfg), timeout=600, env=ray_address(ray_local)))
    assert "training diverged: the loss is" in line and "at step" in line and "nothing registered" in line
    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    assert not client.search_registered_models()
    [run] = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert run.info.status == "FAILED"


# ---- stale outputs: every stage output is reused only when made from exactly this -----------

@pytest.mark.slow
@pytest.mark.e2e
def test_outputs_are_keyed_by_content_across_a_lost_store_and_resharding(tmp_path, ray_local, demo_raw, demo_shards):
    from pipeline.stages.codes import codes
    from pipeline.stages.shard import shard
    from pipeline.stages.sample import sample
    from pipeline.stages.stage1 import run_name, stage1
    from pipeline.stages.stage2 import stage2

    work = workdir_with_shards(tmp_path, demo_shards)
    tiny = {**TINY_STAGE1, "steps": 20, "val_every": 20, "checkpoint_every": 20, "codebook_size": 8}
    cfg = write_config(tmp_path / "c.yaml", work, demo_raw, stage1=tiny, stage2=TINY_STAGE2,
                       sample={"per_class": 1}, ray={"num_workers": 1})
    settings = load_settings(cfg)
    first = stage1(settings)
    codes_8 = codes(settings)
    assert codes_8["codebook_size"] == 8

    # another MLflow store (the first lost, or swapped): its version 1 will be another model
    other = f"mlflow.tracking_uri=sqlite:///{work}/other/mlflow.db"
    with pytest.raises(UserError, match="not in the MLflow store"):
        stage1(load_settings(cfg, [other]))  # the finished run's model is not there: not "already finished"
    k16 = load_settings(cfg, ["stage1.codebook_size=16", other])
    second = stage1(k16)
    assert second["version"] == first["version"] == "1" and second["run_id"] != first["run_id"]
    codes_16 = codes(k16)  # not the K=8 codes of the lost v1
    assert codes_16["codebook_size"] == 16 and codes_16["vqvae_run_id"] == second["run_id"]
    prior = stage2(k16)
    assert prior["metrics"]["uniform_bits_per_code"] == 4.0  # log2 16: the right codes
    assert Path(sample(k16, report=False)).is_file()

    # re-sharding other data into the same folder: stage 1 is a new run, the codes are redone
    before = run_name(k16)
    shard(load_settings(cfg, ["overwrite=true", "data.samples_per_shard=7", other]))
    assert run_name(k16) != before
    with pytest.raises(UserError, match="made from other shards"):
        stage2(k16)  # the codes of the old shards are refused, not trained on
    redone = codes(k16)
    assert redone["identity"]["shards_manifest_sha256"] != codes_16["identity"]["shards_manifest_sha256"]

    # the shards themselves: another data config is refused in one line, not reused
    with pytest.raises(UserError, match=r"another data config \(differs in data.image_size\)"):
        shard(load_settings(cfg, ["data.image_size=24", "data.samples_per_shard=7", other]))

    # shards made before a data field existed: the field counts as its default, so they are reused;
    # a field they lack that is set to something else now is a change
    from pipeline.stages.shard import _is_default

    same = load_settings(cfg, ["data.samples_per_shard=7", other])
    path = Path(same.shards_dir) / "manifest.json"
    manifest = json.loads(path.read_text())
    made_with = manifest["source"]["data"]
    default = next(k for k in made_with if _is_default(same.data, k))
    path.write_text(json.dumps({**manifest, "source": {**manifest["source"],
                                                       "data": {k: v for k, v in made_with.items() if k != default}}}))
    assert shard(same)["splits"] == manifest["splits"]  # reused, not redone
    path.write_text(json.dumps({**manifest, "source": {**manifest["source"], "data": {
        k: v for k, v in made_with.items() if k != "samples_per_shard"}}}))
    with pytest.raises(UserError, match=r"another data config \(differs in data.samples_per_shard\)"):
        shard(same)


# ---- one writer per output -------------------------------------------------------------------

@pytest.mark.slow
def test_a_second_writer_is_refused_and_a_dead_writers_lock_is_taken_over(tmp_path, ray_local, demo_raw):
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "w", demo_raw, data={"name": "t", "root": str(demo_raw),
                                                                             "image_size": 16, "samples_per_shard": 2})
    lock = tmp_path / "w" / "shards" / "t.lock"
    env = {**os.environ, **ray_address(ray_local)}
    first = subprocess.Popen([sys.executable, str(REPO / "jobs" / "shard.py"), "--config", str(cfg)], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    try:
        deadline = time.time() + 120
        while not lock.exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert lock.exists(), "the first job never took the lock"
        line = one_line_error(run_job("shard.py", "--config", str(cfg), timeout=120, env=ray_address(ray_local)))
        assert f"being written by pid {first.pid}" in line
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert lock.exists()  # a killed job leaves its lock behind...
    third = run_job("shard.py", "--config", str(cfg), timeout=300, env=ray_address(ray_local))
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"taking over {lock} from pid {first.pid}" in third.stdout  # ...which the next one takes over
    assert not lock.exists() and (tmp_path / "w" / "shards" / "t" / "manifest.json").exists()


def test_numbers_are_not_booleans_and_must_be_finite(tmp_path, demo_raw):
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "w", demo_raw)
    for override, fragment in (("stage1.steps=true", "key 'stage1.steps': expected a number, got true"),
                               ("stage1.lr=.inf", "key 'stage1.lr': Input should be a finite number")):
        with pytest.raises(UserError, match=fragment.replace(".", r"\.")):
            load_settings(cfg, [override])


def test_inputs_smaller_than_the_target_are_upsampled_with_a_note(tmp_path):
    import io

    from pipeline.modalities.image import UPSAMPLED, ImageData

    image = modalities.get("image")
    data = ImageData(name="t", root=str(tmp_path), image_size=48, min_source_size=32)
    item = RawItem(key="k", path="p", cond={"labels": 0})
    for side, notes in ((40, [UPSAMPLED]), (64, [])):
        buf = io.BytesIO()
        Image.new("RGB", (side, side), (10, 200, 30)).save(buf, format="PNG")
        example = image.preprocess(buf.getvalue(), item, data)
        assert example[0].shape == (48, 48, 3) and image.notes(example) == notes


# ---- killed at a stage: the same command again finishes, from what was done -------------------

def _run_until(cfg: Path, work: Path, sign: str, env: dict) -> None:
    """Start jobs/pipeline.py and SIGKILL it, whole process group, once `sign` exists under work."""
    log = work / f"killed-{sign.split('/')[0]}.log"
    with open(log, "w") as said:
        job = subprocess.Popen([sys.executable, str(REPO / "jobs" / "pipeline.py"), "--config", str(cfg)], cwd=REPO,
                               env={**os.environ, **env}, stdout=said, stderr=subprocess.STDOUT,
                               start_new_session=True)
    deadline = time.time() + 400
    while not list(work.glob(sign)) and time.time() < deadline and job.poll() is None:
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert list(work.glob(sign)), f"the pipeline never got to {sign}; it said:\n{log.read_text()[-3000:]}"


@pytest.mark.slow
@pytest.mark.e2e
def test_a_pipeline_killed_in_codes_then_in_stage_2_finishes_when_run_again(tmp_path, ray_local, demo_raw,
                                                                            demo_shards):
    work = workdir_with_shards(tmp_path, demo_shards)
    cfg = write_config(tmp_path / "c.yaml", work, demo_raw, ray={"num_workers": 1}, sample={"per_class": 1},
                       stage1={**TINY_STAGE1, "steps": 20, "val_every": 20, "checkpoint_every": 20},
                       stage2={**TINY_STAGE2, "steps": 120, "checkpoint_every": 10, "val_every": 60})
    env = ray_address(ray_local)
    _run_until(cfg, work, "codes/t/.v1-*.tmp", env)  # killed while encoding
    _run_until(cfg, work, "runs/stage2-t-*/checkpoint_*", env)  # killed while fitting the prior
    again = run_job("pipeline.py", "--config", str(cfg), timeout=600, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "stage1 t: already finished" in again.stdout and "codes t: already dumped" in again.stdout
    assert "resuming stage2-t-" in again.stdout  # from its last checkpoint
    shards = json.loads((work / "shards" / "t" / "manifest.json").read_text())
    [codes] = work.glob("codes/t/v1-*/manifest.json")
    rows = json.loads(codes.read_text())["rows"]
    assert rows == {s: shards["splits"][s]["samples"] for s in ("train", "val")}
    assert not list(work.glob("codes/t/.*.tmp")) and not list(work.glob("**/*.lock"))
    assert list((work / "samples").glob("samples-1.png"))
