"""The modality interface's promises, checked for every registered modality (and the one tests/
defines), on each one's own small demo data: what the shard, training, codes and sampling code
relies on without knowing which modality it asks."""
from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import modalities
from pipeline.modalities import Batch, Item, SkipSample

ALL = [*modalities.names(), "digits_modality:MODALITY"]
# tiny models: the shared keys, and the modality's own where it has them (speech: the WaveNet)
TINY_STAGE1 = dict(hidden=16, num_res_blocks=1, codebook_size=16, code_dim=8, ema=True,
                   wavenet_channels=8, wavenet_skip=8, wavenet_layers=4, wavenet_cycle=2, cond_channels=8,
                   speaker_dim=4, segment=1024)
TINY_STAGE2 = dict(hidden=8, num_layers=2, kernel_size=3)


def tiny(section: type, values: dict):
    return section(**{k: v for k, v in values.items() if k in section.model_fields})


@pytest.fixture(scope="module", params=ALL)
def demo(request, tmp_path_factory):
    """(modality, its data config, listing, a few items read back) on the modality's demo data."""
    modality = modalities.get(request.param)
    root = tmp_path_factory.mktemp("demo") / "raw"
    data = modality.DataConfig(name="demo", root=str(root), modality=request.param)
    info = modality.make_demo(data, small=True)
    assert info["created"] and Path(info["out"]) == root
    listing = modality.find(data)
    items, members = [], []
    for raw in listing.splits["train"][:4]:
        made = modality.samples_of(modality.preprocess(Path(raw.path).read_bytes(), raw, data), raw.key, data)
        assert made and all(re.fullmatch(r"[A-Za-z0-9_-]+", key) for key, _ in made)
        m = modality.to_members(made[0][1])
        members.append(m)
        items.append(modality.from_members(m))
    return modality, data, listing, members, items


def test_the_registry_knows_the_built_in_modalities_by_name():
    assert "image" in modalities.names()
    assert modalities.get("image") is modalities.get("image")
    with pytest.raises(ValueError, match="unknown modality 'nope'"):
        modalities.get("nope")


def test_find_gives_both_splits_with_unique_keys_and_known_conditioning(demo):
    _, _, listing, _, _ = demo
    assert listing.splits["train"] and listing.splits["val"]
    for split in listing.splits.values():  # a split's samples are grouped by key in its tars
        keys = [item.key for item in split]
        assert len(set(keys)) == len(keys)
        assert all(re.fullmatch(r"[A-Za-z0-9_-]+", k) for k in keys), "keys must hold no dots (tar member names)"
    for item in listing.splits["train"]:
        assert set(item.cond) == set(listing.cond)
        for name, spec in listing.cond.items():
            assert spec.kind in ("class", "sequence")
            ids = item.cond[name] if spec.kind == "sequence" else [item.cond[name]]
            assert all(0 <= i < spec.size for i in ids)


def test_members_are_bytes_under_plain_extensions_and_read_back(demo):
    modality, data, _, members, items = demo
    for m, item in zip(members, items):
        assert m and all(isinstance(v, bytes) and re.fullmatch(r"[a-z0-9.]+", k) for k, v in m.items())
        # floats, or pixels kept uint8 through the loader that Batch.to turns into floats
        assert isinstance(item, Item) and item.x.dtype in (torch.float32, torch.uint8)
        shape = modality.sample_shape(data)
        if shape is not None:
            assert tuple(item.x.shape[1:]) == tuple(shape)
        x = modality.collate([item]).to("cpu").x[0]
        assert x.dtype == torch.float32 and x.shape == item.x.shape
        assert torch.isfinite(x).all() and x.abs().max() <= 1  # [-0.5, 0.5] images, [-1, 1] audio
        if item.x.dtype == torch.uint8:
            assert torch.equal(x, item.x.float() / 255 - 0.5)


def test_preprocess_refuses_junk_with_a_reason(demo):
    modality, data, listing, members, _ = demo
    with pytest.raises(SkipSample) as e:
        modality.preprocess(b"certainly not data", listing.splits["train"][0], data)
    assert str(e.value)
    with pytest.raises(Exception):  # a corrupt sample: the readers skip and count whatever it raises
        modality.from_members({k: b"junk" for k in members[0]})


def test_models_batches_metrics_and_files_fit_together(demo, tmp_path):
    modality, data, listing, _, items = demo
    stage1 = tiny(modality.Stage1Config, TINY_STAGE1)
    items = [modality.crop(item, stage1, random.Random(0)) for item in items]  # what training sees
    batch = modality.collate(items).to("cpu")  # what a model gets: x in its space
    assert isinstance(batch, Batch) and len(batch) == len(items)
    assert set(batch.cond) == set(listing.cond)
    assert (batch.mask is None) == (modality.sample_shape(data) is not None)
    torch.manual_seed(0)
    autoencoder = modality.build_autoencoder(stage1, data, listing.cond)
    assert autoencoder.role == "autoencoder"
    out = autoencoder(batch.x, batch.cond, batch.mask)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    # a reconstruction through the codes: the input's shape, up to the positions no code covers
    recon = autoencoder.reconstruct(batch.x[..., :256], batch.cond)
    assert recon.shape[:2] == batch.x.shape[:2] and 0 < recon.shape[-1] <= 256

    sums = modality.val_sums(batch, out)
    sums.update(samples=len(batch), latent_bits=out.vq.indices.numel() * math.log2(16))
    metrics = modality.metrics(sums)
    assert {modality.selection_metric, "val_recon_bits_per_dim", *modality.key_metrics} - \
        {"perplexity", "codebook_usage"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())

    codes = autoencoder.encode(batch.x, batch.cond)
    assert codes.shape == out.vq.indices.shape
    prior = modality.build_prior(tiny(modality.Stage2Config, TINY_STAGE2), 16, listing.cond,
                                 latent_shape=list(codes.shape[1:]) if batch.mask is None else None, data=data)
    assert prior.role == "prior"
    assert torch.isfinite(prior(codes, batch.cond).loss)

    groups = [[x[..., :256] for x in batch.x], [x for x in recon]]
    paths = modality.write(groups, str(tmp_path / "shown"), data)
    assert paths and all(Path(p).is_file() and Path(p).stat().st_size > 0 for p in paths)
    assert all(Path(p).name.startswith("shown") for p in paths)


