"""Whether speech keeps its words (pipeline/modalities/speech/words.py): PocketSphinx's bundled
English model hears a real synthesized sentence (flite, a system package `make install` adds)
and the word error rate is jiwer's; speech with its words destroyed scores near 1."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from pipeline.modalities.speech import words

SENTENCE = "be cautious in your daily affairs"


@pytest.fixture(scope="module")
def spoken(tmp_path_factory) -> tuple[np.ndarray, int]:
    import soundfile as sf

    if shutil.which("flite") is None:
        pytest.fail("the recognizer test speaks with flite: sudo apt-get install flite (make install does as root)")
    path = tmp_path_factory.mktemp("flite") / "s.wav"
    subprocess.run(["flite", "-voice", "rms", "-t", SENTENCE, "-o", str(path)], check=True)
    x, rate = sf.read(path)
    return x, rate


def test_words_are_lower_case_without_punctuation():
    assert words.words("Be cautious, in your DAILY affairs!") == SENTENCE
    assert words.words("It's the 3rd -- don't") == "it's the 3rd don't"


def test_word_error_counts_substitutions_deletions_and_insertions_over_reference_words():
    word_error = words.word_error

    assert word_error(["a b c d"], ["a x c"]) == pytest.approx(0.5)  # one substitution, one deletion
    assert word_error(["a b", "c d"], ["a b e", "c d"]) == pytest.approx(0.25)  # one insertion in four words
    assert word_error(["", "a b"], ["x", "a b"]) == 0.0  # no reference words: left out
    with pytest.raises(ValueError):
        word_error([""], ["x"])


def test_the_recognizer_hears_a_sentence_and_not_its_reversal(spoken):
    x, rate = spoken
    recognizer = words.Recognizer()
    assert words.word_error([SENTENCE], [recognizer.transcribe(x, rate)]) <= 0.2
    # at another rate (resampled to the model's 16 kHz first), as the evaluation hears an 8 kHz model
    import soxr

    assert words.word_error([SENTENCE], [recognizer.transcribe(soxr.resample(x, rate, 8000), 8000)]) <= 0.35
    # the same sounds with the words gone: reversed in time
    assert words.word_error([SENTENCE], [recognizer.transcribe(x[::-1].copy(), rate)]) >= 0.8
    assert recognizer.transcribe(np.zeros(16000), 16000) == ""
