"""Speech through the pipeline job on a small espeak-ng corpus in the VCTK 0.80 layout: shard,
stage 1 (with the voice-conversion evaluation), codes, stage 2, sample and the report in one
process; then the jobs only speech has (convert) and the registry CLI. The stage-by-stage jobs
are the same functions for every modality (the README test runs them one by one)."""
from __future__ import annotations

import json
import math

import pytest
import soundfile as sf
import yaml

from conftest import ray_address, run_job

pytestmark = [pytest.mark.slow, pytest.mark.e2e]  # the jobs join the session's Ray instance


def test_speech_runs_through_the_pipeline_then_converts_voices(tmp_path, ray_local):
    from pipeline.modalities.speech.demo import make_demo_corpus

    work = tmp_path / "w"
    made = make_demo_corpus(work / "raw", per_speaker=10, speakers=4)
    assert made == {"out": str(work / "raw"), "created": True, "speakers": 4, "utterances": 40}
    config = {
        "workdir": str(work),
        "data": {"name": "talk", "root": "{workdir}/raw", "modality": "speech", "sample_rate": 8000,
                 "val_fraction": 0.3, "samples_per_shard": 10},
        "ray": {"num_workers": 1},
        "stage1": {"steps": 120, "batch_size": 8, "lr": 2e-3, "segment": 1024, "val_segment": 4000,
                   "codebook_size": 32, "code_dim": 16, "hidden": 32, "ema": True, "speaker_dim": 8,
                   "wavenet_channels": 16, "wavenet_skip": 32, "wavenet_layers": 6, "wavenet_cycle": 6,
                   "cond_channels": 16, "shown_seconds": 0.05, "checkpoint_every": 40, "val_every": 40},
        "stage2": {"steps": 40, "batch_size": 8, "hidden": 16, "num_layers": 4, "cycle": 2,
                   "checkpoint_every": 20, "val_every": 20},
        "sample": {"per_class": 1, "seconds": 0.05, "convert_per_speaker": 1, "convert_targets": 2,
                   "convert_seconds": 0.3},
    }
    cfg = tmp_path / "talk.yaml"
    cfg.write_text(yaml.safe_dump(config))
    proc = run_job("pipeline.py", "--config", str(cfg), timeout=900, env=ray_address(ray_local))
    assert proc.returncode == 0, proc.stderr[-3000:]

    shards = json.loads((work / "shards" / "talk" / "manifest.json").read_text())
    assert shards["layout"] == "vctk-0.80" and shards["cond"]["speaker"]["names"] == ["p901", "p902", "p911", "p912"]
    assert shards["splits"]["train"]["samples"] == 28 and shards["splits"]["val"]["samples"] == 12
    assert shards["speakers"][0]["gender"] == "M"
    hours = shards["splits"]["train"]["stats"]["hours"]
    assert 28 * 1.0 / 3600 < hours < 28 * 6.0 / 3600  # 1 to 6 s per synthesized sentence

    from mlflow import MlflowClient

    from pipeline import tracking

    uri = f"sqlite:///{work}/mlflow.db"
    tracking.setup_tracking(uri, "talk")
    vqvae = tracking.resolve("models:/vqvae-talk@champion")
    run = MlflowClient(uri).get_run(vqvae["run_id"])
    bits = run.data.metrics["val_bits_per_sample"]
    assert bits < 7.0, bits  # 120 steps already well below the 8 bits of a uniform mu-law guess
    # the conversion evaluation ran at the end of stage 1 and logged on the model's run
    assert 0.0 <= run.data.metrics["conversion_speaker_fraction"] <= 1.0
    assert 0.0 <= run.data.metrics["reconstruction_speaker_fraction"] <= 1.0  # its ceiling, beside it
    assert run.data.metrics["conversions"] == 4 * 2
    assert run.data.metrics["conversion_mcd_to_source"] > 0 and run.data.metrics["reference_mcd_source_to_target"] > 0
    # the recognizer's word errors against the transcripts, on sources, reconstructions, conversions
    assert all(run.data.metrics[k] >= 0 for k in ("source_word_error", "reconstruction_word_error",
                                                 "conversion_word_error"))
    assert "conversion_word_error" in (work / "report-talk.html").read_text()
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(vqvae["run_id"], "reconstructions")}
    assert any(p.endswith(".png") for p in artifacts) and any(p.endswith(".wav") for p in artifacts)

    # codes: one variable-length row per utterance, 64 samples per code, with its speaker
    [codes_manifest] = (work / "codes" / "talk").glob("v1-*/manifest.json")
    codes = json.loads(codes_manifest.read_text())
    assert codes["latent_shape"] is None and codes["input_dims_per_code"] == 64
    assert codes["rows"] == {"train": 28, "val": 12} and codes["cond"]["speaker"]["size"] == 4

    prior = tracking.resolve("models:/prior-talk@champion")
    assert float(prior["tags"]["metric.val_nll_bits_per_code"]) < math.log2(32)

    # sample: a spectrogram picture and one WAV per speaker, 0.05 s at 8 kHz each
    assert str(work / "samples" / "samples-1.png") in proc.stdout.splitlines(), proc.stdout[-2000:]
    # the report plays the samples: WAVs in the page itself
    page = (work / "report-talk.html").read_text()
    assert page.count("<audio") >= 4 and "data:audio/wav;base64," in page
    wavs = sorted((work / "samples").glob("samples-1-*.wav"))
    assert len(wavs) == 4
    audio, rate = sf.read(wavs[0])
    assert rate == 8000 and len(audio) == 6 * 64  # round(0.05 s * 8000 / 64) codes

    # convert: a val key to another speaker, and an outside WAV (their first half second: the
    # whole sentence is ~4 s of sample-by-sample generation)
    val_key = next(iter(sorted(_val_keys(work))))
    proc = run_job("convert.py", "--config", str(cfg), "--source", val_key, "--speaker", "p912", "--seconds", "0.5",
                   env=ray_address(ray_local))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = work / "conversions" / f"{val_key}-to-p912.wav"
    converted, rate = sf.read(out)
    assert rate == 8000 and len(converted) == 4000 // 64 * 64  # whole codes of 0.5 s at 8 kHz
    assert (work / "conversions" / f"{val_key}-to-p912.png").is_file()
    wav = next((work / "raw" / "wav48" / "p902").glob("*.wav"))
    proc = run_job("convert.py", "--config", str(cfg), "--source", str(wav), "--speaker", "p901", "--seconds", "0.5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(sf.read(work / "conversions" / f"{wav.stem}-to-p901.wav")[0]) == 4000 // 64 * 64
    bad = run_job("convert.py", "--config", str(cfg), "--source", val_key, "--speaker", "p999")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: --speaker 'p999'")

    models = run_job("models.py", "list", "--config", str(cfg))
    assert models.returncode == 0 and "vqvae-talk" in models.stdout and "prior-talk" in models.stdout, models.stderr

    # stage 1 again: the model is done and its conversion scores stand, made with these settings;
    # with another decoder temperature they are made again
    client = MlflowClient(uri)
    for extra, scored in (((), 1), (("--set", "sample.decoder_temperature=0.7"), 2)):
        proc = run_job("stage1.py", "--config", str(cfg), *extra, env=ray_address(ray_local))
        assert proc.returncode == 0 and "already finished" in proc.stdout, proc.stderr[-3000:]
        assert len(client.get_metric_history(vqvae["run_id"], "conversions")) == scored
    assert "decoder_temperature=0.7" in client.get_run(vqvae["run_id"]).data.tags["evaluated_with"]


def _val_keys(work):
    import tarfile

    manifest = json.loads((work / "shards" / "talk" / "manifest.json").read_text())
    for shard in manifest["splits"]["val"]["shards"]:
        with tarfile.open(work / "shards" / "talk" / shard["path"]) as tar:
            yield from {m.name.split(".", 1)[0] for m in tar}
