"""Codes, prior and sampling on a real local Ray instance and a real MLflow store and registry.

One tiny stage 1 is trained for the module; its codes are dumped, a prior is fitted on them and
sampled. Each test checks one behaviour of that chain.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from conftest import TINY_STAGE1, run_job, workdir_with_shards, write_config
from pipeline.config import load_settings
from pipeline.formats import codes as codeset
from pipeline.formats.reader import SkipCounter, eval_batches, shard_urls

pytestmark = pytest.mark.slow  # the chain trains on Ray

TINY_STAGE2 = {"steps": 150, "batch_size": 32, "hidden": 32, "num_layers": 4, "kernel_size": 3, "lr": 3e-3,
               "checkpoint_every": 50, "val_every": 75, "log_every": 10}


@pytest.fixture(scope="module")
def chain(tmp_path_factory, ray_local, demo_raw, demo_shards):
    """stage 1 -> codes -> stage 2, once for the module."""
    from pipeline.stages import codes, stage1, stage2

    tmp = tmp_path_factory.mktemp("chain")
    work = workdir_with_shards(tmp, demo_shards)
    # one Train worker with the batch of two (DDP: test_stage1.py): a process less per fit
    cfg = write_config(tmp / "c.yaml", work, demo_raw, stage1={**TINY_STAGE1, "batch_size": 64},
                       stage2={**TINY_STAGE2, "batch_size": 64}, codes={"batch_size": 64},
                       sample={"per_class": 3}, ray={"num_workers": 1, "cpus_per_worker": 1})
    settings = load_settings(cfg)
    return {"cfg": cfg, "settings": settings, "stage1": stage1.stage1(settings), "codes": codes.codes(settings),
            "stage2": stage2.stage2(settings)}


def _shard_labels(settings, split: str) -> dict[str, int]:
    _, urls = shard_urls(settings.shards_dir, split)
    labels = {}
    for url in urls:
        with tarfile.open(url) as tar:
            for m in tar:
                key, _, ext = m.name.rpartition(".")
                if ext == "cls":
                    labels[key] = int(tar.extractfile(m).read())
    return labels


def read_codes(folder: str, split: str):
    """(codes (N, 4, 4), labels (N,), keys) of a split whose code arrays all have one shape."""
    rows = codeset.read_rows(folder, split, keys=True)
    codes, cond, _ = rows.batch(np.arange(len(rows)))
    return codes.numpy(), cond["labels"].numpy(), rows.keys


def test_codes_cover_every_sample_with_the_smallest_dtype(chain):
    from pipeline import tracking

    settings, manifest = chain["settings"], chain["codes"]
    folder = settings.codes_dir_for(chain["stage1"]["version"], chain["stage1"]["run_id"])
    assert folder.endswith(f"/codes/t/v1-{chain['stage1']['run_id'][:12]}") and os.path.isfile(f"{folder}/manifest.json")
    assert manifest["codebook_size"] == 32 and manifest["dtype"] == "uint8" and manifest["latent_shape"] == [4, 4]
    assert manifest["vqvae_name"] == "vqvae-t" and manifest["vqvae_version"] == "1"
    assert manifest["format"] == 2 and manifest["input_dims_per_code"] == 3 * 4 * 4
    assert manifest["cond"]["labels"]["kind"] == "class" and manifest["cond"]["labels"]["size"] == 10
    shards = json.loads(open(f"{settings.shards_dir}/manifest.json").read())
    import pyarrow.parquet as pq

    for split in ("train", "val"):
        assert manifest["rows"][split] == shards["splits"][split]["samples"]
        table = pq.read_table(f"{folder}/{split}")
        assert table.column("codes").type.value_type.bit_width == 8  # uint8 on disk
        assert {tuple(s) for s in table.column("shape").to_pylist()} == {(4, 4)}
        codes, labels, keys = read_codes(folder, split)
        assert codes.shape == (shards["splits"][split]["samples"], 4, 4)
        assert codes.min() >= 0 and codes.max() < 32
        expected = _shard_labels(settings, split)
        assert sorted(keys) == sorted(expected)
        assert [expected[k] for k in keys] == labels.tolist()

    # the stored codes are the registered model's encoding of the val images
    vqvae = tracking.load_vqvae("models:/vqvae-t/1")
    _, urls = shard_urls(settings.shards_dir, "val")
    x = next(eval_batches(urls[:1], 1000, 0, 1, settings.modality, SkipCounter())).to("cpu").x
    codes, _, keys = read_codes(folder, "val")
    with tarfile.open(urls[0]) as tar:
        first_keys = list(dict.fromkeys(m.name.rpartition(".")[0] for m in tar))
    rows = [keys.index(k) for k in first_keys]
    assert torch.equal(vqvae.encode(x), torch.from_numpy(codes[rows]))


def test_dumping_again_for_the_same_version_does_nothing(chain, capsys):
    from pipeline.stages.codes import codes

    path = f"{chain['settings'].codes_dir_for('1', chain['stage1']['run_id'])}/manifest.json"
    mtime = os.stat(path).st_mtime_ns
    capsys.readouterr()
    assert codes(chain["settings"]) == chain["codes"]
    assert "nothing to do" in capsys.readouterr().out
    assert os.stat(path).st_mtime_ns == mtime


def test_prior_beats_the_uniform_prior_and_records_its_vqvae(chain):
    from mlflow import MlflowClient

    from pipeline import tracking

    metrics = chain["stage2"]["metrics"]
    assert metrics["step"] == TINY_STAGE2["steps"]
    assert metrics["uniform_bits_per_code"] == pytest.approx(math.log2(32))
    assert metrics["val_nll_bits_per_code"] < 0.9 * math.log2(32), metrics
    # the paper's bound: the prior's bits per code over the 48 input dims each code stands for,
    # plus the decoder's bits per dim (stage 1's val_recon_bits_per_dim)
    decoder_bits = chain["stage1"]["metrics"]["val_recon_bits_per_dim"]
    assert metrics["val_bits_per_dim"] == pytest.approx(metrics["val_nll_bits_per_code"] / 48 + decoder_bits)

    # The registered metrics are the val metrics of the registered checkpoint's own step.
    settings = chain["settings"]
    history = MlflowClient(settings.tracking_uri).get_metric_history(chain["stage2"]["run_id"],
                                                                    "val_nll_bits_per_code")
    assert {m.step: m.value for m in history}[metrics["step"]] == \
        pytest.approx(metrics["val_nll_bits_per_code"])

    info = tracking.resolve("models:/prior-t@champion")
    assert info["version"] == "1" and info["run_id"] == chain["stage2"]["run_id"]
    assert info["tags"]["vqvae_name"] == "vqvae-t" and info["tags"]["vqvae_version"] == "1"
    assert info["tags"]["codes"].endswith(f"/codes/t/v1-{chain['stage1']['run_id'][:12]}")
    meta = tracking.model_metadata("models:/prior-t@champion")
    assert meta["vqvae_version"] == "1" and meta["config"]["num_classes"] == 10
    assert meta["config"]["codebook_size"] == 32 and meta["latent_shape"] == [4, 4]
    run = MlflowClient(chain["settings"].tracking_uri).get_run(chain["stage2"]["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "stage2"
    assert tracking.load_prior("models:/prior-t@champion").num_classes == 10


def test_training_the_prior_again_does_nothing(chain, capsys):
    from pipeline.stages.stage2 import stage2

    capsys.readouterr()
    assert stage2(chain["settings"]) == chain["stage2"]
    assert "nothing to do" in capsys.readouterr().out


def test_sample_writes_one_row_per_class(chain):
    proc = run_job("sample.py", "--config", str(chain["cfg"]), timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    *_, path = proc.stdout.strip().splitlines()
    assert path == f"{chain['settings'].samples_dir}/samples-1.png"
    # the summary names the models and the MLflow run that holds the samples
    client = MlflowClient(chain["settings"].tracking_uri)
    [summary] = [line for line in proc.stdout.splitlines() if " decoded by " in line]
    run_id = summary.rsplit("MLflow run ", 1)[-1]
    assert client.get_run(run_id).data.tags["stage"] == "sample", summary
    assert "models:/prior-t/1 decoded by models:/vqvae-t/1" in summary, summary
    # run stage by stage, the job still writes the pipeline's report, from the registry's lineage,
    # with the prior's registered (best) checkpoint's numbers, and logs it on the sample run
    report = Path(chain["settings"].workdir) / "report-t.html"
    assert f"sample t: report {report}" in proc.stdout
    assert report.name in {a.path for a in client.list_artifacts(run_id)}
    page = report.read_text()
    lineage = page.split("class=lineage>", 1)[1].split("</p>", 1)[0]
    assert [part.split("<code>")[-1].split("</code>")[0] if "<code>" in part else part.split(" (")[0].strip()
            for part in lineage.split(" &rarr; ")] == \
        [chain["settings"].shards_dir, "models:/vqvae-t/1", "codes K=32", "models:/prior-t/1"], lineage
    nll = re.search(r"<td>stage 2 \(prior\)</td><td>val_nll_bits_per_code</td><td>([0-9.]+)</td>", page)
    assert float(nll.group(1)) == pytest.approx(chain["stage2"]["metrics"]["val_nll_bits_per_code"], rel=1e-3)
    psnr = re.search(r"<td>stage 1 \(VQ-VAE\)</td><td>val_psnr</td><td>([0-9.]+)</td>", page)
    assert float(psnr.group(1)) == pytest.approx(chain["stage1"]["metrics"]["val_psnr"], rel=1e-3)
    assert page.count("<img ") == 3  # the reconstructions, the codebook usage, the samples
    with Image.open(path) as img:
        size = 16 + 2  # image_size + grid padding
        assert img.size == (3 * size + 2, 10 * size + 2)
        pixels = np.asarray(img.convert("RGB"), dtype=float)
    tiles = np.stack([pixels[2 + r * size:r * size + size, 2 + c * size:c * size + size]
                      for r in range(10) for c in range(3)])  # (30, 16, 16, 3), padding cut away
    assert (tiles.reshape(30, -1).std(axis=1) > 1).all()  # every tile is a picture, not a flat fill
    rows = tiles.reshape(10, 3, -1).mean(axis=(1, 2))
    assert len(np.unique(rows.round(3))) == 10  # each class's row differs


def test_a_prior_of_another_vqvae_version_is_refused(chain):
    from pipeline import tracking

    # a second VQ-VAE version becomes the decoder champion; the prior was fitted on v1's codes
    version, _ = tracking.register_model(chain["stage1"]["run_id"], "model", "vqvae-t", metric="val_mse",
                                         value=0.0)
    tracking.set_alias("vqvae-t", "champion", version)
    try:
        proc = run_job("sample.py", "--config", str(chain["cfg"]), timeout=180)
    finally:
        tracking.set_alias("vqvae-t", "champion", "1")
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "vqvae-t v1" in lines[0] and f"models:/vqvae-t/{version}" in lines[0], proc.stderr


def _spoil_first_image(url: str, field: str) -> str:
    """Rewrite a shard with its first sample's image bytes replaced by junk; returns that key."""
    with tarfile.open(url) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar if m.isfile()]
    spoiled = next(m.name.rpartition(".")[0] for m, _ in members if m.name.endswith("." + field))
    with tarfile.open(url, "w") as tar:
        for m, data in members:
            if m.name == f"{spoiled}.{field}":
                data = b"not an image at all"
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    return spoiled


