"""Speech: VCTK-style corpora, stored as FLAC, modelled with the speech VQ-VAE (strided-conv
encoder, WaveNet decoder conditioned on the speaker) and a speaker-conditioned WaveNet prior
over the codes (van den Oord et al. 2017, section 4.3).

    data:
      modality: speech
      root: /data/VCTK-Corpus          # 0.80, 0.92, or <root>/<speaker>/*.{wav,flac,ogg}
      sample_rate: 16000               # every utterance is resampled to it (never upsampled)
      mic: mic1                        # VCTK 0.92's microphone
      val_speakers: [p225]             # held out whole (besides val_fraction of every speaker)

Layouts (`data.layout: auto` finds which):
- VCTK 0.80: `wav48/pXXX/pXXX_NNN.wav`, `txt/pXXX/pXXX_NNN.txt`
- VCTK 0.92: `wav48_silence_trimmed/pXXX/pXXX_NNN_mic1.flac` (`mic2` by `data.mic`), `txt/...`
- folders: `<root>/<speaker>/*.{wav,flac,ogg}`, with `<stem>.txt` beside a file as its transcript
`speaker-info.txt` in the root, when present, gives the speaker table's columns (age, gender,
accent, region, ...). Transcripts are optional.

A sample's tar members: `<key>.flac` (mono 16-bit PCM at data.sample_rate, lossless: the shard
holds exactly what training sees), `<key>.spk` (the speaker id as text) and `<key>.txt` (the
transcript, UTF-8, may be empty). The model sees float waveforms in [-1, 1], shape (1, samples);
a batch pads them to its longest and masks the padding.
"""
from __future__ import annotations

import io
import os
import random
import re
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field

from pipeline.sections import SampleConfig, Stage1Config, Stage2Config
from pipeline.errors import UserError
from pipeline.modalities import (Batch, CondSpec, DataSection, Item, Listing, Modality, RawItem, SkipSample,
                                 register)

if TYPE_CHECKING:  # torch only where tensors are made: sharding (Ray Data's workers) needs none
    import torch

# The conditioning's name in batches, codes and the models: pipeline.models.speech.SPEAKER, spelt
# here too so that sharding (Ray Data's workers) imports no torch; a test checks they agree.
SPEAKER = "speaker"

EXTENSIONS = (".wav", ".flac", ".ogg")
INFO = "speaker-info.txt"


class SpeechData(DataSection):
    layout: Literal["auto", "vctk-0.80", "vctk-0.92", "folders"] = "auto"
    mic: Literal["mic1", "mic2"] = "mic1"
    sample_rate: int = Field(16000, ge=1000)
    trim_silence: bool = True
    trim_db: float = Field(40.0, gt=0)  # leading/trailing frames this far below the loudest are silence
    min_samples: int = Field(64, ge=1)  # shorter utterances are skipped: one code of the paper's encoder
    val_speakers: list[str] = Field(default_factory=list)


class SpeechStage1(Stage1Config):
    """The paper's speech VQ-VAE: 6 strided convs (64x fewer codes than samples), K=512, a
    WaveNet decoder trained with teacher forcing on random `segment`-sample crops."""
    codebook_size: int = Field(512, ge=2)
    num_downsamples: int = Field(6, ge=1)
    num_res_blocks: int = Field(0, ge=0)  # not used by the speech encoder (the paper has none)
    hidden: int = Field(256, ge=1)
    batch_size: int = Field(16, ge=1)
    segment: int = Field(16384, ge=64)  # samples per training crop (~1 s at 16 kHz)
    val_segment: int = Field(32768, ge=64)  # validation scores each utterance's first this many samples
    speaker_dim: int = Field(64, ge=1)
    wavenet_channels: int = Field(64, ge=1)
    wavenet_skip: int = Field(128, ge=1)
    wavenet_layers: int = Field(20, ge=1)
    wavenet_cycle: int = Field(10, ge=1)  # dilations 1, 2, ..., 2^(cycle-1), then again
    cond_channels: int = Field(64, ge=1)
    # The decoder models x[t] - a * x[t-1] (0: the paper's plain mu-law samples); generation
    # undoes it, which pushes the sampling noise below the speech at high frequencies.
    preemphasis: float = Field(0.0, ge=0, lt=1)
    # The decoder reads each past sample as its mu-law value through a learnt linear map (true),
    # or as one of 256 learnt embeddings (false). On the demo the value learnt faster early on
    # (6.07 against 6.34 val bits per sample after 200 steps, the same after 800) at the same
    # time per step.
    scalar_input: bool = True
    # > 0: the decoder predicts each sample linearly from the last lpc_order ones, with
    # coefficients the codes and the speaker give, and the WaveNet models what is left (the
    # excitation; LPCNet's split). The prediction, run on what generation draws, shapes the
    # sampling noise by the voice's spectral envelope. 0: the paper's plain mu-law samples.
    lpc_order: int = Field(0, ge=0)
    shown_seconds: float = Field(1.0, gt=0)  # length of the reconstructions written at validation


