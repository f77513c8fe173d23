"""Voice conversion with the speech VQ-VAE: encode an utterance, decode its codes with another
speaker's embedding (van den Oord et al. 2017, section 4.3). What the convert job asks the speech
modality (pipeline/stages/convert.py loads the model and logs to MLflow):

`convert_many`: each `--source` is a val utterance's key, an audio file (a folder is expanded to
its audio files by the job), or `val` (every val utterance); each result is
`<out>/<source>-to-<speaker>.wav` beside a picture of the log-mel spectrograms of source,
conversion and a real utterance of the target speaker. One model load for all, in batches.

`evaluate` (at the end of stage 1, and `jobs/convert.py --evaluate`) converts
`sample.convert_per_speaker` val utterances of every trained speaker to `sample.convert_targets`
other speakers each and scores:
- conversion_speaker_fraction: the share of conversions whose speaker embedding (resemblyzer's
  pretrained encoder) is closer to the target speaker's centroid than to the source speaker's.
  Centroids come from the speakers' other val utterances, never from the converted ones.
- reconstruction_speaker_fraction: the same sources decoded with their own speaker's id, scored
  the same way (closer to the source speaker's centroid than to each target's): the ceiling the
  decoder's rendition puts on the conversion fraction. When it is low too, the decoder, not
  speaker information left in the codes, is what limits conversion (train it longer).
- source_word_error, reconstruction_word_error, conversion_word_error: an offline recognizer's
  word error rate (words.py: PocketSphinx, the `speech-eval` extra) against the transcripts, on
  the sources cut as the conversions are, their reconstructions and their conversions, all at the
  model's rate: the words kept is how near the last two come to the first;
- conversion_mcd_to_source (dB): mel-cepstral distortion, DTW-aligned, between each conversion
  and its source: the content kept;
  reference_mcd_source_to_target: the same between the source and real utterances of the target
  speaker (other sentences): what "different content, target voice" scores. The first should be
  clearly lower.
"""
from __future__ import annotations

import os
import random
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from pipeline import progress
from pipeline.errors import UserError
from pipeline.formats.reader import SkipCounter, eval_batches, shard_urls
from pipeline.media import spectrogram_picture, write_wav
from pipeline.modalities import Conversion, RawItem, SkipSample
from pipeline.modalities.speech.scores import SpeakerEncoder, mcd, unit
from pipeline.modalities.speech.settings import SpeechData, SpeechSample
from pipeline.modalities.speech.vctk import SPEAKER

FRACTION = "conversion_speaker_fraction"  # the first of the modality's evaluation_metrics


def convert_batch(model, sources: list[np.ndarray], speakers: list[int], device, seed: int = 0,
                  temperature: float = 1.0) -> list[np.ndarray]:
    """Each source waveform's codes decoded with the given speaker id, all in one batched
    generation; each result as long as its codes cover (a multiple of 64 samples)."""
    import torch

    codes, lengths = [], []
    for x in sources:
        c = model.encode(torch.from_numpy(np.ascontiguousarray(x, np.float32)).view(1, 1, -1).to(device))[0]
        codes.append(c)
        lengths.append(c.shape[0])
    batch = torch.zeros(len(codes), max(lengths), dtype=torch.long, device=device)
    for i, c in enumerate(codes):
        batch[i, :len(c)] = c
        batch[i, len(c):] = c[-1]  # past its end a row is cropped away; any code will do
    generator = torch.Generator(device=device).manual_seed(seed)
    cond = {SPEAKER: torch.as_tensor(speakers, device=device)}
    wav = model.decode_indices(batch, cond, temperature=temperature, generator=generator,
                               track=progress.track)[:, 0].float().cpu().numpy()
    return [wav[i, :n * model.hop] for i, n in enumerate(lengths)]


def val_utterances(shards_dir: str, modality) -> tuple[dict[int, list[tuple[str, np.ndarray]]], list[str], set[str]]:
    """{speaker id: [(key, waveform)]} of the val shards, the speaker names, the held-out names."""
    manifest, urls = shard_urls(shards_dir, "val")
    names = manifest["cond"][SPEAKER]["names"]
    held = {row["id"] for row in manifest.get("speakers", []) if row.get("held_out")}
    found: dict[int, list[tuple[str, np.ndarray]]] = defaultdict(list)
    skips = SkipCounter(f"the val shards of {shards_dir}")
    for batch in eval_batches(urls, 1, 0, 1, modality, skips):
        found[int(batch.cond[SPEAKER][0])].append((batch.keys[0], batch.x[0, 0].numpy()))
    return found, names, held


def evaluation_settings(s: SpeechSample) -> str:
    """What the scores depend on besides the model."""
    return (f"per_speaker={s.convert_per_speaker} targets={s.convert_targets} seconds={s.convert_seconds} "
            f"decoder_temperature={s.decoder_temperature} seed={s.seed}")


