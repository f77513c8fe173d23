"""Video data: the layout with planted bad inputs gives exact counts, windows and their action
slices line up, and the stored frames round-trip exactly (lossless clips in, the same pixels out)."""
from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.modalities import SkipSample, get
from pipeline.modalities.video import TRUNCATED
from pipeline.modalities.video.decode import decode_video, resample
from pipeline.modalities.video.settings import VideoData
from pipeline.modalities.video.windows import frames_to_png, png_to_frames, to_tensor, video_pixels

SIZE = 16


def frame(i: int) -> np.ndarray:
    """A frame that names its index: the level i*7 in the red channel, a bar that moves in green."""
    px = np.zeros((SIZE, SIZE, 3), np.uint8)
    px[..., 0] = (i * 7) % 256
    px[:, i % SIZE, 1] = 255
    px[..., 2] = 40
    return px


def write_clip(path: Path, count: int, codec: str = "ffv1", fps: int = 10, actions: list | None = None) -> None:
    """A lossless clip (FFV1 in Matroska, or what `codec` names) of frames 0 .. count-1."""
    container = "matroska" if path.suffix == ".mkv" else None
    with av.open(str(path), mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p" if codec in ("libx264", "mpeg4") else ("bgr0" if codec == "ffv1" else "rgb24")
        for i in range(count):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame(i), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    if actions is not None:
        path.with_name(path.name.rsplit(".", 1)[0] + ".actions.json").write_text(json.dumps({"actions": actions}))


def data(root: Path, **kw) -> VideoData:
    return VideoData(name="t", modality="video", root=str(root), frame_size=SIZE, frames=4, **kw)


def test_decoding_a_lossless_clip_gives_its_frames_exactly(tmp_path):
    write_clip(tmp_path / "a.mkv", 12)
    decoded = decode_video((tmp_path / "a.mkv").read_bytes(), SIZE)
    assert decoded.frames.shape == (12, SIZE, SIZE, 3) and not decoded.truncated
    for i in range(12):
        assert np.array_equal(decoded.frames[i], frame(i)), i
    assert decoded.times == pytest.approx([i / 10 for i in range(12)])


def test_windows_and_their_action_slices_line_up(tmp_path):
    root = tmp_path / "clips"
    (root / "train").mkdir(parents=True)
    actions = [i % 3 for i in range(11)]
    write_clip(root / "train" / "a.mkv", 11, actions=actions)
    (root / "actions.json").write_text(json.dumps({"names": ["noop", "left", "right"]}))
    d = data(root, window_stride=3, val_fraction=0.01)
    video = get("video")
    listing = video.find(d)
    assert listing.cond["actions"].names == ("noop", "left", "right")
    item = listing.splits["train"][0]
    clip = video.preprocess((root / "train" / "a.mkv").read_bytes(), item, d)
    made = video.samples_of(clip, item.key, d)
    assert [k for k, _ in made] == ["a-f000000", "a-f000003", "a-f000006"]  # 11 frames: starts 0, 3, 6
    for key, window in made:
        start = int(key.rsplit("-f", 1)[1])
        # the red level names the frame: frame j of the window is frame start + j of the clip
        assert [int(f[0, 0, 0]) // 7 for f in window.frames] == list(range(start, start + 4))
        assert window.actions == actions[start:start + 4]
        item_back = video.from_members(video.to_members(window))
        assert item_back.cond["actions"] == window.actions
        x = video.collate([item_back]).to("cpu").x[0]  # what the model sees
        assert np.array_equal(video_pixels(x), window.frames)  # the stored frames round-trip


def test_stored_frames_round_trip_through_png():
    frames = np.random.default_rng(0).integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)
    back = png_to_frames(frames_to_png(frames))
    assert np.array_equal(back, frames)
    x = to_tensor(frames)
    assert x.shape == (3, 5, SIZE, SIZE) and x.min() >= -0.5 and x.max() <= 0.5
    assert np.array_equal(video_pixels(x), frames)
    with pytest.raises(ValueError, match="not a stack of square frames"):
        png_to_frames(frames_to_png(np.zeros((1, 10, 16, 3), np.uint8)))


def test_resampling_keeps_the_last_frame_shown_at_each_new_time():
    times = [i / 30 for i in range(30)]  # 1 s at 30 fps
    assert resample(times, 10) == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]
    assert resample(times, 30) == list(range(30))
    assert resample([0.0, 0.5, 1.0], 4) == [0, 0, 1, 1, 2]


