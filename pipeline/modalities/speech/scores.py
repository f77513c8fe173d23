"""What a conversion is scored with: mel-cepstral distortion along a DTW path (the content kept)
and a pretrained speaker encoder (whose voice it is)."""
from __future__ import annotations

import warnings

import numpy as np

from pipeline.modalities import require


def mel_cepstrum(x: np.ndarray, rate: int, order: int = 24) -> np.ndarray:
    """(frames, order) mel-cepstral coefficients c1..c_order in the units MCD uses: the cosine
    transform of the log-mel amplitude spectrum L_k = (10 / ln 10) ln |X_k| over N = 40 bands
    (25 ms windows, 10 ms hop), c_n = (2 / N) sum_k L_k cos(pi n (k + 1/2) / N), the cepstrum's
    own scaling. Bands more than 60 dB below the utterance's loudest are floored there, so that
    digital silence does not dominate the distance."""
    import librosa
    import scipy.fft

    from pipeline.media import mel_power

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
        require("speech", "resemblyzer")
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


def unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)
