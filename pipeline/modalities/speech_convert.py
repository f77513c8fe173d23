"""Voice conversion with the speech VQ-VAE: encode an utterance, decode its codes with another
speaker's embedding (van den Oord et al. 2017, section 4.3).

    python jobs/convert.py --config configs/demo-speech.yaml --source p901_003 --speaker p905
    python jobs/convert.py --config configs/demo-speech.yaml --source my.wav --speaker p905
    python jobs/convert.py --config configs/demo-speech.yaml --evaluate

`--source` is a val utterance's key or an audio file; the result is
`<workdir>/conversions/<source>-to-<speaker>.wav` beside a picture of the log-mel spectrograms of
source, conversion and a real utterance of the target speaker, also logged to MLflow.

`--evaluate` (run at the end of stage 1 too) converts `sample.convert_per_speaker` val
utterances of every trained speaker to `sample.convert_targets` other speakers each and logs, on
the model's MLflow run:
- conversion_speaker_fraction: the share of conversions whose speaker embedding (resemblyzer's
  pretrained encoder) is closer to the target speaker's centroid than to the source speaker's.
  Centroids come from the speakers' other val utterances, never from the converted ones.
- reconstruction_speaker_fraction: the same sources decoded with their own speaker's id, scored
  the same way (closer to the source speaker's centroid than to each target's): the ceiling the
  decoder's rendition puts on the conversion fraction. When it is low too, the decoder, not
  speaker information left in the codes, is what limits conversion (train it longer).
- conversion_mcd_to_source (dB): mel-cepstral distortion, DTW-aligned, between each conversion
  and its source: the content kept;
  reference_mcd_source_to_target: the same between the source and real utterances of the target
  speaker (other sentences): what "different content, target voice" scores. The first should be
  clearly lower.
"""
from __future__ import annotations

import math
import os
import random
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from pipeline.config import Settings
from pipeline.errors import UserError
from pipeline.models.speech import SPEAKER
FRACTION = "conversion_speaker_fraction"
EVALUATED_WITH = "conversion_evaluated_with"  # the tag holding the sample.* settings of the scores


# ---- scores ------------------------------------------------------------------------------------------


def mel_cepstrum(x: np.ndarray, rate: int, order: int = 24) -> np.ndarray:
    """(frames, order) mel-cepstral coefficients c1..c_order in the units MCD uses: the cosine
    transform of the log-mel amplitude spectrum L_k = (10 / ln 10) ln |X_k| over N = 40 bands
    (25 ms windows, 10 ms hop), c_n = (2 / N) sum_k L_k cos(pi n (k + 1/2) / N), the cepstrum's
    own scaling. Bands more than 60 dB below the utterance's loudest are floored there, so that
    digital silence does not dominate the distance."""
    import librosa
    import scipy.fft

    from pipeline.modalities.speech import mel_power

    power_db = librosa.power_to_db(mel_power(x, rate, n_mels=40), ref=np.max, top_db=60.0)
    amplitude_db = power_db / 2.0  # 10 log10 |X|^2 -> 10 log10 |X|
    bands = amplitude_db.shape[0]
    return (scipy.fft.dct(amplitude_db, type=2, axis=0)[1:order + 1] / bands).T  # scipy's type 2: 2 sum_k ...


def mcd(a: np.ndarray, b: np.ndarray, rate: int) -> float:
    """Mel-cepstral distortion in dB between two waveforms along their DTW alignment: the mean over
    aligned frames of sqrt(2 * sum_d (c_d - c'_d)^2), c as from mel_cepstrum (c0, the gain, left
    out): the textbook (10 / ln 10) sqrt(2 sum (c_d - c'_d)^2) of natural-log cepstra, the factor
    being inside c. Different speakers reading different sentences score about 10-15 dB."""
    ca, cb = mel_cepstrum(a, rate), mel_cepstrum(b, rate)
    cost = np.sqrt(2.0 * ((ca[:, None, :] - cb[None, :, :]) ** 2).sum(-1))
    path = dtw_path(cost)
    return float(cost[path[:, 0], path[:, 1]].mean())