def test_the_layout_with_planted_bad_inputs_gives_exact_counts(tmp_path):
    root = tmp_path / "clips"
    for split in ("train/walk", "train/run", "val/walk", "val/jump"):
        (root / split).mkdir(parents=True)
    (root / "actions.json").write_text(json.dumps({"names": ["a", "b"]}))
    good = {"train/walk/g1.mkv": 9, "train/walk/g2.mkv": 8, "train/run/g3.mkv": 12, "val/walk/g4.mkv": 8}
    for name, count in good.items():
        write_clip(root / name, count, actions=[i % 2 for i in range(count)])
    write_clip(root / "train/run/short.mkv", 3, actions=[0, 1, 0])  # fewer frames than a window
    write_clip(root / "train/run/mismatch.mkv", 8, actions=[0] * 7)  # 7 actions for 8 frames
    write_clip(root / "train/run/outside.mkv", 8, actions=[0] * 7 + [5])  # action 5 of 2
    write_clip(root / "train/walk/noactions.mkv", 8)
    (root / "train/walk/empty.mp4").write_bytes(b"")
    (root / "train/walk/text.mp4").write_text("this is not a video\n" * 20)
    for name in ("empty", "text"):
        (root / f"train/walk/{name}.actions.json").write_text(json.dumps({"actions": [0] * 8}))
    (root / "train/walk/badjson.mkv").write_bytes((root / "train/walk/g1.mkv").read_bytes())
    (root / "train/walk/badjson.actions.json").write_text("{not json")
    write_clip(root / "val/jump/unknown.mkv", 8, actions=[0] * 8)  # a class train does not have
    write_clip(root / "train/walk/cut.mkv", 40, actions=[i % 2 for i in range(40)])
    whole = (root / "train/walk/cut.mkv").read_bytes()
    (root / "train/walk/cut.mkv").write_bytes(whole[: len(whole) * 2 // 3])  # truncated: keeps what decodes

    d = data(root)
    video = get("video")
    listing = video.find(d)
    assert listing.cond["labels"].names == ("run", "walk")
    reasons, kept, notes = {}, {}, []
    for split, items in listing.splits.items():
        for item in items:
            name = Path(item.path).name
            try:
                if item.skip:
                    raise SkipSample(item.skip)
                clip = video.preprocess(Path(item.path).read_bytes(), item, d)
                kept[name] = len(video.samples_of(clip, item.key, d))
                notes += video.notes(clip)
            except SkipSample as e:
                reasons[name] = str(e)
    assert kept == {"g1.mkv": 2, "g2.mkv": 2, "g3.mkv": 3, "g4.mkv": 2, "cut.mkv": kept.get("cut.mkv")}
    assert 1 <= kept["cut.mkv"] < 10 and notes == [TRUNCATED]
    assert set(reasons) == {"short.mkv", "mismatch.mkv", "outside.mkv", "noactions.mkv", "empty.mp4", "text.mp4",
                            "badjson.mkv", "unknown.mkv"}
    assert reasons["short.mkv"].startswith("too short: 3 frames")
    assert reasons["mismatch.mkv"] == "actions file holds 7 actions for 8 frames"
    assert reasons["outside.mkv"].startswith("action 5 outside the vocabulary")
    assert reasons["noactions.mkv"].startswith("no actions file")
    assert reasons["empty.mp4"] == "empty file"
    assert reasons["text.mp4"].startswith("not a video")
    assert reasons["badjson.mkv"].startswith("bad actions file")
    assert reasons["unknown.mkv"].startswith("class folder 'jump'")


def test_without_val_a_seeded_fraction_of_clips_is_held_out(tmp_path):
    root = tmp_path / "clips"
    (root / "train").mkdir(parents=True)
    for i in range(10):
        write_clip(root / "train" / f"c{i}.mkv", 4)
    video = get("video")
    first = video.find(data(root, val_fraction=0.2))
    again = video.find(data(root, val_fraction=0.2))
    other = video.find(data(root, val_fraction=0.2, seed=1))
    keys = lambda listing: [i.key for i in listing.splits["val"]]  # noqa: E731
    assert len(keys(first)) == 2 and keys(first) == keys(again) and keys(first) != keys(other)
    assert not first.cond  # no classes, no actions: unconditioned