class SpeechStage2(Stage2Config):
    """The prior: a WaveNet over whole code sequences (padded and masked in a batch),
    conditioned on the speaker; dilations 1, 2, ..., 2^(cycle-1), then again."""
    kernel_size: int = Field(3, ge=3)
    num_layers: int = Field(10, ge=1)
    cycle: int = Field(5, ge=1)
    speaker_dim: int = Field(32, ge=1)


class SpeechSample(SampleConfig):
    seconds: float = Field(2.0, gt=0)  # length of each sampled utterance
    # The WaveNet decoder's sampling temperature, for samples and conversions (sample.temperature
    # is the prior's). Below 1 its draws stray less; with stage1.lpc_order the noise that is left
    # takes the voice's envelope.
    decoder_temperature: float = Field(1.0, gt=0)
    # voice conversion's evaluation (end of stage 1, jobs/convert.py --evaluate): this many val
    # utterances of every speaker, each converted to this many other speakers, cut to this long
    convert_per_speaker: int = Field(1, ge=1)
    convert_targets: int = Field(3, ge=1)
    convert_seconds: float = Field(2.0, gt=0)


# ---- reading audio --------------------------------------------------------------------------------


def _wav_truncated(raw: bytes) -> str | None:
    """For a RIFF/WAVE file: a reason when its data chunk claims more bytes than the file holds."""
    if raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(raw):
        chunk, size = raw[pos:pos + 4], int.from_bytes(raw[pos + 4:pos + 8], "little")
        if chunk == b"data":
            have = len(raw) - pos - 8
            if size != 0xFFFFFFFF and have < size:
                return f"truncated: the data chunk holds {have} of {size} bytes"
            return None
        pos += 8 + size + (size & 1)
    return "truncated: no data chunk"


def read_audio(raw: bytes) -> tuple[np.ndarray, int]:
    """File bytes -> (float32 (frames, channels), sample rate); SkipSample for what is not audio."""
    import soundfile as sf

    if not raw:
        raise SkipSample("empty file")
    truncated = _wav_truncated(raw)
    if truncated:
        raise SkipSample(truncated)
    try:
        audio, rate = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:
        message = str(e)
        if "Format not recognised" in message or "unknown format" in message.lower():
            raise SkipSample("not audio: libsndfile does not recognise the format") from None
        raise SkipSample(f"corrupt audio: {message.splitlines()[0][:200]}") from None
    except (RuntimeError, ValueError, TypeError, EOFError) as e:
        raise SkipSample(f"corrupt audio: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}") from None
    if audio.size == 0:
        raise SkipSample("empty audio: no samples")
    if not np.isfinite(audio).all():
        raise SkipSample("corrupt audio: samples that are not finite")
    return audio, int(rate)


def resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Mono float32 at `rate` -> at `target`, with soxr's high-quality resampler."""
    if rate == target:
        return x
    import soxr

    return soxr.resample(x, rate, target, quality="HQ").astype(np.float32)