def _truncate(url: str, fraction: float) -> tuple[set[str], set[str]]:
    """Cut a shard short; returns (keys whose every member is still whole, keys that lost one)."""
    cut = int(os.path.getsize(url) * fraction)
    whole: dict[str, bool] = {}
    with tarfile.open(url) as tar:
        for m in tar:
            key = m.name.rpartition(".")[0]
            whole[key] = whole.get(key, True) and m.offset_data + m.size <= cut
    with open(url, "r+b") as f:
        f.truncate(cut)
    return {k for k, ok in whole.items() if ok}, {k for k, ok in whole.items() if not ok}


def test_a_corrupt_sample_and_a_truncated_shard_are_skipped_and_counted(chain, tmp_path):
    """Runs last in the module: it adds a codes run to the chain's store (the shards are a copy)."""
    from mlflow import MlflowClient

    from pipeline.stages.codes import codes

    settings = chain["settings"]
    work = workdir_with_shards(tmp_path, Path(settings.shards_dir))
    damaged = load_settings(chain["cfg"], [f"workdir={work}", f"mlflow.tracking_uri={settings.tracking_uri}",
                                           "codes.actors=2"])  # and two encoder actors give the same codes
    _, train_urls = shard_urls(damaged.shards_dir, "train")
    _, val_urls = shard_urls(damaged.shards_dir, "val")
    spoiled = _spoil_first_image(train_urls[0], "png")
    kept, lost = _truncate(val_urls[-1], 0.6)
    assert kept and lost

    manifest = codes(damaged)  # finishes: nothing is fatal
    assert manifest["skipped"] == {"train": 1, "val": len(lost)}
    run_id = chain["stage1"]["run_id"]
    good, folder = settings.codes_dir_for("1", run_id), damaged.codes_dir_for("1", run_id)
    for split, gone in (("train", {spoiled}), ("val", lost)):
        all_codes, all_labels, all_keys = read_codes(good, split)
        codes, labels, keys = read_codes(folder, split)
        assert set(keys) == set(all_keys) - gone and manifest["rows"][split] == len(keys)
        # the samples that were read are encoded (and labelled) exactly as from the undamaged shards
        rows = [all_keys.index(k) for k in keys]
        assert np.array_equal(codes, all_codes[rows]) and np.array_equal(labels, all_labels[rows])
    client = MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.experiment)
    [run] = client.search_runs([experiment.experiment_id], filter_string=f"tags.codes_dir = '{folder}'")
    assert run.data.metrics["skipped_train"] == 1 and run.data.metrics["skipped_val"] == len(lost)