def dtw_path(cost: np.ndarray) -> np.ndarray:
    """The (k, 2) index pairs of the cheapest monotone path from cost[0, 0] to cost[-1, -1] with
    steps (1, 1), (0, 1) and (1, 0), each cell's cost added once; ties go to the diagonal, then
    (0, 1). The same path as librosa.sequence.dtw's defaults, without its numba kernel, whose
    compilation took 5-50 s the first time a process scored a conversion. The accumulated cost is
    filled one anti-diagonal at a time (each cell needs only the two diagonals before it)."""
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)  # acc[i + 1, j + 1]: the cheapest path's cost to (i, j)
    acc[0, 0] = 0.0
    for k in range(n + m - 1):
        i = np.arange(max(0, k - m + 1), min(k, n - 1) + 1)
        j = k - i
        acc[i + 1, j + 1] = cost[i, j] + np.minimum(np.minimum(acc[i, j], acc[i, j + 1]), acc[i + 1, j])
    i, j, path = n - 1, m - 1, [(n - 1, m - 1)]
    while i or j:  # back from the end, each step to the cheapest predecessor (inf off the matrix)
        i, j = min(((i - 1, j - 1), (i, j - 1), (i - 1, j)), key=lambda s: acc[s[0] + 1, s[1] + 1])
        path.append((i, j))
    return np.array(path[::-1])


