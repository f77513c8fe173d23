"""The WORLD-frame speech VQ-VAE (pipeline/models/speech_world.py, `stage1.decoder: world`): it
learns a real utterance's frames, codes come at 20 ms, the decoder speaks at the pitch of whichever
speaker it is given; its statistics add up over utterances; its shard member round-trips."""
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
    model.set_statistics(_added(world.sums(feats, 0), world.sums(higher, 1)))
    assert float(model.pitch_mean[1] - model.pitch_mean[0]) == pytest.approx(np.log(2.0), abs=1e-4)
    both = np.concatenate([feats, higher])
    assert np.allclose(model.feature_std.numpy(), both.std(0).clip(1e-3), rtol=1e-3, atol=1e-5)
    voiced_lf0 = feats[feats[:, world.VUV] > 0.5, world.LF0]
    assert float(model.pitch_std[0]) == pytest.approx(voiced_lf0.std(), rel=1e-3)

    n = (len(x) // model.hop) * model.hop
    xb = torch.from_numpy(x[:n])[None, None]
    fb = torch.from_numpy(feats[:n // model.frame + 1])[None]
    assert model.log_mel(xb).shape[-1] == fb.shape[1]  # a mel frame per WORLD frame
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(200):
        out = model(xb, {"speaker": torch.tensor([0]), "world": fb})
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
    # pitch follows the speaker given: the same contour, an octave up (within what 200 steps learn)
    shift = float((other[voiced, world.LF0] - own[voiced, world.LF0]).mean())
    assert abs(shift - np.log(2.0)) < 0.25, shift
    assert float((own[:, world.VUV] > 0.5).eq(voiced).float().mean()) > 0.8  # voicing learnt
    wav = model.decode_indices(codes, {"speaker": torch.tensor([0])})
    assert wav.shape == (1, 1, codes.shape[-1] * model.hop) and float(wav.abs().max()) > 0.01


def _added(*sums: dict) -> dict:
    total: dict = {}
    for part in sums:
        for k, v in part.items():
            total[k] = total.get(k, 0.0) + v
    return total


def test_frames_round_trip_as_a_shard_member_and_bad_ones_are_refused(utterance):
    _, feats = utterance
    assert np.array_equal(world.from_npy(world.to_npy(feats)), feats)
    for bad in (feats[:, :10], feats.astype(np.float64), np.full_like(feats, np.nan)):
        with pytest.raises(ValueError, match="WORLD frames"):
            world.from_npy(world.to_npy(bad) if bad.dtype == np.float32 else _raw_npy(bad))


def _raw_npy(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def test_a_training_crop_keeps_its_frames_on_the_same_grid(utterance):
    """The speech modality's crop cuts the WORLD frames with the waveform: frame k of the crop is
    frame start / 160 + k of the utterance, for crops of every offset."""
    import random

    from pipeline.modalities import Item, get
    from pipeline.modalities.speech.settings import SpeechStage1

    x, feats = utterance
    speech = get("speech")
    item = Item(torch.from_numpy(x)[None], {"speaker": 0, "world": torch.from_numpy(feats), "world_frame": 160})
    stage1 = SpeechStage1(segment=8000, val_segment=16000, decoder="world")
    rng = random.Random(0)
    for _ in range(20):
        crop = speech.crop(item, stage1, rng)
        assert crop.x.shape[-1] == 8000 and crop.cond["world"].shape[0] == 8000 // 160 + 1
        # where the crop starts: the waveform tells, and the frames must start at the same place
        start = next(i for i in range(0, len(x) - 7999, 160) if torch.equal(item.x[:, i:i + 8000], crop.x))
        assert torch.equal(crop.cond["world"], torch.from_numpy(feats[start // 160: start // 160 + 51]))
    val = speech.crop(item, stage1, None)
    assert val.x.shape[-1] == 16000 and torch.equal(val.cond["world"], torch.from_numpy(feats[:101]))
    batch = speech.collate([speech.crop(item, stage1, rng), val])
    assert batch.cond["world"].shape == (2, 101, world.FEATURES) and batch.cond["speaker"].tolist() == [0, 0]
