"""Does the VQ-VAE whose decoder predicts WORLD frames (`stage1.decoder: world`) keep the words?

    .venv/bin/python bench/world_decoder.py --steps 3000 --espeak --json world.json   # the 4 flite voices

A small corpus made here offline: `--flite` voices of flite (a system package) and `--espeak`
espeak-ng voices of the speech demo, each reading `--per-speaker` sentences of the demo's grammar
at 16 kHz; a seeded sixth of every speaker's sentences is held out. pipeline.models.speech_world's
WorldVQVAE trains in this process (no Ray) on random crops; then, on the held-out sentences:

- the word error rate (PocketSphinx, pipeline/modalities/speech/words.py) of the sources, of
  their WORLD analysis-synthesis (the vocoder's ceiling), of their reconstructions (codes decoded
  with their own speaker) and of their conversions (decoded with `--targets` other speakers);
- the share of conversions that resemblyzer's speaker encoder puts nearer the target speaker's
  centroid than the source's (centroids from the training sentences), and of reconstructions
  nearer their own.
Prints a table and the seconds each part took.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.models import world  # noqa: E402
from pipeline.modalities.speech import demo, words  # noqa: E402

FLITE = ["rms", "slt", "awb", "kal16"]
RATE = 16000


def speak(voice: str, text: str) -> np.ndarray:
    import soundfile as sf
    import soxr

    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        if voice.startswith("espeak:"):
            name = voice.split(":", 1)[1]
            v, pitch, wpm = demo.VOICES[name][:3]
            subprocess.run(["espeak-ng", "-v", v, "-p", str(pitch), "-s", str(wpm), "-w", f.name, text], check=True)
        else:
            subprocess.run(["flite", "-voice", voice, "-t", text, "-o", f.name], check=True)
        x, rate = sf.read(f.name)
    x = soxr.resample(x, rate, RATE) if rate != RATE else x
    return (x / max(1e-6, np.abs(x).max()) * 0.9).astype(np.float32)


def corpus(voices: list[str], per_speaker: int, seed: int):
    rng = random.Random(seed)
    rows = []  # (speaker id, text, waveform, features, held out)
    for spk, voice in enumerate(voices):
        texts = demo.sentences(per_speaker, rng)
        held = set(random.Random(seed + spk).sample(range(per_speaker), max(1, per_speaker // 6)))
        for i, text in enumerate(texts):
            x = speak(voice, text)
            rows.append((spk, text, x, world.analyze(x, RATE), i in held))
    return rows


def _no_vq(dim: int):
    """In place of the quantizer (--no-vq): z_e goes to the decoder as it is, to tell a bottleneck
    of the codes from a decoder that cannot render what it is given."""
    import torch

    class NoVQ(torch.nn.Module):
        def forward(self, z_e, mask=None):
            return _identity_vq(z_e)

    module = NoVQ()
    module.dim = dim
    return module


def _identity_vq(z_e):
    import torch

    from pipeline.models.quantizer import VQOutput

    zero = torch.zeros((), device=z_e.device)
    return VQOutput(z_e, torch.zeros(z_e.shape[0], z_e.shape[-1], dtype=torch.long), zero, zero, zero, zero, zero)


def _rebuild(model, x, speaker: int, no_vq: bool):
    """A waveform from x decoded with `speaker`: through the codes, or (no_vq) from z_e itself."""
    import torch

    xb = torch.from_numpy(x)[None, None]
    if not no_vq:
        return model.decode_indices(model.encode(xb), {"speaker": torch.tensor([speaker])})[0, 0].numpy()
    with torch.no_grad():
        spk = torch.tensor([speaker])
        feats = model._features(model._decode(model._encode(xb), spk, model.frames(len(x))), spk)[0].numpy()
    return world.synthesize(feats, RATE)


def train(rows, steps: int, batch: int, crop_s: float, hidden: int, codebook: int, lr: float, seed: int,
          no_vq: bool = False, warp: float = 0.15):
    import torch

    from pipeline.models.speech_world import WorldVQVAE

    torch.manual_seed(seed)
    rng = random.Random(seed)
    train_rows = [r for r in rows if not r[4]]
    model = WorldVQVAE(num_speakers=max(r[0] for r in rows) + 1, rate=RATE, hidden=hidden, codebook_size=codebook,
                       input_warp=warp)
    if no_vq:
        model.vq = _no_vq(model.vq.dim)
    sums: dict = {}
    for r in train_rows:
        for k, v in world.sums(r[3], r[0]).items():
            sums[k] = sums.get(k, 0.0) + v
    model.set_statistics(sums)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    hop, frame = model.hop, model.frame
    n = int(crop_s * RATE) // hop * hop
    losses = []
    for step in range(1, steps + 1):
        xs, fs, spk = [], [], []
        for _ in range(batch):
            s, _, x, f, _ = rng.choice(train_rows)
            if len(x) < n:
                x = np.pad(x, (0, n - len(x)))
                f = np.pad(f, ((0, n // frame + 1 - len(f)), (0, 0)), mode="edge") if len(f) < n // frame + 1 else f
                start = 0
            else:
                start = rng.randrange((len(x) - n) // frame + 1) * frame
            xs.append(x[start:start + n])
            j = start // frame
            ff = f[j:j + n // frame + 1]
            if len(ff) < n // frame + 1:
                ff = np.pad(ff, ((0, n // frame + 1 - len(ff)), (0, 0)), mode="edge")
            fs.append(ff)
            spk.append(s)
        out = model(torch.from_numpy(np.stack(xs))[:, None],
                    {"speaker": torch.tensor(spk), "world": torch.from_numpy(np.stack(fs))})
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.feature_loss))
        if step % max(1, steps // 10) == 0:
            print(f"step {step}: feature loss {np.mean(losses[-50:]):.3f}, envelope {float(out.envelope_loss):.3f}, "
                  f"perplexity {float(out.vq.perplexity):.1f}", flush=True)
    return model.eval(), losses


def evaluate(model, rows, targets: int, seed: int, on: str = "val", no_vq: bool = False) -> dict:
    from pipeline.modalities.speech.scores import SpeakerEncoder, unit

    rng = random.Random(seed)
    held = [r for r in rows if r[4]] if on == "val" else \
        [r for s in sorted({r[0] for r in rows}) for r in [q for q in rows if q[0] == s and not q[4]][:5]]
    speakers = sorted({r[0] for r in rows})
    recognizer = words.Recognizer()
    encoder = SpeakerEncoder()
    centroid = {s: unit(np.mean([unit(encoder.embed(r[2], RATE)) for r in rows if r[0] == s and not r[4]][:8], axis=0))
                for s in speakers}
    refs, heard = [], {"source": [], "vocoder": [], "reconstruction": []}
    conv_refs, conv_heard, closer, own = [], [], [], []
    for s, text, x, f, _ in held:
        refs.append(text)
        heard["source"].append(recognizer.transcribe(x, RATE))
        heard["vocoder"].append(recognizer.transcribe(world.synthesize(f, RATE), RATE))
        y = _rebuild(model, x, s, no_vq)
        heard["reconstruction"].append(recognizer.transcribe(y, RATE))
        e = unit(encoder.embed(y, RATE))
        for t in rng.sample([o for o in speakers if o != s], min(targets, len(speakers) - 1)):
            c = _rebuild(model, x, t, no_vq)
            conv_refs.append(text)
            conv_heard.append(recognizer.transcribe(c, RATE))
            ce = unit(encoder.embed(c, RATE))
            closer.append(float(ce @ centroid[t] > ce @ centroid[s]))
            own.append(float(e @ centroid[s] > e @ centroid[t]))
    out = {f"{k}_word_error": words.word_error(refs, v) for k, v in heard.items()}
    out.update(conversion_word_error=words.word_error(conv_refs, conv_heard),
               conversion_speaker_fraction=float(np.mean(closer)), reconstruction_speaker_fraction=float(np.mean(own)),
               held_out=len(held), conversions=len(conv_refs))
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flite", nargs="*", default=FLITE)
    p.add_argument("--espeak", nargs="*", default=["p901", "p902", "p905", "p908"])
    p.add_argument("--per-speaker", type=int, default=30)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=float, default=1.0, help="seconds per training crop")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--codebook", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--targets", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--on", choices=["val", "train"], default="val",
                   help="score the held-out sentences, or 5 training sentences per speaker (does it fit?)")
    p.add_argument("--no-vq", action="store_true", help="no quantizer: z_e straight to the decoder (a diagnosis)")
    p.add_argument("--warp", type=float, default=0.15, help="stage1.input_warp: the encoder input's mel-axis stretch")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    import torch

    voices = list(args.flite) + [f"espeak:{v}" for v in args.espeak]
    t0 = time.perf_counter()
    rows = corpus(voices, args.per_speaker, args.seed)
    t1 = time.perf_counter()
    model, losses = train(rows, args.steps, args.batch, args.crop, args.hidden, args.codebook, args.lr, args.seed,
                          args.no_vq, args.warp)
    t2 = time.perf_counter()
    figures = evaluate(model, rows, args.targets, args.seed, args.on, args.no_vq)
    t3 = time.perf_counter()
    figures.update(voices=voices, steps=args.steps, threads=torch.get_num_threads(), corpus_s=t1 - t0,
                   train_s=t2 - t1, evaluate_s=t3 - t2, final_feature_loss=float(np.mean(losses[-50:])))
    for k, v in figures.items():
        print(f"{k:32s} {v:.4g}" if isinstance(v, float) else f"{k:32s} {v}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main()