class SpeakerEncoder:
    """resemblyzer's pretrained speaker encoder (its weights ship in its wheel: no download)."""

    def __init__(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # webrtcvad's pkg_resources deprecation
            from resemblyzer import VoiceEncoder, preprocess_wav
        self._preprocess = preprocess_wav
        self.encoder = VoiceEncoder("cpu", verbose=False)

    def embed(self, x: np.ndarray, rate: int) -> np.ndarray:
        wav = self._preprocess(x.astype(np.float32), source_sr=rate)
        if len(wav) < 1600:  # resemblyzer's VAD can trim a short clip to nothing: keep it whole
            import librosa

            wav = librosa.resample(x.astype(np.float32), orig_sr=rate, target_sr=16000)
        return self.encoder.embed_utterance(wav)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


# ---- conversion --------------------------------------------------------------------------------------


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
    wav = model.decode_indices(batch, cond, temperature=temperature, generator=generator)[:, 0].float().cpu().numpy()
    return [wav[i, :n * model.hop] for i, n in enumerate(lengths)]


def _val_utterances(settings: Settings) -> tuple[dict[int, list[tuple[str, np.ndarray]]], list[str], set[str]]:
    """{speaker id: [(key, waveform)]} of the val shards, the speaker names, the held-out names."""
    from pipeline.data.reader import SkipCounter, eval_batches, shard_urls

    manifest, urls = shard_urls(settings.shards_dir, "val")
    names = manifest["cond"][SPEAKER]["names"]
    held = {row["id"] for row in manifest.get("speakers", []) if row.get("held_out")}
    found: dict[int, list[tuple[str, np.ndarray]]] = defaultdict(list)
    skips = SkipCounter(f"the val shards of {settings.shards_dir}")
    for batch in eval_batches(urls, 1, 0, 1, settings.modality, skips):
        found[int(batch.cond[SPEAKER][0])].append((batch.keys[0], batch.x[0, 0].numpy()))
    return found, names, held


def evaluate(settings: Settings, model, device="cpu", out_dir: str | None = None) -> tuple[dict, list[str]]:
    """The conversion scores (see the module's doc) and the files showing a few conversions."""
    rate, s = settings.data.sample_rate, settings.sample
    found, names, held = _val_utterances(settings)
    trained = [spk for spk in sorted(found) if names[spk] not in held and len(found[spk]) >= 2]
    if len(trained) < 2:
        raise UserError(f"{settings.shards_dir}: voice conversion is scored on speakers with 2+ val utterances; "
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
    centroid = {spk: _unit(np.mean([_unit(encoder.embed(x, rate)) for x in refs], axis=0))
                for spk, refs in references.items()}
    closer, kept, mcd_conv, mcd_ref = [], [], [], []
    own = {key: _unit(encoder.embed(y, rate)) for key, y in rebuilt.items()}
    for (src, key, x, tgt), y in zip(jobs, converted):
        e = _unit(encoder.embed(y, rate))
        closer.append(float(e @ centroid[tgt] > e @ centroid[src]))
        kept.append(float(own[key] @ centroid[src] > own[key] @ centroid[tgt]))
        mcd_conv.append(mcd(y, x[:len(y)], rate))
        mcd_ref.append(float(np.mean([mcd(x, r, rate) for r in references[tgt][:3]])))
    metrics = {FRACTION: float(np.mean(closer)), "reconstruction_speaker_fraction": float(np.mean(kept)),
               "conversion_mcd_to_source": float(np.mean(mcd_conv)),
               "reference_mcd_source_to_target": float(np.mean(mcd_ref)), "conversions": float(len(jobs)),
               "conversion_samples_per_s": sum(len(y) for y in converted) / max(seconds, 1e-9)}
    files: list[str] = []
    if out_dir is not None:
        files = _write_examples(list(zip(jobs, converted))[:6], references, names, rate, out_dir)
    return metrics, files


def _write_examples(shown: list, references: dict, names: list[str], rate: int, out_dir: str) -> list[str]:
    """conversions.png (a row per conversion: source | conversion | the target speaker) and the
    WAVs of each row."""
    from pipeline.modalities.speech import spectrogram_picture, write_wav

    os.makedirs(out_dir, exist_ok=True)
    picture = os.path.join(out_dir, "conversions.png")
    rows = [[x[:len(y)], y, references[tgt][0]] for (_, _, x, tgt), y in shown]
    titles = [f"{key}\nto {names[tgt]}" for (_, key, _, tgt), _ in shown]
    spectrogram_picture(rows, rate, picture, titles, ["source", "conversion", "target speaker (another sentence)"])
    files = [picture]
    for ((_, key, _, tgt), _), row in zip(shown, rows):
        for what, x in zip(("source", "conversion", "target"), row):
            files.append(os.path.join(out_dir, f"{key}-to-{names[tgt]}-{what}.wav"))
            write_wav(files[-1], x, rate)
    return files


def evaluate_and_log(settings: Settings, model_uri: str, force: bool = False) -> dict:
    """Score the model at `model_uri` and log the scores and pictures on its MLflow run; a run
    that holds them already is not scored again unless `force`."""
    import tempfile

    import mlflow
    import torch
    from mlflow import MlflowClient

    from pipeline import tracking

    tracking.setup_tracking(settings.tracking_uri, settings.experiment)
    info = tracking.resolve(model_uri)
    run = MlflowClient().get_run(info["run_id"])
    s = settings.sample  # what the scores depend on besides the model: kept reused only when equal
    made_with = (f"per_speaker={s.convert_per_speaker} targets={s.convert_targets} seconds={s.convert_seconds} "
                 f"decoder_temperature={s.decoder_temperature} seed={s.seed}")
    if FRACTION in run.data.metrics and run.data.tags.get(EVALUATED_WITH) == made_with and not force:
        return {k: v for k, v in run.data.metrics.items() if k.startswith(("conversion", "reference_mcd"))}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = tracking.load_vqvae(f"models:/{info['name']}/{info['version']}", device)
    with tempfile.TemporaryDirectory(prefix="convert-eval-") as folder:
        metrics, files = evaluate(settings, model, device, folder)
        with mlflow.start_run(run_id=info["run_id"]) as run:
            mlflow.log_metrics(metrics)
            mlflow.set_tag(EVALUATED_WITH, made_with)
            for path in files:
                mlflow.log_artifact(path, "conversions")
            where = run.info.artifact_uri.removeprefix("file://")
    if files and "://" not in where:
        print(f"voice conversion: source | conversion | target speaker at {where}/conversions/"
              f"{os.path.basename(files[0])} (and WAVs beside it)", flush=True)
    return metrics


# ---- one conversion -----------------------------------------------------------------------------------


def _source(settings: Settings, source: str, found: dict) -> tuple[str, np.ndarray]:
    """The waveform of `--source`: an audio file, else the val utterance of that key in `found`."""
    from pipeline.modalities import SkipSample
    from pipeline.modalities.speech import read_audio, resample, trim_silence

    data = settings.data
    if os.path.isfile(source):
        try:
            audio, rate = read_audio(Path(source).read_bytes())
        except SkipSample as e:
            raise UserError(f"{source}: {e}") from None
        if rate < data.sample_rate:
            raise UserError(f"{source}: sample rate {rate} Hz is below data.sample_rate {data.sample_rate} Hz")
        x = resample(audio.mean(axis=1), rate, data.sample_rate)
        if data.trim_silence:
            x = trim_silence(x, data.sample_rate, data.trim_db)
        return Path(source).stem, x
    for utterances in found.values():
        for key, x in utterances:
            if key == source:
                return key, x
    some = sorted(k for u in found.values() for k, _ in u)[:5]
    raise UserError(f"--source {source!r} is neither a file nor the key of a val utterance (e.g. {', '.join(some)})")


def _speaker_id(settings: Settings, speaker: str) -> tuple[int, str]:
    from pipeline.data.reader import shard_urls

    manifest, _ = shard_urls(settings.shards_dir, "train")
    names = manifest["cond"][SPEAKER]["names"]
    if speaker in names:
        return names.index(speaker), speaker
    if speaker.isdigit() and int(speaker) < len(names):
        return int(speaker), names[int(speaker)]
    raise UserError(f"--speaker {speaker!r}: not a speaker of {settings.data.name} "
                    f"({', '.join(names[:8])}{', ...' if len(names) > 8 else ''})")


def convert(settings: Settings, source: str, speaker: str, out: str | None = None,
            seconds: float | None = None) -> str:
    """Decode the codes of `source` (a val key or an audio file) with `speaker`'s id; write the WAV
    and a spectrogram picture (source | conversion | the target's real voice), log both in MLflow.
    `seconds`: only the source's first seconds (a quick listen: generation is sample by sample)."""
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):  # before any work
        raise UserError(f"--seconds {seconds}: give a positive number of seconds")
    import mlflow
    import torch

    from pipeline import tracking

    from pipeline.modalities.speech import SpeechModality

    if not isinstance(settings.modality, SpeechModality):
        raise UserError(f"voice conversion needs a speech model; data.modality is {settings.data.modality!r}")
    experiment_id = tracking.setup_tracking(settings.tracking_uri, settings.experiment)
    target, target_name = _speaker_id(settings, speaker)
    found, _, _ = _val_utterances(settings)  # the source's key and the target's real sentence
    key, x = _source(settings, source, found)
    if seconds is not None:
        x = x[:int(seconds * settings.data.sample_rate)]
    info = tracking.resolve(settings.codes.model or settings.vqvae_champion)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = tracking.load_vqvae(f"models:/{info['name']}/{info['version']}", device)
    if len(x) < model.hop:
        raise UserError(f"--source {source}: {len(x)} samples, shorter than one code ({model.hop} samples)")
    started = time.perf_counter()
    (y,) = convert_batch(model, [x], [target], device, seed=settings.sample.seed,
                         temperature=settings.sample.decoder_temperature)
    took = time.perf_counter() - started
    folder = out or os.path.join(settings.workdir, "conversions")
    os.makedirs(folder, exist_ok=True)
    stem = os.path.join(folder, f"{key}-to-{target_name}")
    from pipeline.modalities.speech import spectrogram_picture, write_wav

    write_wav(f"{stem}.wav", y, settings.data.sample_rate)
    reference = found.get(target, [("", np.zeros(0))])[0][1]
    spectrogram_picture([[x[:len(y)], y, reference]], settings.data.sample_rate, f"{stem}.png",
                        [f"{key} to {target_name}"], ["source", "conversion", f"{target_name} (another sentence)"])
    tags = {"stage": "convert", "vqvae_name": info["name"], "vqvae_version": info["version"]}
    with tracking.start_run(experiment_id, f"convert-{key}-to-{target_name}", tags=tags):
        mlflow.log_params({"source": source, "speaker": target_name, "seconds": "all" if seconds is None else seconds,
                           "model": f"models:/{info['name']}/{info['version']}"})
        mlflow.log_metric("seconds", took)
        mlflow.log_artifact(f"{stem}.wav", "conversion")
        mlflow.log_artifact(f"{stem}.png", "conversion")
    print(f"convert: {key} in the voice of {target_name} -> {stem}.wav ({len(y) / settings.data.sample_rate:.1f} s "
          f"in {took:.1f} s; spectrograms {stem}.png)", flush=True)
    return f"{stem}.wav"