def trim_silence(x: np.ndarray, rate: int, db: float) -> np.ndarray:
    """Leading and trailing 10 ms frames more than `db` below the loudest frame removed."""
    frame = max(1, rate // 100)
    n = len(x) // frame
    if n == 0:
        return x
    rms = np.sqrt(np.mean(x[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1))
    peak = rms.max()
    if peak <= 0:
        return x[:0]
    loud = np.nonzero(rms >= peak * 10 ** (-db / 20))[0]
    start, stop = loud[0] * frame, min(len(x), (loud[-1] + 1) * frame)
    return x[start:stop]


def encode_flac(x: np.ndarray, rate: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    pcm = np.clip(np.rint(x * 32767.0), -32768, 32767).astype(np.int16)
    sf.write(buf, pcm, rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def decode_flac(raw: bytes) -> tuple[np.ndarray, int]:
    import soundfile as sf

    pcm, rate = sf.read(io.BytesIO(raw), dtype="int16")
    if pcm.ndim != 1:
        raise ValueError(f"expected mono FLAC, got {pcm.shape[1]} channels")
    return pcm.astype(np.float32) / 32768.0, int(rate)


def write_wav(path: str, x: np.ndarray, rate: int) -> None:
    import soundfile as sf

    tmp = f"{path}.tmp.wav"
    sf.write(tmp, np.clip(x, -1, 1), rate, subtype="PCM_16")
    os.replace(tmp, path)


# ---- layouts ---------------------------------------------------------------------------------------


def _detect(fs, base: str, layout: str) -> str:
    from pipeline.data import fs as fsx

    if layout != "auto":
        return layout
    if fsx.isdir(fs, f"{base}/wav48_silence_trimmed"):
        return "vctk-0.92"
    if fsx.isdir(fs, f"{base}/wav48"):
        return "vctk-0.80"
    return "folders"


def read_speaker_info(text: str) -> dict[str, dict[str, str]]:
    """VCTK's speaker-info.txt (either release) -> {speaker id as its folder is named: {column: value}}.
    The last column (REGION, or COMMENTS) keeps the rest of the line, spaces included."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return {}
    header = lines[0].replace(";", " ").split()
    table = {}
    for line in lines[1:]:
        parts = line.split(None, len(header) - 1)
        if not parts:
            continue
        row = {h.lower(): (parts[i].strip() if i < len(parts) else "") for i, h in enumerate(header)}
        speaker = row.pop(header[0].lower())
        table[speaker if speaker.startswith(("p", "s")) or not speaker.isdigit() else f"p{speaker}"] = row
    return table


def _utterance_key(speaker: str, stem: str, layout: str, mic: str) -> str | None:
    """The sample key of an utterance file; None for VCTK 0.92's other microphone."""
    if layout == "vctk-0.92":
        if re.search(r"_mic[12]$", stem) and not stem.endswith(f"_{mic}"):
            return None
        stem = stem.removesuffix(f"_{mic}")
    key = stem if layout != "folders" or stem.startswith(speaker) else f"{speaker}_{stem}"
    return re.sub(r"[^A-Za-z0-9_-]", "_", key)


def list_speech(data: SpeechData) -> tuple[list[str], dict[str, list[RawItem]], list[dict], dict]:
    """-> (speakers, splits, skipped, manifest fields) for data.root in any supported layout."""
    from pipeline.data import fs as fsx
    from pipeline.data.sources import list_dir

    fs, base = fsx.filesystem(data.root)
    if not fsx.isdir(fs, base):
        raise UserError(f"data.root does not exist or is not a folder: {data.root}")
    layout = _detect(fs, base, data.layout)
    audio_dir = {"vctk-0.92": f"{base}/wav48_silence_trimmed", "vctk-0.80": f"{base}/wav48", "folders": base}[layout]
    if not fsx.isdir(fs, audio_dir):
        raise UserError(f"data.root has no {audio_dir.rsplit('/', 1)[-1]}/ folder (data.layout: {layout}): {data.root}")
    is_audio = (lambda n: n.lower().endswith(".flac")) if layout == "vctk-0.92" else \
        (lambda n: n.lower().endswith(EXTENSIONS))
    loose, speaker_dirs, skipped = list_dir(fs, audio_dir, is_audio)
    skipped += [{"path": p, "reason": "not in a speaker folder"} for p in loose]
    info = {}
    if fsx.exists(fs, f"{base}/{INFO}"):
        info = read_speaker_info(fsx.read_bytes(fs, f"{base}/{INFO}").decode("utf-8", errors="replace"))
    per_speaker: dict[str, list[RawItem]] = {}
    for folder in speaker_dirs:
        speaker = folder.rsplit("/", 1)[-1]
        files, _, folder_skipped = list_dir(fs, folder, is_audio)
        skipped += folder_skipped
        items = []
        for path in files:
            stem = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
            key = _utterance_key(speaker, stem, layout, data.mic)
            if key is None:  # the other microphone
                continue
            text_path = (f"{base}/txt/{speaker}/{key}.txt" if layout != "folders"
                         else path.rsplit(".", 1)[0] + ".txt")
            text = ""
            if fsx.exists(fs, text_path):
                text = fsx.read_bytes(fs, text_path).decode("utf-8", errors="replace").strip()
            items.append(RawItem(key=key, path=path, cond={}, meta={"speaker": speaker, "text": text}))
        if items:
            per_speaker[speaker] = items
    if not per_speaker:
        raise UserError(f"data.root holds no audio files in the {layout} layout: {data.root}")
    unknown = sorted(set(data.val_speakers) - set(per_speaker))
    if unknown:
        raise UserError(f"data.val_speakers names speakers data.root does not hold: {', '.join(unknown)}")
    speakers = sorted(per_speaker)
    index = {s: i for i, s in enumerate(speakers)}
    rng = random.Random(data.seed)
    splits: dict[str, list[RawItem]] = {"train": [], "val": []}
    for speaker in speakers:
        items = [RawItem(it.key, it.path, {SPEAKER: index[speaker]}, it.skip, it.meta) for it in per_speaker[speaker]]
        if speaker in data.val_speakers:
            splits["val"] += items
            continue
        # every speaker on both sides: voice conversion is scored on val utterances of train speakers
        shuffled = items[:]
        rng.shuffle(shuffled)
        n_val = max(1, round(len(items) * data.val_fraction)) if len(items) > 1 else 0
        val_keys = {it.key for it in shuffled[:n_val]}
        splits["val"] += [it for it in items if it.key in val_keys]
        splits["train"] += [it for it in items if it.key not in val_keys]
    table = [{"id": s, **info.get(s, {}), "held_out": s in data.val_speakers} for s in speakers]
    manifest = {"layout": layout, "sample_rate": data.sample_rate, "speakers": table}
    return speakers, splits, skipped, manifest


# ---- the modality ----------------------------------------------------------------------------------


def to_tensor(x: np.ndarray) -> torch.Tensor:
    import torch

    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).unsqueeze(0)


def mel_power(x: np.ndarray, rate: int, n_mels: int = 80) -> np.ndarray:
    """(n_mels, frames) mel power spectrogram: 25 ms windows, 10 ms hop."""
    import librosa

    n_fft = int(2 ** np.ceil(np.log2(0.025 * rate)))
    return librosa.feature.melspectrogram(y=x.astype(np.float32), sr=rate, n_fft=n_fft, hop_length=rate // 100,
                                          win_length=int(0.025 * rate), n_mels=n_mels, fmax=rate / 2)


def log_mel(x: np.ndarray, rate: int, n_mels: int = 80) -> np.ndarray:
    """(n_mels, frames) log-mel spectrogram in dB of power."""
    return 10 * np.log10(np.maximum(mel_power(x, rate, n_mels), 1e-10))


def spectrogram_picture(rows: list[list[np.ndarray]], rate: int, path: str, titles: list[str] | None = None,
                        columns: list[str] | None = None) -> None:
    """Log-mel spectrograms, a row per group, columns side by side, as one PNG; `titles` label
    the rows, `columns` the columns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.6 * n_cols, 1.9 * n_rows), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(row) and len(row[j]):
                ax.imshow(log_mel(row[j], rate), origin="lower", aspect="auto", cmap="magma", vmin=-100, vmax=0)
        if titles:
            axes[i][0].set_ylabel(titles[i], fontsize=8)
    for j, name in enumerate(columns or []):
        axes[0][j].set_title(name, fontsize=9)
    fig.tight_layout()
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=70)
    plt.close(fig)
    os.replace(tmp, path)


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

    @property
    def model_classes(self):
        from pipeline.models.speech import CodePrior, SpeechVQVAE

        return {"SpeechVQVAE": SpeechVQVAE, "CodePrior": CodePrior}

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
        return x, data.sample_rate, int(item.cond[SPEAKER]), item.meta.get("speaker", ""), item.meta.get("text", "")

    def to_members(self, example) -> dict[str, bytes]:
        x, rate, speaker, _, text = example
        return {"flac": encode_flac(x, rate), "spk": str(speaker).encode(), "txt": text.encode("utf-8")}

    def tally(self, example) -> dict[str, float]:
        x, rate, _, name, _ = example
        hours = len(x) / rate / 3600
        return {"hours": hours, "utterances": 1, f"speaker/{name}/hours": hours, f"speaker/{name}/utterances": 1}

    # read
    def from_members(self, members: dict[str, bytes]) -> Item:
        x, _ = decode_flac(members["flac"])
        return Item(to_tensor(x), {SPEAKER: int(members["spk"])})

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
        return Batch(x, cond, mask, [it.key for it in items])

    def crop(self, item: Item, stage1: SpeechStage1, rng: random.Random | None) -> Item:
        """Training: a random `segment`-sample crop; validation (rng None): the first `val_segment`."""
        n = item.x.shape[-1]
        size = stage1.segment if rng is not None else stage1.val_segment
        if n <= size:
            return item
        start = rng.randrange(n - size + 1) if rng is not None else 0
        return Item(item.x[:, start:start + size], item.cond, item.key)

    def sample_latent_shape(self, data: SpeechData, sample: SpeechSample, dims_per_code: int) -> tuple[int, ...]:
        return (max(1, round(sample.seconds * data.sample_rate / dims_per_code)),)

    # models
    def build_autoencoder(self, stage1: SpeechStage1, data: SpeechData, cond: dict[str, CondSpec]):
        from pipeline.models.speech import SpeechVQVAE

        if SPEAKER not in cond:
            raise UserError(f"no speaker table for {data.name}: shard it first (jobs/shard.py)")
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

    def build_prior(self, stage2: SpeechStage2, codebook_size: int, cond: dict[str, CondSpec], latent_shape=None,
                    data=None):
        from pipeline.models.speech import CodePrior

        return CodePrior(codebook_size, num_speakers=cond[SPEAKER].size if SPEAKER in cond else 0,
                         hidden=stage2.hidden, num_layers=stage2.num_layers, cycle=stage2.cycle,
                         kernel_size=stage2.kernel_size, speaker_dim=stage2.speaker_dim)

    # scoring and writing
    def val_sums(self, batch: Batch, out) -> dict[str, float]:
        return {"nll_bits": float(out.nll_bits_sum), "dims": float(out.samples)}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        bits = sums["nll_bits"] / max(sums["dims"], 1.0)
        return {"val_bits_per_sample": bits, "val_recon_bits_per_dim": bits,
                "val_bits_per_dim": bits + sums["latent_bits"] / max(sums["dims"], 1.0)}

    def shown_length(self, stage1: SpeechStage1, data: SpeechData) -> int | None:
        return int(stage1.shown_seconds * data.sample_rate)

    def write(self, groups: list[list[torch.Tensor]], path_stem: str, data: SpeechData) -> list[str]:
        rate = data.sample_rate
        rows = [[g.detach().float().cpu().numpy().reshape(-1) for g in group] for group in groups]
        picture = f"{path_stem}.png"
        spectrogram_picture(rows, rate, picture)
        paths = [picture]
        for i, row in enumerate(rows):
            for j, x in enumerate(row):
                path = f"{path_stem}-{i}-{j}.wav"
                write_wav(path, x, rate)
                paths.append(path)
        return paths

    def decoder_options(self, sample: SpeechSample) -> dict:
        return {"temperature": sample.decoder_temperature}

    def metric_scale(self, settings) -> str | None:
        """val_bits_per_sample scores mu-law classes of another signal with a linear predictor or
        pre-emphasis, and per sample of another rate: versions differing in these are not compared."""
        s1 = settings.stage1
        return f"sample_rate={settings.data.sample_rate} lpc_order={s1.lpc_order} preemphasis={s1.preemphasis}"

    def evaluate_model(self, settings, model_uri: str) -> dict:
        """Voice conversion's scores, logged on the model's run (speech_convert.py)."""
        from pipeline.modalities.speech_convert import evaluate_and_log

        try:
            return evaluate_and_log(settings, model_uri)
        except UserError as e:  # e.g. one speaker only: the model is trained and registered all the same
            print(f"voice conversion not scored: {e}", flush=True)
            return {}

    def make_demo(self, data: SpeechData, small: bool = False) -> dict:
        from pipeline.modalities.speech_demo import make_demo_corpus

        sizes = dict(per_speaker=10, speakers=4) if small else {}
        return make_demo_corpus(data.root, seed=data.seed, **sizes)


MODALITY = register(SpeechModality())
