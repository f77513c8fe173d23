"""The modality interface's promises, checked for every registered modality (and the one tests/
defines), on each one's own small demo data: what the shard, training, codes and sampling code
relies on without knowing which modality it asks."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from pipeline import modalities
from pipeline.config import Stage1Config, Stage2Config
from pipeline.modalities import Batch, Item, SkipSample

ALL = [*modalities.names(), "digits_modality:MODALITY"]
TINY_STAGE1 = Stage1Config(hidden=16, num_res_blocks=1, codebook_size=16, code_dim=8, ema=True)
TINY_STAGE2 = Stage2Config(hidden=8, num_layers=2, kernel_size=3)


@pytest.fixture(scope="module", params=ALL)
def demo(request, tmp_path_factory):
    """(modality, its data config, listing, a few items read back) on the modality's demo data."""
    modality = modalities.get(request.param)
    root = tmp_path_factory.mktemp("demo") / "raw"
    data = modality.DataConfig(name="demo", root=str(root), modality=request.param)
    info = modality.make_demo(data)
    assert info["created"] and Path(info["out"]) == root
    listing = modality.find(data)
    items, members = [], []
    for raw in listing.splits["train"][:4]:
        m = modality.to_members(modality.preprocess(Path(raw.path).read_bytes(), raw, data))
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
            assert spec.kind in ("class", "sequence") and 0 <= item.cond[name] < spec.size


def test_members_are_bytes_under_plain_extensions_and_read_back(demo):
    modality, data, _, members, items = demo
    for m, item in zip(members, items):
        assert m and all(isinstance(v, bytes) and re.fullmatch(r"[a-z0-9.]+", k) for k, v in m.items())
        assert isinstance(item, Item) and item.x.dtype == torch.float32
        shape = modality.sample_shape(data)
        if shape is not None:
            assert tuple(item.x.shape[1:]) == tuple(shape)
        assert item.x.min() >= -0.5 and item.x.max() <= 0.5


def test_preprocess_refuses_junk_with_a_reason(demo):
    modality, data, listing, _, _ = demo
    with pytest.raises(SkipSample) as e:
        modality.preprocess(b"certainly not data", listing.splits["train"][0], data)
    assert str(e.value)
    with pytest.raises(Exception):  # a corrupt sample: the readers skip and count whatever it raises
        modality.from_members({k: b"junk" for k in modality.to_members(
            modality.preprocess(Path(listing.splits["train"][0].path).read_bytes(), listing.splits["train"][0],
                                data))})


def test_models_batches_metrics_and_files_fit_together(demo, tmp_path):
    modality, data, listing, _, items = demo
    batch = modality.collate(items)
    assert isinstance(batch, Batch) and len(batch) == len(items)
    assert set(batch.cond) == set(listing.cond)
    torch.manual_seed(0)
    autoencoder = modality.build_autoencoder(TINY_STAGE1, data)
    assert autoencoder.role == "autoencoder"
    out = autoencoder(batch.x, batch.cond, batch.mask)
    assert out.recon.shape == batch.x.shape and torch.isfinite(out.loss)
    out.loss.backward()

    sums = modality.val_sums(batch, out.recon.detach())
    sums.update(samples=len(batch), latent_bits=out.vq.indices.numel() * math.log2(16))
    metrics = modality.metrics(sums)
    assert {modality.selection_metric, "val_recon_bits_per_dim", *modality.key_metrics} - \
        {"perplexity", "codebook_usage"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())

    codes = autoencoder.encode(batch.x, batch.cond)
    assert codes.shape == out.vq.indices.shape
    prior = modality.build_prior(TINY_STAGE2, 16, listing.cond)
    assert prior.role == "prior"
    assert torch.isfinite(prior(codes, batch.cond).loss)

    groups = [[x for x in batch.x], [x for x in out.recon.detach()]]
    paths = modality.write(groups, str(tmp_path / "shown"))
    assert paths and all(Path(p).is_file() and Path(p).stat().st_size > 0 for p in paths)
    assert all(Path(p).name.startswith("shown") for p in paths)