def evaluate(modality, model, shards_dir: str, data: SpeechData, s: SpeechSample, device,
             out_dir: str) -> tuple[dict, list[str]]:
    """The conversion scores (see the module's doc) and the files showing a few conversions."""
    rate = data.sample_rate
    found, names, held = val_utterances(shards_dir, modality)
    trained = [spk for spk in sorted(found) if names[spk] not in held and len(found[spk]) >= 2]
    if len(trained) < 2:
        raise UserError(f"{shards_dir}: voice conversion is scored on speakers with 2+ val utterances; "
                        f"{len(trained)} have them (raise data.val_fraction)")
    rng = random.Random(s.seed)
    per = s.convert_per_speaker
    limit = int(s.convert_seconds * rate)
    jobs = []  # (source speaker, key, waveform, target speaker)
    for spk in trained:
        per_here = min(per, len(found[spk]) - 1)  # keep 1+ utterance for the speaker's centroid
        others = [t for t in trained if t != spk]
        for key, x in found[spk][:per_here]:
            for target in rng.sample(others, min(s.convert_targets, len(others))):
                jobs.append((spk, key, x[:limit], target))
    references = {spk: [x[:limit] for _, x in found[spk][min(per, len(found[spk]) - 1):]] for spk in trained}

    start = time.perf_counter()
    converted = convert_batch(model, [j[2] for j in jobs], [j[3] for j in jobs], device, seed=s.seed,
                              temperature=s.decoder_temperature)
    seconds = time.perf_counter() - start
    sources: dict = {}  # each source once (key -> its first job), decoded with its own speaker
    for job in jobs:
        sources.setdefault(job[1], job)
    rebuilt = dict(zip(sources, convert_batch(model, [j[2] for j in sources.values()],
                                              [j[0] for j in sources.values()], device, seed=s.seed,
                                              temperature=s.decoder_temperature)))

    encoder = SpeakerEncoder()
    centroid = {spk: unit(np.mean([unit(encoder.embed(x, rate)) for x in refs], axis=0))
                for spk, refs in references.items()}
    closer, kept, mcd_conv, mcd_ref = [], [], [], []
    own = {key: unit(encoder.embed(y, rate)) for key, y in rebuilt.items()}
    for (src, key, x, tgt), y in zip(jobs, converted):
        e = unit(encoder.embed(y, rate))
        closer.append(float(e @ centroid[tgt] > e @ centroid[src]))
        kept.append(float(own[key] @ centroid[src] > own[key] @ centroid[tgt]))
        mcd_conv.append(mcd(y, x[:len(y)], rate))
        mcd_ref.append(float(np.mean([mcd(x, r, rate) for r in references[tgt][:3]])))
    metrics = {FRACTION: float(np.mean(closer)), "reconstruction_speaker_fraction": float(np.mean(kept)),
               "conversion_mcd_to_source": float(np.mean(mcd_conv)),
               "reference_mcd_source_to_target": float(np.mean(mcd_ref)), "conversions": float(len(jobs)),
               "conversion_samples_per_s": sum(len(y) for y in converted) / max(seconds, 1e-9),
               **word_errors(shards_dir, jobs, converted, sources, rebuilt, rate)}
    files = _write_examples(list(zip(jobs, converted))[:6], references, names, rate, out_dir)
    return metrics, files


WORD_ERRORS = ("source_word_error", "reconstruction_word_error", "conversion_word_error")


def val_transcripts(shards_dir: str) -> dict[str, str]:
    """{key: transcript} of the val shards' utterances that have one."""
    import webdataset as wds

    _, urls = shard_urls(shards_dir, "val")
    found = {}
    for sample in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(handler=wds.warn_and_continue)):
        text = sample.get("txt", b"").decode("utf-8", errors="replace").strip()
        if text:
            found[sample["__key__"]] = text
    return found


def word_errors(shards_dir: str, jobs: list, converted: list, sources: dict, rebuilt: dict, rate: int) -> dict:
    """An offline recognizer's word error rate (pipeline/modalities/speech/words.py) on the sources,
    their reconstructions and their conversions, each heard as long as the conversions are and at
    the model's rate, against the shards' transcripts; {} when the utterances have none, or the
    recognizer is not installed (said in one line)."""
    from pipeline.modalities.speech import words

    texts = val_transcripts(shards_dir)
    scored = [key for key in sources if key in texts]
    if not scored:
        return {}
    if not words.available():
        print(f"word error not measured: the recognizer is not installed (pip install -e '.[{words.EXTRA}]')",
              flush=True)
        return {}
    recognizer = words.Recognizer()
    refs = [texts[key] for key in scored]
    heard_sources = [recognizer.transcribe(sources[key][2][:len(rebuilt[key])], rate) for key in scored]
    heard_rebuilt = [recognizer.transcribe(rebuilt[key], rate) for key in scored]
    conv = [(texts[job[1]], recognizer.transcribe(y, rate)) for job, y in zip(jobs, converted) if job[1] in texts]
    return {"source_word_error": words.word_error(refs, heard_sources),
            "reconstruction_word_error": words.word_error(refs, heard_rebuilt),
            "conversion_word_error": words.word_error([r for r, _ in conv], [h for _, h in conv])}


