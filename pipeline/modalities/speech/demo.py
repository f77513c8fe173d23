"""A small VCTK-0.80-layout corpus synthesized offline with espeak-ng and flite: distinct voices
(espeak-ng's voice variant x pitch x rate, one accent; flite's four voices), each reading its own
sentences, at 48 kHz like VCTK.

    <root>/wav48/p9NN/p9NN_MMM.wav, <root>/txt/p9NN/p9NN_MMM.txt, <root>/speaker-info.txt

The voices share one accent (American English) on purpose. A conversion keeps what the codes
hold, and they hold how each vowel is said; a speaker encoder hears the accent as part of the
voice. With the seven accents the corpus had before, espeak-ng re-synthesizing each source
sentence with the target voice's variant and pitch (a perfect conversion of the voice) lands
nearer the target only 77 % of the time; with one accent 100 % (bench/conversion_ceiling.py). The voices differ by what a
conversion changes: the vocal tract (the variant), the pitch, and the rate the codes keep.

Sentences come from a seeded grammar over a fixed vocabulary, so the corpus is the same on every
machine with the same espeak-ng. espeak-ng is a system package (`apt-get install espeak-ng`;
`make install` installs it when run as root).
"""
from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.fs import building

# speaker id -> (espeak-ng voice, pitch 0-99, words per minute, gender, accent)
VOICES = {
    "p901": ("en-us+m3", 35, 155, "M", "American"),
    "p902": ("en-us+f2", 70, 165, "F", "American"),
    "p903": ("en-us+m1", 45, 145, "M", "American"),
    "p904": ("en-us+f4", 80, 150, "F", "American"),
    "p905": ("en-us+m7", 25, 170, "M", "American"),
    "p906": ("en-us+f1", 60, 175, "F", "American"),
    "p907": ("en-us+m5", 50, 140, "M", "American"),
    "p908": ("en-us+f5", 90, 160, "F", "American"),
    "p909": ("en-us+klatt2", 40, 150, "M", "American"),
    "p910": ("en-us+f3", 75, 145, "F", "American"),
}
# flite's voices (a system package too): words PocketSphinx transcribes (15-24 % word error at
# 16 kHz, against 89 % on espeak-ng's), so the demo's evaluation can say whether words survive
FLITE_VOICES = {
    "p911": ("rms", None, None, "M", "American"),
    "p912": ("slt", None, None, "F", "American"),
    "p913": ("kal16", None, None, "M", "American"),
    "p914": ("awb", None, None, "M", "Scottish"),
}
DEMO_ESPEAK = 6  # the demo: the first 6 espeak-ng voices and the 4 flite voices
RATE = 48000
ESPEAK_RATE = 22050

SUBJECTS = ["the old man", "a young girl", "my brother", "the teacher", "our neighbour", "the doctor",
            "a farmer", "the children", "her mother", "the driver", "a stranger", "the captain"]
VERBS = ["painted", "carried", "found", "opened", "cleaned", "watched", "bought", "sold", "moved",
         "counted", "mended", "borrowed"]
OBJECTS = ["the red door", "a heavy box", "seven apples", "the blue boat", "an empty bottle",
           "the garden gate", "a wooden chair", "the kitchen window", "two silver coins", "the long rope",
           "a paper map", "the green coat"]
PLACES = ["near the river", "before lunch", "in the morning", "at the station", "after the storm",
          "behind the school", "on a cold day", "by the harbour", "under the bridge", "in the village"]


def sentences(count: int, rng: random.Random) -> list[str]:
    out = []
    for _ in range(count):
        s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(PLACES)}"
        if rng.random() < 0.4:
            s += f" and {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
        out.append(s[0].upper() + s[1:] + ".")
    return out


def _espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise UserError("the speech demo corpus needs espeak-ng, a system package: apt-get install espeak-ng "
                        "(make install does it when run as root)")
    return exe


def _flite() -> str:
    exe = shutil.which("flite")
    if exe is None:
        raise UserError("the speech demo corpus needs flite, a system package: apt-get install flite "
                        "(make install does it when run as root)")
    return exe


def _synthesize(exe: str, voice: tuple, text: str, path: Path) -> None:
    import soundfile as sf
    import soxr

    name, pitch, wpm = voice[:3]
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        if pitch is None:  # flite
            command = [exe, "-voice", name, "-t", text, "-o", tmp.name]
        else:
            command = [exe, "-v", name, "-p", str(pitch), "-s", str(wpm), "-w", tmp.name, text]
        subprocess.run(command, check=True, capture_output=True, timeout=60)
        x, rate = sf.read(tmp.name, dtype="float32")
    x = soxr.resample(x, rate, RATE, quality="HQ")
    sf.write(path, np.clip(x, -1, 1), RATE, subtype="PCM_16")


def make_demo_corpus(out: str | Path, per_speaker: int = 44, seed: int = 0, speakers: int | None = None) -> dict:
    """Write the corpus at `out` (written to a temporary folder and renamed: a folder that exists
    is complete); returns counts."""
    out = Path(out)
    if (out / "wav48").is_dir():
        return {"out": str(out), "created": False}
    espeak, flite = _espeak(), _flite()
    espeaks, flites = list(VOICES.items())[:DEMO_ESPEAK], list(FLITE_VOICES.items())
    # alternate, so that a smaller corpus (speakers=N) has both
    order = [v for pair in zip(espeaks, flites) for v in pair] + espeaks[len(flites):]
    chosen = dict(order[:speakers or len(order)])
    jobs = []
    rng = random.Random(seed)
    with building(out) as tmp:
        for speaker, voice in chosen.items():
            (tmp / "wav48" / speaker).mkdir(parents=True)
            (tmp / "txt" / speaker).mkdir(parents=True)
            for i, text in enumerate(sentences(per_speaker, rng), start=1):
                key = f"{speaker}_{i:03d}"
                (tmp / "txt" / speaker / f"{key}.txt").write_text(text + "\n")
                jobs.append((flite if voice[1] is None else espeak, voice, text,
                             tmp / "wav48" / speaker / f"{key}.wav"))
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda job: _synthesize(*job), jobs))
        info = ["ID  AGE  GENDER  ACCENTS  REGION"]
        info += [f"{s[1:]}  {20 + i}  {v[3]}    {v[4]}  {'flite' if v[1] is None else 'espeak-ng'} {v[0]}"
                 for i, (s, v) in enumerate(chosen.items())]
        (tmp / "speaker-info.txt").write_text("\n".join(info) + "\n")
    return {"out": str(out), "created": True, "speakers": len(chosen), "utterances": len(jobs)}
