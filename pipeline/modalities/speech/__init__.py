"""Speech: VCTK-style corpora, stored as FLAC, modelled with a speech VQ-VAE (`stage1.decoder`:
`wavenet`, the paper's strided-conv encoder and WaveNet decoder conditioned on the speaker; or
`world`, a log-mel encoder and a decoder to WORLD vocoder frames) and a speaker-conditioned
WaveNet prior over the codes (van den Oord et al. 2017, section 4.3); decoding one speaker's codes
with another speaker's id converts the voice.

    data:
      modality: speech
      root: /data/VCTK-Corpus          # 0.80, 0.92, or <root>/<speaker>/*.{wav,flac,ogg}
      sample_rate: 16000               # every utterance is resampled to it (never upsampled)
      mic: mic1                        # VCTK 0.92's microphone
      val_speakers: [p225]             # held out whole (besides val_fraction of every speaker)

The package: `settings` (its config sections), `audio` (reading, resampling, FLAC), `vctk` (the
corpus layouts and the listing), `convert` and `scores` (voice conversion and its evaluation),
`demo` (an espeak-ng corpus in the VCTK layout). Its libraries come with the `speech` extra.

`speaker-info.txt` in the root, when present, gives the speaker table's columns (age, gender,
accent, region, ...). Transcripts are optional.

A sample's tar members: `<key>.flac` (mono 16-bit PCM at data.sample_rate, lossless: the shard
holds exactly what training sees), `<key>.spk` (the speaker id as text), `<key>.txt` (the
transcript, UTF-8, may be empty) and, with `data.world_frames`, `<key>.world.npy` (its WORLD
vocoder frames, float32 (frames, 46), the target of `stage1.decoder: world`). The model sees float waveforms in [-1, 1], shape (1, samples);
a batch pads them to its longest and masks the padding.
"""
from __future__ import annotations

import random
from typing import TYPE_CHECKING

from pipeline.modalities import require

require("speech", "soundfile", "soxr", "librosa")

from pipeline import progress  # noqa: E402
from pipeline.errors import UserError  # noqa: E402
from pipeline.media import spectrogram_picture, write_wav  # noqa: E402
from pipeline.modalities import (Batch, CondSpec, Conversion, Item, Listing, Modality, RawItem,  # noqa: E402
                                 SkipSample, register)
from pipeline.modalities.speech.audio import (decode_flac, encode_flac, read_audio, resample,  # noqa: E402
                                              to_tensor, trim_silence)
from pipeline.modalities.speech.settings import SpeechData, SpeechSample, SpeechStage1, SpeechStage2  # noqa: E402
from pipeline.modalities.speech.vctk import SPEAKER, list_speech  # noqa: E402
from pipeline.models.world import BATCH_KEY as WORLD  # noqa: E402  (numpy only)

WORLD_MEMBER = "world.npy"  # a shard sample's WORLD frames, (frames, FEATURES) float32 .npy
WORLD_FRAME = "world_frame"

if TYPE_CHECKING:  # torch only where tensors are made: sharding (Ray Data's workers) needs none
    import torch


