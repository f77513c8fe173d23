"""Speech data: VCTK 0.80, VCTK 0.92 and speaker-folder layouts, with planted bad files."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.errors import UserError
from pipeline.modalities import SkipSample, get

SPEECH = get("speech")


def tone(seconds: float, rate: int, freq: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = 0.5 * np.sin(2 * math.pi * freq * t).astype(np.float32)
    # a quiet lead-in and tail that trimming removes
    pad = np.zeros(int(0.2 * rate), np.float32)
    x = np.concatenate([pad, x, pad])
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def write(path: Path, x: np.ndarray, rate: int, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, rate, format=fmt, subtype="VORBIS" if fmt == "OGG" else "PCM_16")
    return path


def wav_bytes(x: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


BAD = {  # planted file name -> the reason's start
    "empty": "empty file",
    "text": "not audio",
    "corrupt": "corrupt audio",
    "truncated": "truncated",
    "lowrate": "sample rate 8000 Hz is below",
    "short": "too short",
    "silent": "silent",
}


def plant_bad(folder: Path, speaker: str, ext: str, key) -> None:
    """One file per BAD reason in a speaker's folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{key('empty')}.{ext}").write_bytes(b"")
    (folder / f"{key('text')}.{ext}").write_text("this is a transcript, not audio\n")
    good = wav_bytes(tone(0.5, 48000, 300), 48000)
    # a WAV whose format chunk claims 0 channels; a FLAC stream marker followed by junk
    (folder / f"{key('corrupt')}.{ext}").write_bytes(good[:22] + b"\x00\x00" + good[24:] if ext == "wav"
                                                   else b"fLaC" + bytes(range(256)) * 40)
    if ext == "wav":
        (folder / f"{key('truncated')}.{ext}").write_bytes(good[: len(good) // 2])
    else:
        flac = io.BytesIO()
        sf.write(flac, tone(0.5, 48000, 300), 48000, format="FLAC", subtype="PCM_16")
        (folder / f"{key('truncated')}.{ext}").write_bytes(flac.getvalue()[: len(flac.getvalue()) // 2])
    write(folder / f"{key('lowrate')}.{ext}", tone(0.5, 8000, 300), 8000)
    write(folder / f"{key('short')}.{ext}", np.full(10, 0.5, np.float32), 48000)
    write(folder / f"{key('silent')}.{ext}", np.zeros(4800, np.float32), 48000)


def vctk_080(root: Path, speakers=("p225", "p226", "p227"), per=6) -> Path:
    for s, speaker in enumerate(speakers):
        for i in range(1, per + 1):
            key = f"{speaker}_{i:03d}"
            write(root / "wav48" / speaker / f"{key}.wav", tone(0.6, 48000, 200 + 40 * s, channels=2), 48000)
            (root / "txt" / speaker).mkdir(parents=True, exist_ok=True)
            (root / "txt" / speaker / f"{key}.txt").write_text(f"sentence {i} of {speaker}\n")
    plant_bad(root / "wav48" / speakers[0], speakers[0], "wav", lambda name: f"{speakers[0]}_9{list(BAD).index(name)}0")
    (root / "speaker-info.txt").write_text(
        "ID  AGE  GENDER  ACCENTS  REGION\n225  23  F    English    Southern  England\n"
        "226  22  M    English    Surrey\n227  38  M    English    Cumbria\n")
    return root


def vctk_092(root: Path, speakers=("p225", "p226", "s5"), per=6) -> Path:
    for s, speaker in enumerate(speakers):
        for i in range(1, per + 1):
            for mic, freq in (("mic1", 200 + 40 * s), ("mic2", 1000)):
                write(root / "wav48_silence_trimmed" / speaker / f"{speaker}_{i:03d}_{mic}.flac",
                      tone(0.6, 48000, freq), 48000, "FLAC")
        if speaker != "s5":  # VCTK 0.92 has no transcripts for some speakers
            (root / "txt" / speaker).mkdir(parents=True, exist_ok=True)
            for i in range(1, per + 1):
                (root / "txt" / speaker / f"{speaker}_{i:03d}.txt").write_text(f"words {i}\n")
    plant_bad(root / "wav48_silence_trimmed" / "p226", "p226", "flac", lambda name: f"p226_9{list(BAD).index(name)}0_mic1")
    (root / "speaker-info.txt").write_text(
        "ID  AGE  GENDER  ACCENTS  REGION COMMENTS \np225  23  F    English    Southern  England\n"
        "p226  22  M    English    Surrey\ns5  22  F    British  Birmingham (mic2 files unavailable)\n")
    return root


def config(root: Path, **kw):
    return SPEECH.DataConfig(name="t", root=str(root), modality="speech", sample_rate=16000, val_fraction=0.2, **kw)


def preprocess_all(data, listing) -> tuple[dict, dict]:
    kept, skipped = {}, {}
    for split, items in listing.splits.items():
        for item in items:
            try:
                kept[item.key] = (split, SPEECH.preprocess(Path(item.path).read_bytes(), item, data), item)
            except SkipSample as e:
                skipped[item.key] = str(e)
    return kept, skipped


def test_vctk_080_layout_with_bad_files(tmp_path):
    data = config(vctk_080(tmp_path / "VCTK-Corpus"))
    listing = SPEECH.find(data)
    assert listing.manifest["layout"] == "vctk-0.80"
    assert listing.cond["speaker"].names == ("p225", "p226", "p227")
    table = {row["id"]: row for row in listing.manifest["speakers"]}
    assert table["p225"]["region"] == "Southern  England" and table["p227"]["age"] == "38"
    kept, skipped = preprocess_all(data, listing)
    reasons = {key[-3:-1]: why for key, why in skipped.items()}
    for i, (name, start) in enumerate(BAD.items()):
        assert reasons[f"9{i}"].startswith(start), (name, reasons)
    assert len(kept) == 18  # 3 speakers x 6 good utterances
    split, (x, rate, speaker, name, text, frames), item = kept["p226_003"]
    assert rate == 16000 and x.ndim == 1  # stereo downmixed, 48 kHz resampled
    assert text == "sentence 3 of p226" and name == "p226" and speaker == 1 and frames is None  # no data.world_frames
    assert 0.55 * 16000 <= len(x) <= 0.65 * 16000  # 0.6 s of tone, the silent 0.2 s at each end trimmed
    # resampled with a real filter: p226's 240 Hz tone keeps its frequency
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    assert abs(np.argmax(spectrum) * 16000 / len(x) - 240) < 5
    # every speaker on both sides of the split
    for speaker in range(3):
        for split_name in ("train", "val"):
            assert any(it.cond["speaker"] == speaker for it in listing.splits[split_name])


def test_vctk_092_layout_reads_one_microphone(tmp_path):
    root = vctk_092(tmp_path / "VCTK")
    for mic, freq in (("mic1", 200), ("mic2", 1000)):
        data = config(root, mic=mic)
        listing = SPEECH.find(data)
        assert listing.manifest["layout"] == "vctk-0.92"
        items = [it for items in listing.splits.values() for it in items]
        assert all(it.path.endswith(f"_{mic}.flac") and "_mic" not in it.key for it in items)
        first = next(it for it in items if it.key == "p225_001")
        x = SPEECH.preprocess(Path(first.path).read_bytes(), first, data)[0]
        spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
        assert abs(np.argmax(spectrum) * 16000 / len(x) - freq) < 5
    listing = SPEECH.find(config(root))
    assert {row["id"] for row in listing.manifest["speakers"]} == {"p225", "p226", "s5"}
    by_key = {it.key: it for items in listing.splits.values() for it in items}
    assert by_key["p225_002"].meta["text"] == "words 2" and by_key["s5_002"].meta["text"] == ""
    _, skipped = preprocess_all(config(root), listing)
    assert sorted(k[5:7] for k in skipped) == [f"9{i}" for i in range(len(BAD))]


def test_speaker_folders_layout_and_held_out_speakers(tmp_path):
    root = tmp_path / "voices"
    for s, speaker in enumerate(["alice", "bob", "carol"]):
        for i in range(5):
            write(root / speaker / f"take{i}.{['wav', 'flac', 'ogg'][i % 3]}", tone(0.5, 22050, 300 + 50 * s), 22050,
                  ["WAV", "FLAC", "OGG"][i % 3] if i % 3 else None)
    (root / "alice" / "take0.txt").write_text("hello there")
    listing = SPEECH.find(config(root, val_speakers=["carol"]))
    assert listing.manifest["layout"] == "folders"
    val = [it for it in listing.splits["val"]]
    assert {it.meta["speaker"] for it in listing.splits["train"]} == {"alice", "bob"}
    assert sum(it.meta["speaker"] == "carol" for it in val) == 5  # held out whole
    assert {row["id"]: row["held_out"] for row in listing.manifest["speakers"]}["carol"] is True
    keys = {it.key: it for items in listing.splits.values() for it in items}
    assert keys["alice_take0"].meta["text"] == "hello there"
    with pytest.raises(UserError, match="dave"):
        SPEECH.find(config(root, val_speakers=["dave"]))


def test_listing_is_seeded_and_a_bad_root_is_one_line(tmp_path):
    root = vctk_080(tmp_path / "c")
    a, b = SPEECH.find(config(root)), SPEECH.find(config(root))
    assert [it.key for it in a.splits["val"]] == [it.key for it in b.splits["val"]]
    other = SPEECH.find(config(root, seed=5))
    assert [it.key for it in other.splits["val"]] != [it.key for it in a.splits["val"]]
    with pytest.raises(UserError, match="does not exist"):
        SPEECH.find(config(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no audio files"):
        SPEECH.find(config(tmp_path / "empty"))


def test_members_round_trip_losslessly(tmp_path):
    root = vctk_080(tmp_path / "c", speakers=("p225",), per=2)
    data = config(root)
    item = SPEECH.find(data).splits["train"][0]
    example = SPEECH.preprocess(Path(item.path).read_bytes(), item, data)
    members = SPEECH.to_members(example)
    assert set(members) == {"flac", "spk", "txt"}
    back = SPEECH.from_members(members)
    expected = np.clip(np.rint(example[0] * 32767), -32768, 32767) / 32768.0
    assert np.array_equal(back.x.numpy()[0], expected.astype(np.float32))
    assert back.cond == {"speaker": 0}
    batch = SPEECH.collate([back, SPEECH.from_members(members)])
    assert batch.mask.all() and batch.x.shape == (2, 1, back.x.shape[-1])


@pytest.mark.slow
def test_shards_count_bad_files_and_hours_per_speaker(tmp_path, ray_local):
    import yaml

    from pipeline.config import load_settings
    from pipeline.stages.shard import shard

    root = vctk_080(tmp_path / "VCTK-Corpus")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"workdir": str(tmp_path / "w"), "data": {
        "name": "t", "root": str(root), "modality": "speech", "samples_per_shard": 5, "val_fraction": 0.2}}))
    manifest = shard(load_settings(cfg))
    assert manifest["splits"]["train"]["samples"] + manifest["splits"]["val"]["samples"] == 18
    reasons = sorted(s["reason"].split(":")[0] for s in manifest["skipped"])
    assert len(reasons) == len(BAD) and any(r.startswith("sample rate") for r in reasons)
    stats = {split: manifest["splits"][split]["stats"] for split in ("train", "val")}
    total_hours = stats["train"]["hours"] + stats["val"]["hours"]
    assert abs(total_hours * 3600 - 18 * 0.6) < 0.5
    assert stats["train"]["speaker/p226/utterances"] + stats["val"]["speaker/p226/utterances"] == 6
    assert manifest["speakers"][0]["id"] == "p225" and manifest["cond"]["speaker"]["size"] == 3
    again = shard(load_settings(cfg))  # the same files: reused
    assert json.dumps(again, sort_keys=True) == json.dumps(manifest, sort_keys=True)