def _torch_loaded_after(code: str) -> list[str]:
    """The torch modules a fresh interpreter holds after importing the shard module and the
    modalities, as Ray Data's shard workers do, then running `code`."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from pipeline.stages.shard import *\n"
            "from pipeline import modalities\n"
            "from pipeline.modalities import RawItem\n"
            + code +
            "import json\n"
            "print(json.dumps(sorted(k for k in sys.modules if k == 'torch' or k.startswith('torch.'))))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sharding_photos_and_reading_shards_for_codes_import_no_torch(tmp_path):
    """Ray Data's shard workers import the shard module and the modality, and the codes job's
    reading tasks its module: for images that is PIL, numpy and tarfile, not torch (whose import
    costs each worker seconds of CPU)."""
    import io
    import tarfile

    from PIL import Image

    Image.new("RGB", (60, 48), (200, 10, 10)).save(tmp_path / "a.png")
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        png = (tmp_path / "a.png").read_bytes()
        info = tarfile.TarInfo("a.png")
        info.size = len(png)
        tar.addfile(info, io.BytesIO(png))
    assert _torch_loaded_after(
        "m = modalities.get('image')\n"
        "data = m.DataConfig(name='t', root='.', image_size=16)\n"
        f"raw = open({str(tmp_path / 'a.png')!r}, 'rb').read()\n"
        "example = m.preprocess(raw, RawItem(key='a', path='a.png', cond={'labels': 3}), data)\n"
        "assert set(m.to_members(example)), example\n"
        "from pipeline.stages.codes import read_shard\n"
        f"[row] = read_shard({{'path': {str(tmp_path / 'a.tar')!r}, 'split': 'val'}})\n"
        "assert row['key'] == 'a' and row['exts'] == ['png'] and row['split'] == 'val', row\n"
    ) == []


def test_sharding_speech_and_video_imports_no_torch(tmp_path):
    """As for photos: a voice's and a clip's way into the tars (Ray Data's shard workers) needs
    soundfile and PyAV, not torch; the speech models and the modality name the speaker alike."""
    import soundfile as sf
    from test_video_data import write_clip

    from pipeline.modalities.speech import SPEAKER
    from pipeline.models import speech

    assert SPEAKER == speech.SPEAKER
    t = np.arange(8000) / 8000
    sf.write(tmp_path / "a.wav", 0.3 * np.sin(2 * np.pi * 220 * t), 8000)
    write_clip(tmp_path / "c.mkv", 6)  # lossless, 6 frames
    assert _torch_loaded_after(
        "m = modalities.get('speech')\n"
        "data = m.DataConfig(name='t', root='.', sample_rate=8000)\n"
        f"raw = open({str(tmp_path / 'a.wav')!r}, 'rb').read()\n"
        "example = m.preprocess(raw, RawItem(key='a', path='a.wav', cond={'speaker': 1}), data)\n"
        "assert set(m.to_members(example)) == {'flac', 'spk', 'txt'}, example\n"
        "v = modalities.get('video')\n"
        "data = v.DataConfig(name='t', root='.', frame_size=16, frames=4)\n"
        f"raw = open({str(tmp_path / 'c.mkv')!r}, 'rb').read()\n"
        "clip = v.preprocess(raw, RawItem(key='c', path='c.mkv', cond={}), data)\n"
        "windows = v.samples_of(clip, 'c', data)\n"
        "assert windows and 'png' in v.to_members(windows[0][1]), windows\n"
    ) == []


def test_images_stored_as_npy_read_back_as_the_png_pixels(tmp_path):
    """data.storage: npy stores the same uint8 pixels as png (the readers take either): bigger,
    and a damaged array is an error the readers skip and count."""
    import io as _io

    from PIL import Image
    from skimage import data as photos

    from pipeline.modalities.image import ImageData, decode_npy

    image = modalities.get("image")
    buf = _io.BytesIO()
    Image.fromarray(photos.astronaut()).save(buf, format="JPEG")
    item = modalities.RawItem(key="k", path="p", cond={"labels": 3})
    members = {}
    for storage in ("png", "npy"):
        data = ImageData(name="t", root=str(tmp_path), image_size=64, storage=storage)
        members[storage] = image.to_members(image.preprocess(buf.getvalue(), item, data))
        assert set(members[storage]) == {storage, "cls"}
    png, npy = (image.from_members(members[s]) for s in ("png", "npy"))
    assert png.x.dtype == torch.uint8 and torch.equal(png.x, npy.x) and png.cond == npy.cond == {"labels": 3}
    assert len(members["npy"]["npy"]) > len(members["png"]["png"])  # photos: PNG compresses
    floats = _io.BytesIO()
    np.save(floats, np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="not an RGB uint8 image"):
        decode_npy(floats.getvalue())
    with pytest.raises(Exception):
        image.from_members({"npy": members["npy"]["npy"][:100], "cls": b"3"})
