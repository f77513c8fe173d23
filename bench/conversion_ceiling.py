"""What a perfect voice conversion would score on the speech demo's corpus, and what the speaker
encoder tells its voices apart by.

The conversion score (`conversion_speaker_fraction`, pipeline/modalities/speech/convert.py) asks
whether resemblyzer's speaker encoder puts a conversion nearer the target voice's centroid than
the source's. A VQ-VAE conversion keeps what the codes hold (the words, their timing, the accent's
vowels) and can change what the decoder takes from the speaker id. Here espeak-ng itself stands in
for a perfect conversion: the source voice's sentence re-synthesized with some of the target
voice's settings, scored against centroids of real sentences, at the demo's sample rate and with
its silence trimming. Prints, for each mix, the fraction nearer the target:

    .venv/bin/python bench/conversion_ceiling.py [--pairs 90] [--rate 8000] [--accented]

`--accented`: the corpus the demo had before, ten voices in seven accents (American, English RP
and regional, Scottish, Caribbean), the reason it has one accent now.

  target's variant + pitch, source's accent + rate   the ceiling for codes that keep the accent
  target's accent + variant + pitch, source's rate   codes that keep only the timing
  target's pitch only                                a decoder that sets only the pitch
  everything the target's                            the target speaking (a check: ~1)
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.modalities.speech.audio import resample, trim_silence  # noqa: E402
from pipeline.modalities.speech.demo import VOICES, _espeak, _synthesize, sentences  # noqa: E402
from pipeline.modalities.speech.scores import SpeakerEncoder, unit  # noqa: E402

ACCENTED = {  # the demo's voices until 2026-11-29: (espeak-ng voice, pitch, words per minute)
    "p901": ("en-us+m3", 35, 155), "p902": ("en-gb+f2", 70, 165), "p903": ("en-gb-scotland+m1", 45, 145),
    "p904": ("en-029+f4", 80, 150), "p905": ("en-gb-x-rp+m7", 25, 170), "p906": ("en-us+f1", 60, 175),
    "p907": ("en-gb-x-gbclan+m5", 50, 140), "p908": ("en-gb-x-gbcwmd+f5", 90, 160),
    "p909": ("en-us+klatt2", 40, 150), "p910": ("en-gb+f3", 75, 145),
}
MIXES = {  # name -> (espeak voice, pitch, words per minute) from source a and target b
    "target's variant + pitch, source's accent + rate":
        lambda a, b: (f"{a[0].split('+')[0]}+{b[0].split('+')[1]}", b[1], a[2]),
    "target's accent + variant + pitch, source's rate": lambda a, b: (b[0], b[1], a[2]),
    "target's pitch only": lambda a, b: (a[0], b[1], a[2]),
    "everything the target's": lambda a, b: b,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=90, help="(source, target) voice pairs (90: all)")
    parser.add_argument("--references", type=int, default=5, help="real sentences per voice centroid")
    parser.add_argument("--rate", type=int, default=8000, help="sample rate (the speech demo's: 8000)")
    parser.add_argument("--trim-db", type=float, default=40.0)
    parser.add_argument("--accented", action="store_true", help="the earlier demo voices, in seven accents")
    args = parser.parse_args()
    voices = ACCENTED if args.accented else {s: v[:3] for s, v in VOICES.items()}

    exe, encoder = _espeak(), SpeakerEncoder()
    texts = sentences(args.references + args.pairs, random.Random(1))
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "x.wav"

        def embed(voice: tuple, text: str) -> np.ndarray:
            import soundfile as sf

            _synthesize(exe, voice, text, wav)
            x, rate = sf.read(wav, dtype="float32")
            return unit(encoder.embed(trim_silence(resample(x, rate, args.rate), args.rate, args.trim_db), args.rate))

        centroid = {s: unit(np.mean([embed(v, t) for t in texts[:args.references]], axis=0))
                    for s, v in voices.items()}
        pairs = [(a, b) for a in voices for b in voices if a != b]
        pairs = random.Random(0).sample(pairs, min(args.pairs, len(pairs)))
        nearer = {name: [] for name in MIXES}
        for (a, b), text in zip(pairs, texts[args.references:]):
            for name, mix in MIXES.items():
                e = embed(mix(voices[a], voices[b]), text)
                nearer[name].append(float(e @ centroid[b] > e @ centroid[a]))
    apart = np.mean([centroid[a] @ centroid[b] for a in voices for b in voices if a != b])
    print(f"{len(voices)} voices at {args.rate} Hz; mean cosine between their centroids {apart:.2f}")
    for name, hits in nearer.items():
        print(f"  {name:50s} nearer the target: {np.mean(hits):.2f} of {len(hits)}")


if __name__ == "__main__":
    main()
