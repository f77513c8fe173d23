"""Voice conversion's scores: the mel-cepstral distortion and its DTW alignment."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import REPO
from pipeline.config import load_settings
from pipeline.errors import UserError
from pipeline.modalities.speech.scores import dtw_path, mcd
from pipeline.stages.convert import convert

RATE = 8000


def voiced(f0: float, formant: float, seconds: float = 0.6, seed: int = 0) -> np.ndarray:
    """A crude vowel: a harmonic series at f0 shaped by one resonance, a little noise."""
    t = np.arange(int(seconds * RATE)) / RATE
    x = sum(np.exp(-((k * f0 - formant) / 400.0) ** 2) * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 30))
    return (0.3 * x / np.abs(x).max() + 0.002 * np.random.default_rng(seed).normal(size=len(t))).astype(np.float32)


def test_mcd_is_zero_for_the_same_signal_and_grows_with_the_difference():
    a = voiced(120, 700)
    assert mcd(a, a, RATE) == 0.0
    noisy = a + 0.003 * np.random.default_rng(1).normal(size=len(a)).astype(np.float32)
    other_vowel = voiced(120, 1500)
    other_voice = voiced(210, 1500)
    small, vowel, voice = mcd(a, noisy, RATE), mcd(a, other_vowel, RATE), mcd(a, other_voice, RATE)
    assert 0 < small < 3 < vowel, (small, vowel)
    assert voice > 3 and abs(mcd(other_voice, a, RATE) - voice) < 0.5  # about symmetric


def test_mcd_aligns_in_time_before_comparing():
    a = voiced(150, 900, seconds=0.5)
    b = voiced(150, 1800, seconds=0.5, seed=2)
    ab = np.concatenate([a, b])
    slow = np.concatenate([a, a[: len(a) // 2], b])  # the first sound held longer
    assert mcd(ab, slow, RATE) < 0.5 * mcd(ab, np.concatenate([b, a]), RATE)


def test_dtw_takes_the_cheapest_monotone_path_and_prefers_the_diagonal_on_ties():
    cost = np.array([[0, 5, 5, 5],
                     [5, 0, 0, 5],
                     [5, 5, 5, 0]], dtype=float)
    assert dtw_path(cost).tolist() == [[0, 0], [1, 1], [1, 2], [2, 3]]
    assert dtw_path(np.zeros((3, 3))).tolist() == [[0, 0], [1, 1], [2, 2]]  # a tie: the diagonal
    assert dtw_path(np.zeros((1, 3))).tolist() == [[0, 0], [0, 1], [0, 2]]
    # against exhaustive search on small random matrices: no monotone path is cheaper
    rng = np.random.default_rng(0)
    for _ in range(20):
        c = rng.random((4, 5))
        path = dtw_path(c)
        assert path[0].tolist() == [0, 0] and path[-1].tolist() == [3, 4]
        assert all(tuple(b - a) in {(1, 1), (0, 1), (1, 0)} for a, b in zip(path[:-1], path[1:]))
        assert c[path[:, 0], path[:, 1]].sum() == pytest.approx(_cheapest(c))


def _cheapest(c: np.ndarray) -> float:
    best = np.full(c.shape, np.inf)
    for i in range(c.shape[0]):
        for j in range(c.shape[1]):
            before = [best[i - di, j - dj] for di, dj in ((1, 1), (0, 1), (1, 0)) if i - di >= 0 and j - dj >= 0]
            best[i, j] = c[i, j] + (min(before) if before else 0.0)
    return best[-1, -1]


def test_a_conversion_of_no_seconds_is_refused_before_any_work(tmp_path):
    settings = load_settings(REPO / "configs" / "demo-speech.yaml", [f"workdir={tmp_path}"])
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(UserError, match=r"^--seconds \S+: give a positive number of seconds$"):
            convert(settings, "p901_001", "p902", seconds=bad)
    assert not list(tmp_path.iterdir())  # no store, no shards read, nothing written