class SpeechModality(Modality):
    name = "speech"
    DataConfig = SpeechData
    Stage1Config = SpeechStage1
    Stage2Config = SpeechStage2
    SampleConfig = SpeechSample
    selection_metric = "val_bits_per_sample"
    key_metrics = ("perplexity", "codebook_usage")
    paper_references = {
        "val_bits_per_sample": "no likelihood reported; a uniform guess over 256 mu-law levels is 8 bits/sample",
        "conversion_speaker_fraction": "VCTK, 109 speakers: conversion judged by listening, no score reported",
        "perplexity": "VCTK: K=512 codes, 64x fewer latents than samples",
    }

    # voice conversion's scores (convert.py, imported only when they are made: it needs torch)
    evaluation_metrics = ("conversion_speaker_fraction", "reconstruction_speaker_fraction", "conversion_mcd_to_source",
                          "reference_mcd_source_to_target", "conversions", "conversion_samples_per_s")
    # the recognizer's word errors (words.py), when the speech-eval extra is installed
    evaluation_extra = ("source_word_error", "reconstruction_word_error", "conversion_word_error")
    evaluation_folder = "conversions"
    conversion_cond = SPEAKER

    # shard
    def find(self, data: SpeechData) -> Listing:
        speakers, splits, skipped, manifest = list_speech(data)
        return Listing(splits, {SPEAKER: CondSpec("class", len(speakers), tuple(speakers))}, manifest, skipped)

    def preprocess(self, raw: bytes, item: RawItem, data: SpeechData):
        audio, rate = read_audio(raw)
        if rate < data.sample_rate:
            raise SkipSample(f"sample rate {rate} Hz is below data.sample_rate {data.sample_rate} Hz "
                             f"(not upsampled)")
        x = resample(audio.mean(axis=1), rate, data.sample_rate)
        if data.trim_silence:
            x = trim_silence(x, data.sample_rate, data.trim_db)
            if not len(x):
                raise SkipSample("silent: no sample above zero")
        if len(x) < data.min_samples:
            raise SkipSample(f"too short: {len(x)} samples, under one code ({data.min_samples} samples)")
        frames = None
        if data.world_frames:
            from pipeline.models import world

            x = x.astype("float32")  # what the FLAC round trip gives back, analysed as training sees it
            frames = world.analyze(decode_flac(encode_flac(x, data.sample_rate))[0], data.sample_rate)
        return (x, data.sample_rate, int(item.cond[SPEAKER]), item.meta.get("speaker", ""), item.meta.get("text", ""),
                frames)

    def to_members(self, example) -> dict[str, bytes]:
        x, rate, speaker, _, text, frames = example
        members = {"flac": encode_flac(x, rate), "spk": str(speaker).encode(), "txt": text.encode("utf-8")}
        if frames is not None:
            from pipeline.models import world

            members[WORLD_MEMBER] = world.to_npy(frames)
        return members

    def tally(self, example) -> dict[str, float]:
        x, rate, speaker, name, _, frames = example
        hours = len(x) / rate / 3600
        out = {"hours": hours, "utterances": 1, f"speaker/{name}/hours": hours, f"speaker/{name}/utterances": 1}
        if frames is not None:
            from pipeline.models import world

            out.update(world.sums(frames, speaker))
        return out

    # read
    def from_members(self, members: dict[str, bytes]) -> Item:
        x, rate = decode_flac(members["flac"])
        cond = {SPEAKER: int(members["spk"])}
        if WORLD_MEMBER in members:
            import torch

            from pipeline.models import world

            # the frames, and the samples per frame (for crops on their grid); targets, not conditioning
            cond[WORLD] = torch.from_numpy(world.from_npy(members[WORLD_MEMBER]))
            cond[WORLD_FRAME] = rate // 100
        return Item(to_tensor(x), cond)

    def collate(self, items: list[Item]) -> Batch:
        import torch

        longest = max(it.x.shape[-1] for it in items)
        x = torch.zeros(len(items), 1, longest)
        mask = torch.zeros(len(items), longest, dtype=torch.bool)
        for i, it in enumerate(items):
            n = it.x.shape[-1]
            x[i, :, :n] = it.x
            mask[i, :n] = True
        cond = {SPEAKER: torch.as_tensor([it.cond[SPEAKER] for it in items], dtype=torch.long)}
        if all(WORLD in it.cond for it in items):
            frames = max(len(it.cond[WORLD]) for it in items)
            feats = torch.zeros(len(items), frames, items[0].cond[WORLD].shape[-1])
            for i, it in enumerate(items):
                feats[i, :len(it.cond[WORLD])] = it.cond[WORLD]
            cond[WORLD] = feats
        return Batch(x, cond, mask, [it.key for it in items])

    def crop(self, item: Item, stage1: SpeechStage1, rng: random.Random | None) -> Item:
        """Training: a random `segment`-sample crop; validation (rng None): the first `val_segment`."""
        n = item.x.shape[-1]
        size = stage1.segment if rng is not None else stage1.val_segment
        if n <= size:
            return item
        if WORLD not in item.cond:
            start = rng.randrange(n - size + 1) if rng is not None else 0
            return Item(item.x[:, start:start + size], item.cond, item.key)
        # on the WORLD frames' grid (one per `frame` samples), their frames cut alike
        frame = item.cond[WORLD_FRAME]
        start = rng.randrange((n - size) // frame + 1) * frame if rng is not None else 0
        cond = {**item.cond, WORLD: item.cond[WORLD][start // frame: start // frame + size // frame + 1]}
        return Item(item.x[:, start:start + size], cond, item.key)

    # models
    def build_autoencoder(self, stage1: SpeechStage1, data: SpeechData, cond: dict[str, CondSpec]):
        if SPEAKER not in cond:
            raise UserError(f"no speaker table for {data.name}: shard it first (jobs/shard.py)")
        if stage1.decoder == "world":
            return self._world_autoencoder(stage1, data, cond)
        from pipeline.models.speech import SpeechVQVAE

        hop = 2**stage1.num_downsamples
        if hop > data.min_samples:
            raise UserError(f"stage1.num_downsamples={stage1.num_downsamples} makes one code of {hop} samples, "
                            f"but the shards keep utterances down to data.min_samples={data.min_samples}: "
                            f"re-shard with data.min_samples >= {hop}")
        return SpeechVQVAE(num_speakers=cond[SPEAKER].size, hidden=stage1.hidden,
                           num_downsamples=stage1.num_downsamples, codebook_size=stage1.codebook_size,
                           code_dim=stage1.code_dim, beta=stage1.beta, ema=stage1.ema, decay=stage1.decay,
                           dead_code_steps=stage1.dead_code_steps, speaker_dim=stage1.speaker_dim,
                           wavenet_channels=stage1.wavenet_channels, wavenet_skip=stage1.wavenet_skip,
                           wavenet_layers=stage1.wavenet_layers, wavenet_cycle=stage1.wavenet_cycle,
                           cond_channels=stage1.cond_channels, preemphasis=stage1.preemphasis,
                           scalar_input=stage1.scalar_input, lpc_order=stage1.lpc_order)

    def _world_autoencoder(self, stage1: SpeechStage1, data: SpeechData, cond: dict[str, CondSpec]):
        from pipeline.models.speech_world import WorldVQVAE

        if not data.world_frames:
            raise UserError("stage1.decoder=world trains on the shards' WORLD frames: set data.world_frames: true "
                            "(and re-shard: --set overwrite=true)")
        if data.sample_rate % 100:
            raise UserError(f"stage1.decoder=world needs a whole number of samples per 10 ms frame: "
                            f"data.sample_rate={data.sample_rate} is not a multiple of 100 Hz")
        hop = stage1.code_frames * data.sample_rate // 100
        if hop > data.min_samples:
            raise UserError(f"stage1.code_frames={stage1.code_frames} makes one code of {hop} samples, but the "
                            f"shards keep utterances down to data.min_samples={data.min_samples}: re-shard with "
                            f"data.min_samples >= {hop}")
        return WorldVQVAE(num_speakers=cond[SPEAKER].size, rate=data.sample_rate, mels=stage1.mels,
                          hidden=stage1.hidden, codebook_size=stage1.codebook_size, code_dim=stage1.code_dim,
                          speaker_dim=stage1.speaker_dim, decoder_layers=stage1.decoder_layers,
                          code_frames=stage1.code_frames, beta=stage1.beta, ema=stage1.ema, decay=stage1.decay,
                          dead_code_steps=stage1.dead_code_steps, input_warp=stage1.input_warp,
                          speaker_layers=stage1.speaker_layers)

    def prepare_autoencoder(self, model, manifest: dict | None) -> None:
        """A new WORLD-decoder model takes the data's statistics (pitch per speaker, the frames'
        scale) from the train shards' tallies before its first step."""
        if getattr(model, "set_statistics", None) is None:
            return
        stats = ((manifest or {}).get("splits", {}).get("train") or {}).get("stats") or {}
        if not stats.get("world/frames"):
            raise UserError("stage1.decoder=world: the shards carry no WORLD frames; re-shard with "
                            "data.world_frames: true (--set overwrite=true)")
        model.set_statistics(stats)

    def selection(self, stage1: SpeechStage1) -> str:
        return "val_feature_loss" if stage1.decoder == "world" else self.selection_metric

    def metric_scale(self, data: SpeechData, stage1: SpeechStage1) -> str | None:
        """val_bits_per_sample scores mu-law classes of another signal with a linear predictor or
        pre-emphasis, and per sample of another rate: versions differing in these are not compared;
        nor a WORLD decoder's frame loss with a WaveNet's bits."""
        if stage1.decoder == "world":
            return f"decoder=world sample_rate={data.sample_rate}"
        return f"sample_rate={data.sample_rate} lpc_order={stage1.lpc_order} preemphasis={stage1.preemphasis}"

    def build_prior(self, stage2: SpeechStage2, codebook_size: int, cond: dict[str, CondSpec], latent_shape=None,
                    data=None):
        from pipeline.models.speech import CodePrior

        return CodePrior(codebook_size, num_speakers=cond[SPEAKER].size if SPEAKER in cond else 0,
                         hidden=stage2.hidden, num_layers=stage2.num_layers, cycle=stage2.cycle,
                         kernel_size=stage2.kernel_size, speaker_dim=stage2.speaker_dim)

    # scoring and writing
    def val_sums(self, batch: Batch, out) -> dict[str, float]:
        if hasattr(out, "feature_sum"):  # the WORLD decoder
            return {"feature_loss": float(out.feature_sum), "envelope_loss": float(out.envelope_sum),
                    "frames": float(out.frames)}
        return {"nll_bits": float(out.nll_bits_sum), "dims": float(out.samples)}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        if "frames" in sums:  # no likelihood: the frames' L1 (selection) and the envelope's part
            frames = max(sums["frames"], 1.0)
            return {"val_feature_loss": sums["feature_loss"] / frames, "val_envelope_loss": sums["envelope_loss"] / frames}
        bits = sums["nll_bits"] / max(sums["dims"], 1.0)
        return {"val_bits_per_sample": bits, "val_recon_bits_per_dim": bits,
                "val_bits_per_dim": bits + sums["latent_bits"] / max(sums["dims"], 1.0)}

    def example_length(self, stage1: SpeechStage1, data: SpeechData) -> int | None:
        return int(stage1.shown_seconds * data.sample_rate)

    def write(self, groups: list[list[torch.Tensor]], path_stem: str, data: SpeechData) -> list[str]:
        rate = data.sample_rate
        rows = [[g.detach().float().cpu().numpy().reshape(-1) for g in group] for group in groups]
        paths = [spectrogram_picture(rows, rate, f"{path_stem}.png")]
        for i, row in enumerate(rows):
            for j, x in enumerate(row):
                paths.append(write_wav(f"{path_stem}-{i}-{j}.wav", x, rate))
        return paths

    # sampling
    def sample_latent_shape(self, data: SpeechData, sample: SpeechSample, dims_per_code: int) -> tuple[int, ...]:
        return (max(1, round(sample.seconds * data.sample_rate / dims_per_code)),)

    def decoder_options(self, sample: SpeechSample) -> dict:
        return {"temperature": sample.decoder_temperature, "track": progress.track}

    # after stage 1: voice conversion (convert.py)
    def evaluation_settings(self, sample: SpeechSample) -> str:
        from pipeline.modalities.speech.convert import evaluation_settings

        return evaluation_settings(sample)

    def evaluate(self, model, shards_dir: str, data: SpeechData, sample: SpeechSample, device,
                 out_dir: str) -> tuple[dict, list[str]]:
        from pipeline.modalities.speech.convert import evaluate

        return evaluate(self, model, shards_dir, data, sample, device, out_dir)

    def convert(self, load_model, shards_dir: str, sources: list[str], target: str, out_dir: str, data: SpeechData,
                sample: SpeechSample, device, seconds: float | None = None) -> list[Conversion]:
        from pipeline.modalities.speech.convert import convert_many

        return convert_many(self, load_model, shards_dir, sources, target, out_dir, data, sample, device, seconds)

    def make_demo(self, data: SpeechData, small: bool = False) -> dict:
        from pipeline.modalities.speech.demo import make_demo_corpus

        sizes = dict(per_speaker=10, speakers=4) if small else {}
        return make_demo_corpus(data.root, seed=data.seed, **sizes)


MODALITY = register(SpeechModality())
