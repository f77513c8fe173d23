"""Speech with the WORLD decoder (`stage1.decoder: world`) through the pipeline job: shards that
carry WORLD frames and their statistics, a VQ-VAE whose frame loss falls, the evaluation's word
errors, codes at 20 ms, a prior, samples; then one convert job for many sources (a folder, a val
key), and the one-line refusal of shards without frames."""
from __future__ import annotations

import json
import math
import tarfile

import pytest
import soundfile as sf
import yaml

from conftest import ray_address, run_job

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_world_decoder_runs_through_the_pipeline_and_converts_a_folder_in_one_job(tmp_path, ray_local):
    from mlflow import MlflowClient

    from pipeline import tracking
    from pipeline.modalities.speech.demo import make_demo_corpus

    work = tmp_path / "w"
    make_demo_corpus(work / "raw", per_speaker=10, speakers=4)  # 2 espeak-ng voices, 2 flite voices
    config = {
        "workdir": str(work),
        "data": {"name": "said", "root": "{workdir}/raw", "modality": "speech", "sample_rate": 16000,
                 "world_frames": True, "min_samples": 320, "val_fraction": 0.3, "samples_per_shard": 10},
        "ray": {"num_workers": 1},
        "stage1": {"decoder": "world", "steps": 150, "batch_size": 8, "lr": 2e-3, "segment": 8000,
                   "val_segment": 16000, "codebook_size": 64, "code_dim": 16, "hidden": 32, "speaker_dim": 8,
                   "decoder_layers": 2, "shown_seconds": 0.5, "checkpoint_every": 50, "val_every": 50},
        "stage2": {"steps": 40, "batch_size": 8, "hidden": 16, "num_layers": 4, "cycle": 2,
                   "checkpoint_every": 20, "val_every": 20},
        "sample": {"per_class": 1, "seconds": 0.5, "convert_per_speaker": 1, "convert_targets": 1,
                   "convert_seconds": 10.0},
    }
    cfg = tmp_path / "said.yaml"
    cfg.write_text(yaml.safe_dump(config))
    env = ray_address(ray_local)
    proc = run_job("pipeline.py", "--config", str(cfg), timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # shards: every sample has its frames; the train split's tallies hold their statistics
    manifest = json.loads((work / "shards" / "said" / "manifest.json").read_text())
    stats = manifest["splits"]["train"]["stats"]
    assert stats["world/frames"] > 28 * 100  # 28 sentences of over a second, 100 frames a second
    assert all(stats[f"world/speaker/{s}/voiced"] > 0 for s in range(4))
    with tarfile.open(work / "shards" / "said" / manifest["splits"]["train"]["shards"][0]["path"]) as tar:
        names = tar.getnames()
    keys = {n.split(".", 1)[0] for n in names}
    assert {f"{k}.world.npy" for k in keys} <= set(names)

    uri = f"sqlite:///{work}/mlflow.db"
    tracking.setup_tracking(uri, "said")
    client = MlflowClient(uri)
    vqvae = tracking.resolve("models:/vqvae-said@champion")
    assert vqvae["tags"]["metric_scale"] == "decoder=world sample_rate=16000"
    history = [m.value for m in sorted(client.get_metric_history(vqvae["run_id"], "val_feature_loss"),
                                       key=lambda m: m.step)]
    assert len(history) == 3 and history[-1] < 0.9 * history[0], history  # it learns
    metrics = client.get_run(vqvae["run_id"]).data.metrics
    assert metrics["conversions"] == 4
    assert all(0 <= metrics[k] <= 2 for k in ("source_word_error", "reconstruction_word_error",
                                              "conversion_word_error"))

    [codes_manifest] = (work / "codes" / "said").glob("v1-*/manifest.json")
    assert json.loads(codes_manifest.read_text())["input_dims_per_code"] == 320  # a code per 20 ms
    prior = tracking.resolve("models:/prior-said@champion")
    assert float(prior["tags"]["metric.val_nll_bits_per_code"]) < math.log2(64)
    wavs = sorted((work / "samples").glob("samples-1-*.wav"))
    assert len(wavs) == 4
    audio, rate = sf.read(wavs[0])
    assert rate == 16000 and len(audio) == round(0.5 * 16000 / 320) * 320 and abs(audio).max() > 0.01

    # one job, many sources: a folder of two recordings and a val key
    folder = tmp_path / "recordings"
    folder.mkdir()
    for wav in sorted((work / "raw" / "wav48" / "p911").glob("*.wav"))[:2]:
        (folder / wav.name).write_bytes(wav.read_bytes())
    val_key = sorted(_val_keys(work, manifest))[0]
    proc = run_job("convert.py", "--config", str(cfg), "--source", str(folder), val_key, "--speaker", "p902",
                   env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    made = sorted(p.name for p in (work / "conversions").glob("*-to-p902.wav"))
    assert made == sorted([f"{p.stem}-to-p902.wav" for p in folder.glob("*.wav")] + [f"{val_key}-to-p902.wav"])
    for name in made:
        y, rate = sf.read(work / "conversions" / name)
        assert rate == 16000 and len(y) % 320 == 0 and abs(y).max() > 0.01
    runs = client.search_runs([client.get_experiment_by_name("said").experiment_id],
                              "tags.stage = 'convert'")
    assert len(runs) == 1 and runs[0].data.metrics["conversions"] == 3

    # the WORLD decoder on shards without frames: one line, exit 2, nothing trained
    plain = dict(config, workdir=str(tmp_path / "plain"))
    plain["data"] = dict(config["data"], world_frames=False, root=str(work / "raw"))
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump(plain))
    assert run_job("shard.py", "--config", str(tmp_path / "plain.yaml"), env=env).returncode == 0
    bad = run_job("stage1.py", "--config", str(tmp_path / "plain.yaml"), env=env)
    assert bad.returncode == 2 and "data.world_frames: true" in bad.stderr.strip().splitlines()[-1], bad.stderr


def _val_keys(work, manifest):
    for shard in manifest["splits"]["val"]["shards"]:
        with tarfile.open(work / "shards" / "said" / shard["path"]) as tar:
            yield from {m.name.split(".", 1)[0] for m in tar}
