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


def test_world_features_resynthesize_the_words_and_carry_another_pitch(spoken):
    """pipeline/models/world.py: analysis then synthesis keeps what the recognizer
    hears; moving log F0 to another speaker's statistics moves the synthesized pitch, not the words."""
    import pyworld
    import soxr

    from pipeline.models import world

    x, rate = spoken
    x = soxr.resample(x, rate, 16000)
    feats = world.analyze(x, 16000)
    assert feats.shape == (world.frames_of(len(x), 16000), world.FEATURES) and feats.dtype == np.float32
    voiced = feats[:, world.VUV] > 0.5
    assert 0.3 < voiced.mean() < 0.95  # a spoken sentence: mostly voiced, with pauses and consonants
    recognizer = words.Recognizer()
    source = words.word_error([SENTENCE], [recognizer.transcribe(x, 16000)])
    again = world.synthesize(feats.astype(np.float16).astype(np.float32), 16000)  # as a shard stores them
    assert abs(len(again) - len(x)) <= 16000 * world.FRAME_MS / 1000
    assert words.word_error([SENTENCE], [recognizer.transcribe(again, 16000)]) <= source + 0.2

    stats = world.pitch_stats([feats])
    higher = world.synthesize(world.shift_pitch(feats, stats, (stats[0] + np.log(1.5), stats[1])), 16000)
    f0_before, _ = pyworld.dio(again.astype(np.float64), 16000)
    f0_after, _ = pyworld.dio(higher.astype(np.float64), 16000)
    ratio = np.median(f0_after[f0_after > 0]) / np.median(f0_before[f0_before > 0])
    assert 1.35 < ratio < 1.65, ratio
    assert words.word_error([SENTENCE], [recognizer.transcribe(higher, 16000)]) <= source + 0.34
