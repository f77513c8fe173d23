"""The WORLD-frame speech VQ-VAE (pipeline/models/speech_world.py, in progress for speech that
keeps its words): it learns a real utterance's frames, codes come at 20 ms, and the decoder speaks
at the pitch of whichever speaker it is given."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import torch

from pipeline.models import world


@pytest.fixture(scope="module")
def utterance(tmp_path_factory):
    import soundfile as sf
    import soxr

    if shutil.which("flite") is None:
        pytest.fail("this test speaks with flite: sudo apt-get install flite (make install does as root)")
    path = tmp_path_factory.mktemp("flite") / "u.wav"
    subprocess.run(["flite", "-voice", "slt", "-t", "the old man painted the red door near the river", "-o", str(path)],
                   check=True)
    x, rate = sf.read(path)
    x = soxr.resample(x, rate, 16000).astype(np.float32)
    return x, world.analyze(x, 16000)


def test_it_learns_an_utterances_frames_and_decodes_at_each_speakers_pitch(utterance):
    from pipeline.models.speech_world import WorldVQVAE

    torch.manual_seed(0)
    x, feats = utterance
    model = WorldVQVAE(num_speakers=2, rate=16000, hidden=32, codebook_size=16, code_dim=8, speaker_dim=8,
                       decoder_layers=2)
    higher = feats.copy()
    higher[:, world.LF0] += np.log(2.0)  # speaker 1: the same voice an octave up
    model.set_statistics([feats, higher], [0, 1])
    assert float(model.pitch_mean[1] - model.pitch_mean[0]) == pytest.approx(np.log(2.0), abs=1e-4)

    n = (len(x) // model.hop) * model.hop
    xb = torch.from_numpy(x[:n])[None, None]
    fb = torch.from_numpy(feats[:n // model.frame + 1])[None]
    assert model.log_mel(xb).shape[-1] == fb.shape[1]  # a mel frame per WORLD frame
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(80):
        out = model(xb, fb, {"speaker": torch.tensor([0])})
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        first = first if first is not None else float(out.feature_loss)
    assert float(out.feature_loss) < 0.6 * first, (first, float(out.feature_loss))

    model.eval()
    codes = model.encode(xb)
    assert codes.shape == (1, n // model.hop)  # one code per two 10 ms frames (20 ms, 320 samples)
    own = model.decode_features(codes, {"speaker": torch.tensor([0])}, frames=fb.shape[1])[0]
    other = model.decode_features(codes, {"speaker": torch.tensor([1])}, frames=fb.shape[1])[0]
    voiced = fb[0, :, world.VUV] > 0.5
    # pitch follows the speaker given: the same contour, an octave up (within what 80 steps learn)
    shift = float((other[voiced, world.LF0] - own[voiced, world.LF0]).mean())
    assert abs(shift - np.log(2.0)) < 0.25, shift
    assert float((own[:, world.VUV] > 0.5).eq(voiced).float().mean()) > 0.8  # voicing learnt
    wav = model.decode_indices(codes, {"speaker": torch.tensor([0])})
    assert wav.shape == (1, 1, codes.shape[-1] * model.hop) and float(wav.abs().max()) > 0.01