def _write_examples(examples: list, references: dict, names: list[str], rate: int, out_dir: str) -> list[str]:
    """conversions.png (a row per conversion: source | conversion | the target speaker) and the
    WAVs of each row."""
    os.makedirs(out_dir, exist_ok=True)
    picture = os.path.join(out_dir, "conversions.png")
    rows = [[x[:len(y)], y, references[tgt][0]] for (_, _, x, tgt), y in examples]
    titles = [f"{key}\nto {names[tgt]}" for (_, key, _, tgt), _ in examples]
    spectrogram_picture(rows, rate, picture, titles, ["source", "conversion", "target speaker (another sentence)"])
    files = [picture]
    for ((_, key, _, tgt), _), row in zip(examples, rows):
        for what, x in zip(("source", "conversion", "target"), row):
            files.append(write_wav(os.path.join(out_dir, f"{key}-to-{names[tgt]}-{what}.wav"), x, rate))
    return files


# ---- one conversion -----------------------------------------------------------------------------------


def _source(modality, data: SpeechData, source: str, found: dict) -> tuple[str, np.ndarray]:
    """The waveform of `--source`: an audio file (read as the shard stage reads one), else the val
    utterance of that key in `found`."""
    if os.path.isfile(source):
        item = RawItem(key=Path(source).stem, path=source, cond={SPEAKER: 0})
        try:
            x = modality.preprocess(Path(source).read_bytes(), item, data)[0]
        except SkipSample as e:
            raise UserError(f"{source}: {e}") from None
        return item.key, x
    for utterances in found.values():
        for key, x in utterances:
            if key == source:
                return key, x
    some = sorted(k for u in found.values() for k, _ in u)[:5]
    raise UserError(f"--source {source!r} is neither a file nor the key of a val utterance (e.g. {', '.join(some)})")


def _speaker_id(shards_dir: str, data: SpeechData, speaker: str) -> tuple[int, str]:
    manifest, _ = shard_urls(shards_dir, "train")
    names = manifest["cond"][SPEAKER]["names"]
    if speaker in names:
        return names.index(speaker), speaker
    if speaker.isdigit() and int(speaker) < len(names):
        return int(speaker), names[int(speaker)]
    raise UserError(f"--speaker {speaker!r}: not a speaker of {data.name} "
                    f"({', '.join(names[:8])}{', ...' if len(names) > 8 else ''})")


BATCH = 8  # conversions decoded at once


def convert_many(modality, load_model, shards_dir: str, sources: list[str], speaker: str, out_dir: str,
                 data: SpeechData, s: SpeechSample, device, seconds: float | None = None) -> list[Conversion]:
    """Decode the codes of each source (a val key, an audio file, or "val": every val utterance)
    with `speaker`'s id, in batches of `BATCH`; write one WAV and a spectrogram picture (source |
    conversion | the target's real voice) each under `out_dir`. The model is loaded and the val
    shards read once for all; the sources are read a batch at a time, and what was written before
    a bad one stays. `seconds`: only each source's first seconds."""
    target, target_name = _speaker_id(shards_dir, data, speaker)
    found, _, _ = val_utterances(shards_dir, modality)  # the sources' keys and the target's real sentence
    sources = [k for source in sources for k in ([k for u in found.values() for k, _ in u] if source == "val"
                                                 else [source])]
    plain = data.model_copy(update={"world_frames": False})  # a source file needs no WORLD frames
    keys = {k for u in found.values() for k, _ in u}
    for source in sources:  # every source named right before the model loads (read batch by batch)
        if not os.path.isfile(source) and source not in keys:
            _source(modality, plain, source, found)  # its one-line error
    model = load_model()
    reference = found.get(target, [("", np.zeros(0))])[0][1]
    os.makedirs(out_dir, exist_ok=True)
    made = []
    for start in range(0, len(sources), BATCH):
        group = []
        for source in sources[start:start + BATCH]:
            key, x = _source(modality, plain, source, found)
            if seconds is not None:
                x = x[:int(seconds * data.sample_rate)]
            if len(x) < model.hop:
                raise UserError(f"--source {source}: {len(x)} samples, shorter than one code ({model.hop} samples)")
            group.append((source, key, x))
        began = time.perf_counter()
        ys = convert_batch(model, [x for _, _, x in group], [target] * len(group), device, seed=s.seed + start,
                           temperature=s.decoder_temperature)
        took = (time.perf_counter() - began) / len(group)
        for (_, key, x), y in zip(group, ys):
            name = f"{key}-to-{target_name}"
            stem = os.path.join(out_dir, name)
            write_wav(f"{stem}.wav", y, data.sample_rate)
            spectrogram_picture([[x[:len(y)], y, reference]], data.sample_rate, f"{stem}.png",
                                [f"{key} to {target_name}"], ["source", "conversion", f"{target_name} (another sentence)"])
            made.append(Conversion(name, target_name, [f"{stem}.wav", f"{stem}.png"], took,
                                   f"{key} in the voice of {target_name} -> {stem}.wav ({len(y) / data.sample_rate:.1f} s "
                                   f"in {took:.1f} s; spectrograms {stem}.png)"))
    return made
