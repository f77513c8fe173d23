"""One format version per stored output (pipeline/formats/): what is of this format is read, an
older one through its one converter or refused in one line saying what to do, a newer one refused."""
from __future__ import annotations

import json
import math

import pytest

from pipeline.errors import UserError
from pipeline.formats import shards
from pipeline.tracking import upgrade_tags


def _manifest(folder, **fields):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(fields))
    return str(folder)


def test_shard_manifests_of_this_format_are_read_and_others_refused_in_one_line(tmp_path):
    current = {"cond": {}, "source": {"listing_sha256": "x", "data": {}}, "splits": {}}
    assert shards.load_manifest(_manifest(tmp_path / "now", format=2, **current))["format"] == 2
    # written 2026-11-26..2026-12-06: no format key, but the conditioning table and the source record
    assert shards.load_manifest(_manifest(tmp_path / "unmarked", **current)) is not None
    assert shards.load_manifest(str(tmp_path / "none")) is None  # unfinished: no manifest
    old = _manifest(tmp_path / "old", classes=["a", "b"], splits={})  # before 2026-11-26
    with pytest.raises(UserError, match=r"format 1, written before 2026-11-26 .*: re-run jobs/shard.py with "
                                        r"--set overwrite=true$"):
        shards.load_manifest(old)
    assert shards.read_manifest(old)["classes"] == ["a", "b"]  # the shard stage may still replace it
    with pytest.raises(UserError, match=r"format 3, newer than this pipeline reads \(2\)"):
        shards.load_manifest(_manifest(tmp_path / "newer", format=3, **current))


def test_version_tags_of_before_2026_11_26_are_derived_by_the_one_converter():
    old = upgrade_tags({"metric.val_mse": "0.25"})
    assert old["key_metrics"] == "val_psnr,perplexity,codebook_usage"
    # an MSE decoder's bound, 0.5 log2(2 pi e mse) + 8 bits per dim of 8-bit pixels
    assert float(old["decoder_bits_per_dim"]) == pytest.approx(0.5 * math.log2(2 * math.pi * math.e * 0.25) + 8)
    assert upgrade_tags({"metric.val_nll_bits_per_code": "2"})["key_metrics"] == "val_bits_per_dim,uniform_bits_per_code"
    new = {"metric.val_bits_per_sample": "5", "key_metrics": "perplexity", "decoder_bits_per_dim": "5.0"}
    assert upgrade_tags(new) == new  # what this pipeline writes is left as it is
