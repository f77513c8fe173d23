"""Whether speech keeps its words: an offline recognizer's word error rate on sources,
reconstructions and conversions, against the transcripts the shards carry.

The recognizer is PocketSphinx 5 with the US English acoustic model, language model and dictionary
bundled in its wheel (nothing downloaded), run at its model's 16 kHz: a waveform at another rate is
resampled to it first, so a source and its conversion are always heard at the rate the VQ-VAE
runs at. Word error (jiwer's WER: substitutions + deletions + insertions over reference words)
is over lower-case words without punctuation.

What it measures, and misses: a conversion that keeps the words scores near its source; one that
has lost them scores near 1 whatever the voice. PocketSphinx is a small HMM recognizer: on clear
synthetic voices it makes 15-25 % word errors at 16 kHz and far more on band-limited (8 kHz)
speech or buzzy formant synthesis (espeak-ng's voices: ~90 %), so compare a conversion with its
source, never with zero. It knows nothing of prosody, naturalness or the voice.

Both libraries are the `speech-eval` extra (`pip install -e '.[speech-eval]'`); training needs
neither, and without them the evaluation says so in one line and scores the rest.
"""
from __future__ import annotations

import re

import numpy as np

RECOGNIZER_RATE = 16000
EXTRA = "speech-eval"


def available() -> bool:
    """Whether the recognizer and the scorer are installed."""
    try:
        import jiwer  # noqa: F401
        import pocketsphinx  # noqa: F401
    except ImportError:
        return False
    return True


def words(text: str) -> str:
    """Lower-case words, apostrophes kept inside them, everything else a space."""
    return " ".join(re.findall(r"[a-z0-9]+(?:'[a-z0-9]+)*", text.lower()))


def word_error(references: list[str], hypotheses: list[str]) -> float:
    """Word error rate of `hypotheses` against `references` over all their words (pairs whose
    reference has no word are left out)."""
    import jiwer

    pairs = [(words(r), words(h)) for r, h in zip(references, hypotheses) if words(r)]
    if not pairs:
        raise ValueError("no reference transcript has a word")
    return float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]))


class Recognizer:
    """PocketSphinx's bundled en-US model; `transcribe(x, rate)` -> its best word string."""

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self.decoder = Decoder(samprate=RECOGNIZER_RATE, loglevel="FATAL")

    def transcribe(self, x: np.ndarray, rate: int) -> str:
        x = np.asarray(x, np.float64).reshape(-1)
        if rate != RECOGNIZER_RATE:
            import soxr

            x = soxr.resample(x, rate, RECOGNIZER_RATE)
        peak = float(np.abs(x).max()) if x.size else 0.0
        if peak < 1e-6:
            return ""
        pcm = (x / peak * 0.9 * 32767).astype(np.int16).tobytes()  # level-normalized, as a recording would be
        self.decoder.start_utt()
        self.decoder.process_raw(pcm, full_utt=True)
        self.decoder.end_utt()
        hyp = self.decoder.hyp()
        return hyp.hypstr if hyp is not None else ""
