"""Stage 1's training batches decoded in DataLoader worker processes: the same stream as in the
training process for worker 0, other streams for the others, skipped samples counted in the
training process, and a dead dataset still one clear error."""
from __future__ import annotations

import io
import tarfile

import pytest
import torch

from pipeline import modalities
from pipeline.formats.reader import NoSamples, SkipCounter, TrainStream, loader, train_batches

IMAGE = modalities.get("image")


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def shards(tmp_path_factory, demo_raw):
    """Two shards of real demo photos (16x16), the second with 3 corrupt PNGs among them."""
    from pipeline.config import load_settings
    from conftest import write_config

    tmp = tmp_path_factory.mktemp("loader")
    data = load_settings(write_config(tmp / "c.yaml", tmp / "w", demo_raw)).data
    items = IMAGE.find(data).splits["train"]
    urls = []
    for shard in range(2):
        path = tmp / f"train-{shard}.tar"
        with tarfile.open(path, "w") as tar:
            for i, item in enumerate(items[shard::2][:30]):
                example = IMAGE.preprocess(open(item.path, "rb").read(), item, data)
                members = IMAGE.to_members(example)
                if shard == 1 and i % 10 == 0:
                    members["png"] = b"\x89PNG but not really" * 5
                for ext, payload in members.items():
                    _add(tar, f"s{shard}-{i:03d}.{ext}", payload)
        urls.append(str(path))
    return urls


def _keys(batches, n):
    return [tuple(next(batches).keys) for _ in range(n)]


def test_worker_zero_reads_the_stream_the_training_process_would(shards):
    alone = train_batches(shards, 8, 3, 1, IMAGE, SkipCounter())
    expected = _keys(alone, 3)
    batches = loader(TrainStream(shards, 8, 3, 1, IMAGE, "the test shards"), 2, False, SkipCounter())
    got = _keys(batches, 6)
    assert got[0::2] == expected  # the DataLoader takes batches from its workers in turn
    assert got[1::2] != expected  # worker 1 reads a stream of its own
    in_process = loader(TrainStream(shards, 8, 3, 1, IMAGE, "the test shards"), 0, False, SkipCounter())
    assert _keys(in_process, 3) == expected


def test_samples_skipped_in_workers_are_counted_in_the_training_process(shards):
    skips = SkipCounter("the test shards")
    batches = loader(TrainStream(shards, 8, 0, 0, IMAGE, "the test shards"), 2, False, skips)
    seen = [key for key in (k for batch in _keys(batches, 40) for k in batch)]
    corrupt = {f"s1-{i:03d}" for i in (0, 10, 20)}
    assert not corrupt & set(seen)
    # 320 samples drawn from two shards of 30: the corrupt ones were met and each one counted
    assert skips.count >= 3


def test_unreadable_shards_raise_no_samples_from_a_worker(tmp_path):
    urls = []
    for i in range(2):
        (tmp_path / f"train-{i}.tar").write_bytes(b"this is not a tar file at all" * 40)
        urls.append(str(tmp_path / f"train-{i}.tar"))
    batches = loader(TrainStream(urls, 4, 0, 0, IMAGE, "the test shards"), 2, False, SkipCounter())
    with pytest.raises(NoSamples, match="no sample could be read from the test shards"):
        next(batches)


def test_crops_are_drawn_in_the_workers_and_differ_between_them(tmp_path):
    """Speech trains on random segments: the crops happen in the workers, each its own."""
    import numpy as np

    from pipeline.modalities.speech.audio import encode_flac
    from pipeline.modalities.speech.settings import SpeechStage1

    speech = modalities.get("speech")
    path = tmp_path / "train-0.tar"
    t = np.arange(4000) / 8000
    with tarfile.open(path, "w") as tar:
        for i in range(4):
            wave = (0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t) * np.linspace(0, 1, len(t))).astype(np.float32)
            for ext, payload in {"flac": encode_flac(wave, 8000), "spk": str(i % 2).encode(), "txt": b""}.items():
                _add(tar, f"u{i}.{ext}", payload)
    stream = TrainStream([str(path)], 4, 0, 0, speech, "the test shards", crop=SpeechStage1(segment=256), crop_seed=5)
    first, second = [batch for _, batch in zip(range(2), loader(stream, 2, False, SkipCounter()))]
    assert first.x.shape == second.x.shape == (4, 1, 256)
    assert not torch.equal(first.x, second.x)
